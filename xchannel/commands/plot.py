"""``xchannel plot NAME RESULT... -o FILE``: figures from result JSON files (a registry of plots).

Plots:

``figure7``
    Linear-probe accuracy per layer (Fig. 7), from ``xchannel probe`` results: one line per encoder, gray-input
    encoders dotted and color/RGB-input encoders solid (the paper's convention), the gray and color versions of one
    encoder in the same colour; error bars are the results' 95 % intervals (``top1_ci``) where recorded. When a result's data set is ImageNet (recorded by the probe), or with
    ``--published always``, the published numbers of ``benchmarks/published/figure7.json`` are overlaid (thin lines,
    x markers).

A new plot is one function ``(results, args) -> matplotlib Figure`` plus one entry in :data:`PLOTS` (and, for its
own options, a line in ``add_arguments``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.utils.io import save_figure

NAME = "plot"
HELP = "draw a figure (figure7: probe accuracy per layer) from result JSON files"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plot", choices=sorted(PLOTS), help="which figure")
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result JSON files")
    parser.add_argument("-o", "--out", required=True, help="output image (.png, .pdf, .svg)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--metric", choices=["top1", "top5"], default="top1", help="figure7: accuracy to plot")
    parser.add_argument("--published", choices=["auto", "always", "never"], default="auto",
                        help="figure7: overlay the published ImageNet numbers (auto: when the data set is ImageNet)")


# --------------------------------------------------------------------------------------------------------------
# Inputs


def load_results(paths: Sequence[str | Path], kind: str | None = None) -> list[dict[str, Any]]:
    """Read result JSON files; a missing or malformed file, or one of another kind, is a :class:`UserError`."""
    out = []
    for p in map(Path, paths):
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise UserError(f"{p}: no such result file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{p}: not a readable JSON result ({err})") from None
        if kind is not None and (not isinstance(data, dict) or data.get("kind") != kind):
            found = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{p}: not a {kind} result (kind {found!r})")
        data["_path"] = str(p)
        out.append(data)
    return out


def published_numbers(name: str) -> dict[str, Any] | None:
    """The stored published numbers ``name`` from ``benchmarks/published`` (None when that folder is absent, e.g.
    in an installed copy without the repository)."""
    try:
        mod = importlib.import_module("benchmarks.published")
    except ImportError:
        init = Path(__file__).resolve().parents[2] / "benchmarks" / "published" / "__init__.py"
        if not init.is_file():
            return None
        spec = importlib.util.spec_from_file_location("xchannel_published_numbers", init)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    try:
        return mod.load(name)
    except ValueError as err:
        raise UserError(str(err)) from None


# --------------------------------------------------------------------------------------------------------------
# figure7


_LAYER_ORDER = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")


def _layer_axis(results: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> list[str]:
    seen: list[str] = []
    for r in results:
        for layer in r["layer_order"]:
            if layer not in seen:
                seen.append(layer)
    for layer in extra:
        if layer not in seen:
            seen.append(layer)
    rank = {name: i for i, name in enumerate(_LAYER_ORDER)}
    return sorted(seen, key=lambda n: (rank.get(n, len(rank)), seen.index(n)))


def plot_figure7(results: Sequence[dict[str, Any]], args: argparse.Namespace):
    """Accuracy per layer, one line per result (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = getattr(args, "metric", "top1")
    mode = getattr(args, "published", "auto")
    published = None
    if mode == "always" or (mode == "auto" and any(r.get("data", {}).get("is_imagenet") for r in results)):
        published = published_numbers("figure7")
    axis = _layer_axis(results, published["columns"] if published else ())
    x = {layer: i for i, layer in enumerate(axis)}

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours: dict[str, str] = {}
    for i, r in enumerate(results):
        enc = r["encoder"]
        family = str(enc.get("spec", enc.get("name")))
        colour = colours.setdefault(family, palette[len(colours) % len(palette)])
        layers = [layer for layer in r["layer_order"] if layer in r["layers"]]
        gray = enc.get("input_mode") == "gray"
        label = enc.get("name", family)
        if not label.endswith(("(gray)", "(color)", "(rgb)")):
            label = f"{label} ({enc.get('input_mode')})"
        xs, ys = [x[layer] for layer in layers], [r["layers"][layer][metric] for layer in layers]
        style = {"linestyle": ":" if gray else "-", "marker": "o", "color": colour, "linewidth": 2, "label": label}
        cis = [r["layers"][layer].get(f"{metric}_ci") for layer in layers]
        if all(cis):  # the 95 % intervals the probe recorded (images and seeds bootstrapped)
            yerr = [[y - ci["ci95"][0] for y, ci in zip(ys, cis)], [ci["ci95"][1] - y for y, ci in zip(ys, cis)]]
            shift = 0.05 * (i - (len(results) - 1) / 2)  # side by side, so that overlapping bars stay readable
            ax.errorbar([v + shift for v in xs], ys, yerr=yerr, capsize=3, elinewidth=1, **style)
        else:
            ax.plot(xs, ys, **style)
    protocols = sorted({r.get("protocol", {}).get("name", "?") for r in results})
    if published:
        grays = plt.get_cmap("Greys")
        theirs = published.get("protocol", "protocol not stated")
        for i, row in enumerate(published["rows"]):
            pts = [(x[c], v) for c, v in zip(published["columns"], row["values"]) if v is not None]
            ax.plot(*zip(*pts), linestyle=":" if row.get("input") == "gray" else "-", marker="x", linewidth=1,
                    color=grays(0.45 + 0.5 * i / max(1, len(published["rows"]) - 1)),
                    label=f"{row['name']} (published, {theirs})")
    ax.set_xticks(range(len(axis)), axis)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
    data_names = sorted({r.get("data", {}).get("name", "?") for r in results})
    title = f"Linear classification on frozen layers: {', '.join(data_names)} ({', '.join(protocols)})"
    if published and protocols != [published.get("protocol")]:  # two protocols on one plot: say so
        title += f"\npublished lines: {published.get('protocol', 'protocol not stated')}, another protocol"
    ax.set_title(getattr(args, "title", None) or title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


#: plot name -> (result kind it reads, function (results, args) -> matplotlib Figure)
PLOTS: dict[str, tuple[str | None, Callable[[Sequence[dict[str, Any]], argparse.Namespace], Any]]] = {
    "figure7": ("linear_probe", plot_figure7),
}


def make_plot(name: str, result_paths: Sequence[str | Path], out: str | Path, **options: Any) -> Path:
    """Python API of the command: draw plot ``name`` from result files and write it atomically to ``out``."""
    if name not in PLOTS:
        raise UserError(f"unknown plot {name!r}; plots: {', '.join(sorted(PLOTS))}")
    kind, fn = PLOTS[name]
    results = load_results(result_paths, kind)
    args = argparse.Namespace(**{"title": None, "metric": "top1", "published": "auto", **options})
    fig = fn(results, args)
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    out = make_plot(args.plot, args.results, args.out, title=args.title, metric=args.metric,
                    published=args.published)
    print(f"wrote {out}")
    return 0
