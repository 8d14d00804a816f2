"""Figure 7 (linear classification on frozen layers) from ``xchannel probe`` results: tables and the plot.

* :func:`probe_table`: one probe result as text, a line per layer (what ``xchannel probe`` prints and the demo's
  ``figure7.md`` shows).
* :func:`merge_probe_results`: results of the same encoder, input mode, data set and protocol as one line: layers
  probed by separate runs are joined, repeated seeds averaged (their standard deviation kept, and, where the runs
  kept their per-image hits on the same images, the 95 % interval over images and every seed).
* :func:`figure7_table`: the published rows (``published/figure7.json``) and ours, one column per layer, as
  markdown and CSV.
* :func:`plot` / :func:`write_plot`: accuracy per layer, one line per encoder, gray-input encoders dotted and
  color/RGB-input encoders solid (the paper's convention), the gray and color versions of one encoder in the same
  colour; error bars are the results' 95 % intervals (``top1_ci``) where recorded. When a result's data set is
  ImageNet (recorded by the probe), or with ``published="always"``, the published numbers are overlaid (thin
  lines, x markers): ``reference`` names which (``figure7``, or e.g. ``pretext_imagenet_linear``).
* :func:`write_figure7`: the files of a sweep's report (merged records, plot, markdown, CSV);
  :func:`demo_markdown`: the demo's page (the three probes and the trained encoder against its initialisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xchannel.metrics.uncertainty import accuracy_interval, mean_std
from xchannel.reports import published as published_numbers
from xchannel.reports.format import MISSING, csv_text, interval, markdown_row, number, plus_minus
from xchannel.reports.results import read_result
from xchannel.utils.io import atomic_write_json, atomic_write_text, save_figure, slug

#: AlexNet's layers in network order: the x axis of the figure (other layers follow them).
LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
#: The result kind this figure is drawn from (written by ``xchannel probe``).
KIND = "linear_probe"


def layer_sorted(names: Sequence[str]) -> list[str]:
    """Layer names in network order (AlexNet's conv1 ... fc7 first, others after them in the given order)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    position = {name: i for i, name in enumerate(names)}
    return sorted(position, key=lambda n: (rank.get(n, len(rank)), position[n]))


def _axis(*orders: Sequence[str]) -> list[str]:
    """Every layer of the given layer orders, once each, in network order (:func:`layer_sorted`)."""
    return layer_sorted(list(dict.fromkeys(layer for order in orders for layer in order)))


# --------------------------------------------------------------------------------------------------------------
# Tables


def probe_table(result: Mapping[str, Any]) -> str:
    """One line per layer: pooled shape, dimension, top-1 (mean over seeds ± the half-width of its 95 % interval)
    and top-5 (%); then the seeds and the chance level."""
    lines = [f"{'layer':<8} {'pooled shape':<14} {'dim':>6} {'top-1 (95% CI)':>15} {'top-5':>7}"]
    for layer in result["layer_order"]:
        r = result["layers"][layer]
        shape = "x".join(str(s) for s in r["shape"])
        top1 = interval(r.get("top1_ci"), r["top1"])
        lines.append(f"{layer:<8} {shape:<14} {r['dim']:>6} {top1:>15} {r['top5']:>7.2f}")
    if "chance" in result:
        seeds = result.get("seeds", [])
        lines.append(f"{len(seeds)} head seed(s) {seeds}; chance top-1 {result['chance']['uniform']:.1f} "
                     f"(uniform), {result['chance']['majority']:.1f} (majority class)")
    return "\n".join(lines)


def pooled_hits(results: Sequence[Mapping[str, Any]], layer: str) -> Any:
    """``seeds x images`` top-1 hits of ``layer`` from every result (each result's head seeds stacked), or None
    when a result kept none or they were scored on different validation images."""
    import numpy as np

    from xchannel.probe.run import top1_hits

    have = [r for r in results if layer in (r.get("per_image") or {}).get("top1_hits", {})]
    if len(have) != len(results) or len({(r["data"].get("path"), r["per_image"]["images"]) for r in have}) != 1:
        return None
    return np.concatenate([top1_hits(r, layer) for r in have])


def merge_probe_results(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge probe results per (encoder spec, input mode, data set, protocol): layers are joined and every
    layer's top-1/top-5 is averaged over the results that have it (seeds), with ``top1_std``/``top5_std``
    (population standard deviation; 0 for one seed) and ``runs`` (how many results were averaged). Several runs
    scored on the same images with their per-image hits get ``top1_ci`` over the images and all their seeds
    (:func:`pooled_hits`, :func:`~xchannel.metrics.uncertainty.accuracy_interval`); other merged layers have none."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in results:
        enc, data, proto = r.get("encoder", {}), r.get("data", {}), r.get("protocol", {})
        key = (enc.get("spec"), enc.get("input_mode"), data.get("name"), proto.get("name"))
        groups.setdefault(key, []).append(r)
    merged = []
    for (spec, mode, _, _), rs in groups.items():
        order = _axis(*(r.get("layer_order", []) for r in rs))
        layers: dict[str, dict[str, Any]] = {}
        for layer in order:
            runs = [r for r in rs if layer in r.get("layers", {})]
            have = [r["layers"][layer] for r in runs]
            entry = dict(have[0])
            for metric in ("top1", "top5"):
                entry[metric], entry[f"{metric}_std"] = mean_std([h[metric] for h in have])
            entry["runs"] = len(have)
            if len(have) > 1:  # one run's interval does not describe the mean of several
                entry.pop("top1_ci", None)
                hits = pooled_hits(runs, layer)
                if hits is not None:
                    entry["top1_ci"] = accuracy_interval(hits).to_dict()
            layers[layer] = entry
        first = rs[0]
        merged.append({"kind": KIND, "encoder": first.get("encoder", {}), "data": first.get("data", {}),
                       "protocol": first.get("protocol", {}), "layer_order": order, "layers": layers,
                       "seeds": sorted({r.get("config", {}).get("seed") for r in rs if "config" in r},
                                       key=lambda s: (s is None, s)),
                       "sources": [r.get("output") or r.get("_path") for r in rs],
                       "name": f"{spec} ({mode})"})
    return merged


def figure7_table(merged: Sequence[Mapping[str, Any]], published: Mapping[str, Any],
                  metric: str = "top1") -> tuple[str, str]:
    """Markdown and CSV: the published rows and ours (:func:`merge_probe_results`), one column per layer."""
    columns = _axis(published["columns"], *(r["layer_order"] for r in merged))
    head = "top-1" if metric == "top1" else "top-5"
    md = [f"# Figure 7: linear classification on frozen layers ({head} accuracy, %)", "",
          markdown_row(["Method", "Input", "Data", *columns]), "|---|---|---|" + "---:|" * len(columns)]
    table = [["kind", "method", "input", "dataset", *columns, "source"]]
    for row in published["rows"]:
        vals = dict(zip(published["columns"], row["values"]))
        md.append(markdown_row([row["name"], row.get("input", MISSING), f"{published.get('dataset', '')}, published",
                                *(number(vals.get(c)) for c in columns)]))
        table.append(["published", row["name"], row.get("input", ""), published.get("dataset", ""),
                      *(number(vals.get(c), missing="") for c in columns), published["source"]])
    for r in merged:
        enc = r["encoder"]
        name = enc.get("name") or enc.get("spec")
        data = r.get("data", {}).get("name", "?")
        cells, raw = [], []
        for c in columns:
            v = r["layers"].get(c)
            if v is None:
                cells.append(MISSING)
                raw.append("")
            elif v.get("runs", 1) > 1 and f"{metric}_ci" not in v:
                cells.append(plus_minus(v[metric], v.get(f"{metric}_std", 0.0)))
                raw.append(number(v[metric], 2))
            else:
                cells.append(interval(v.get(f"{metric}_ci"), v[metric]))
                raw.append(number(v[metric], 2))
        md.append(markdown_row([f"**{name}** (measured)", enc.get("input_mode", MISSING), f"{data}, measured",
                                *cells]))
        table.append(["measured", name, enc.get("input_mode", ""), data, *raw, "; ".join(map(str, r["sources"]))])
    md += ["", f"Published rows: {published['source']}."]
    datasets = sorted({r.get("data", {}).get("name", "?") for r in merged})
    if any(not r.get("data", {}).get("is_imagenet") for r in merged):
        md.append(f"Measured on: {', '.join(datasets)}. Only ImageNet measurements are comparable with the published "
                  f"numbers; others (e.g. the embedded procedural data set) check the pipeline end to end.")
    if any(v.get("runs", 1) > 1 and f"{metric}_ci" not in v for r in merged for v in r["layers"].values()):
        md.append("± on a row of several runs without per-image records is the standard deviation over seeds.")
    if any(f"{metric}_ci" in v for r in merged for v in r["layers"].values()):
        md.append("± is otherwise the half-width of the 95 % interval (bootstrap over validation images and the head "
                  "seeds, and the runs' seeds where a row merges several).")
    md.append("")
    return "\n".join(md), csv_text(table)


def demo_markdown(records: Mapping[str, Mapping[str, Any]],
                  comparisons: Sequence[tuple[str, Mapping[str, Mapping[str, Any]]]]) -> str:
    """The demo's ``figure7.md``: each probe's :func:`probe_table` (``records``: label -> probe result, calibration
    rows first), then each comparison (heading, layer -> record with a ``sentence``) as a list of verdicts."""
    tables = "\n\n".join(f"{label}\n{probe_table(res)}" for label, res in records.items())
    sections = "\n".join(f"{heading}\n\n" + "\n".join(f"- {c['sentence']}" for c in comparison.values()) + "\n"
                         for heading, comparison in comparisons)
    return ("Linear probes on the embedded data set (top-1 %, val; mean over the head seeds ± half-width of the 95 % "
            "interval over images and seeds)\n\n```\n" + tables + "\n```\n\n"
            "Paired comparisons (bootstrap over the same validation images, head seeds drawn independently):\n\n"
            + sections)


# --------------------------------------------------------------------------------------------------------------
# Plot


def plot(results: Sequence[Mapping[str, Any]], *, title: str | None = None, metric: str = "top1",
         published: str = "auto", reference: str = "figure7"):
    """Accuracy per layer, one line per result (see the module docstring); ``published``: ``auto`` (overlay the
    published numbers ``reference`` when a result's data set is ImageNet), ``always`` or ``never``. Returns the
    matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = None
    if published == "always" or (published == "auto" and any(r.get("data", {}).get("is_imagenet") for r in results)):
        numbers = published_numbers.load(reference)
    axis = _axis(*(r["layer_order"] for r in results), numbers["columns"] if numbers else ())
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
    if numbers:
        grays = plt.get_cmap("Greys")
        theirs = numbers.get("protocol", "protocol not stated")
        for i, row in enumerate(numbers["rows"]):
            pts = [(x[c], v) for c, v in zip(numbers["columns"], row["values"]) if v is not None]
            ax.plot(*zip(*pts), linestyle=":" if row.get("input") == "gray" else "-", marker="x", linewidth=1,
                    color=grays(0.45 + 0.5 * i / max(1, len(numbers["rows"]) - 1)),
                    label=f"{row['name']} (published, {theirs})")
    ax.set_xticks(range(len(axis)), axis)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
    data_names = sorted({r.get("data", {}).get("name", "?") for r in results})
    text = f"Linear classification on frozen layers: {', '.join(data_names)} ({', '.join(protocols)})"
    if numbers and protocols != [numbers.get("protocol")]:  # two protocols on one plot: say so
        text += f"\npublished lines: {numbers.get('protocol', 'protocol not stated')}, another protocol"
    ax.set_title(title or text, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def write_plot(result_paths: Sequence[str | Path], out: str | Path, *, title: str | None = None,
               metric: str = "top1", published: str = "auto", reference: str = "figure7") -> Path:
    """Draw :func:`plot` from probe result files and write it atomically to ``out`` (.png, .pdf, .svg)."""
    results = [read_result(p, KIND, "linear-probe", "xchannel probe") for p in result_paths]
    return save_figure(plot(results, title=title, metric=metric, published=published, reference=reference), out)


# --------------------------------------------------------------------------------------------------------------
# A report's files


def write_figure7(results: Sequence[Mapping[str, Any]], out: Path, reference: str = "figure7") -> dict[str, Any]:
    """From probe results (e.g. a sweep's probe jobs), into ``out``: the merged records
    (``figure7/<encoder>_<input>.json``), ``figure7.png`` (drawn from those files), ``figure7.md`` and
    ``figure7.csv``, with the published numbers ``reference`` beside them. Returns what was written."""
    merged = merge_probe_results(results)
    paths = []
    for r in merged:
        enc = r["encoder"]
        path = out / "figure7" / f"{slug(enc.get('name') or enc.get('spec'))}_{enc.get('input_mode')}.json"
        atomic_write_json(path, r)
        paths.append(path)
    image = write_plot(paths, out / "figure7.png", reference=reference)
    md, table_csv = figure7_table(merged, published_numbers.load(reference))
    atomic_write_text(out / "figure7.md", md)
    atomic_write_text(out / "figure7.csv", table_csv)
    return {"plot": str(image), "markdown": str(out / "figure7.md"), "csv": str(out / "figure7.csv"),
            "merged": [str(p) for p in paths], "lines": len(merged)}


__all__ = ["KIND", "LAYERS", "demo_markdown", "figure7_table", "layer_sorted", "merge_probe_results", "plot",
           "pooled_hits", "probe_table", "write_figure7", "write_plot"]
