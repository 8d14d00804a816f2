"""Pretext tasks compared (``comparison.md``): each measured row beside that method's published numbers, and
whether it differs from colorization and from the Gaussian baseline beyond the intervals.

The input is a sweep's evaluations named by method (``xchannel report`` of the ``pretexts`` sweep,
:mod:`xchannel.reports.sweep`): linear-probe results and PASCAL results, each with its method (a pretext task of
:data:`xchannel.pretext.TASKS`, or a baseline: ``gaussian``, ``kmeans``) and input mode, one per training seed.

* **Measured beside published.** One row per method and input mode: the probe's top-1 per layer (conv1 ... conv5,
  the published columns; every layer is in ``figure7.md``) and the PASCAL columns, ``mean ± half-width`` of the
  95 % interval, each followed by the published rows of the same method (``published/pretext_imagenet_linear.json``
  and ``published/pretext_pascal.json``: rows whose ``task`` is the method and whose ``options`` agree with the
  options it was trained with, or whose ``baseline`` is the baseline), with the protocol and the backbone they
  were measured with and their source. The published networks are not ours (module docstrings of those files), so
  the rows sit side by side rather than being compared.
* **Beyond the intervals.** Per method one plain sentence each against colorization and against the Gaussian
  baseline (same input mode where both have it; colorization is probed with gray input only). Probes: the paired
  difference of top-1 on the same validation images, images drawn once for both and the seeds of each
  independently (:func:`~xchannel.metrics.uncertainty.accuracy_difference_interval`), *ahead*, *behind* or *not
  separable* at 95 % (:func:`~xchannel.metrics.uncertainty.separation`). PASCAL results keep no per-image record
  for detection and segmentation, so there a difference counts as beyond the intervals when the two runs' 95 %
  intervals (bootstrap over test images) do not overlap: a conservative reading.

Several training seeds of a method are pooled: for the probes every seed's per-image hits (two-stage bootstrap
over images and seeds, :func:`xchannel.reports.figure7.pooled_hits`); on PASCAL the mean over seeds with the
envelope of their intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xchannel.metrics.uncertainty import accuracy_difference_interval, overlap_separation, separation
from xchannel.reports import published as published_numbers
from xchannel.reports.figure7 import merge_probe_results, pooled_hits
from xchannel.reports.format import MISSING, interval, markdown_row, number
from xchannel.utils.io import atomic_write_text

#: The method every other is compared with, and the baseline.
REFERENCE = "colorization"
BASELINE = "gaussian"
#: The published numbers beside the measured rows: probes and PASCAL.
PROBE_NUMBERS, PASCAL_NUMBERS = "pretext_imagenet_linear", "pretext_pascal"
#: How a baseline method is named in the tables.
BASELINE_NAMES = {"gaussian": "Gaussian", "kmeans": "k-means (Krähenbühl et al.)"}


@dataclass
class Evaluation:
    """One sweep evaluation named by method: a probe or PASCAL result of ``method`` with ``input_mode``."""

    method: str
    input_mode: str
    result: dict[str, Any]


@dataclass
class MethodRow:
    """A method in one input mode: its probe results and its PASCAL results per Table 2 column (one per seed),
    and the options it was trained with (None for a baseline)."""

    method: str
    input_mode: str
    probes: list[dict[str, Any]] = field(default_factory=list)
    pascal: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    options: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{BASELINE_NAMES.get(self.method, self.method)} ({self.input_mode})"


@dataclass
class Difference:
    """A row against another in one column (layer or Table 2 column): the difference (points) and its verdict,
    ``ahead`` / ``behind`` / ``not separable``."""

    column: str
    verdict: str
    value: float
    lo: float | None = None
    hi: float | None = None


# --------------------------------------------------------------------------------------------------------------
# Rows and their numbers


def method_rows(evaluations: Sequence[Evaluation], options: Mapping[str, dict[str, Any]]) -> list[MethodRow]:
    """Group evaluations into rows per (method, input mode): methods in order of first appearance, gray before
    colour; ``options``: method -> the options it was trained with."""
    rows: dict[tuple[str, str], MethodRow] = {}
    for ev in evaluations:
        row = rows.setdefault((ev.method, ev.input_mode), MethodRow(ev.method, ev.input_mode,
                                                                    options=options.get(ev.method)))
        if ev.result.get("kind") == "pascal":
            row.pascal.setdefault(ev.result["table2_column"], []).append(ev.result)
        else:
            row.probes.append(ev.result)
    order = list(dict.fromkeys(method for method, _ in rows))
    modes = ("gray", "color")
    return sorted(rows.values(), key=lambda r: (order.index(r.method),
                                                modes.index(r.input_mode) if r.input_mode in modes else len(modes)))


def probe_values(row: MethodRow) -> dict[str, dict[str, Any]]:
    """layer -> the merged probe record of the row (mean over seeds, with ``top1_ci``), as Fig. 7 draws it."""
    return merge_probe_results(row.probes)[0]["layers"] if row.probes else {}


def pascal_value(results: Sequence[Mapping[str, Any]]) -> tuple[float, float | None, float | None]:
    """A column's value (mean over seeds) and its interval: one run's 95 % interval, or for several the envelope
    of theirs."""
    heads = [r["headline"] for r in results]
    value = sum(h["value"] for h in heads) / len(heads)
    cis = [h.get("uncertainty", {}).get("ci95") for h in heads]
    if not all(cis):
        return value, None, None
    return value, min(c[0] for c in cis), max(c[1] for c in cis)


def _pascal_cell(results: Sequence[Mapping[str, Any]] | None) -> str:
    if not results:
        return MISSING
    value, lo, hi = pascal_value(results)
    return interval(None if lo is None else {"value": value, "half_width": (hi - lo) / 2}, value)


# --------------------------------------------------------------------------------------------------------------
# Published rows


def published_for(row: MethodRow, numbers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The published rows of ``row``'s method: its ``baseline`` name, or its ``task`` with ``options`` that agree
    with the options it was trained with."""
    if row.method in BASELINE_NAMES:
        return [r for r in numbers["rows"] if r.get("baseline") == row.method]
    trained = row.options or {}
    return [r for r in numbers["rows"] if r.get("task") == row.method
            and all(trained.get(k, v) == v for k, v in (r.get("options") or {}).items())]


def _published_cells(row: Mapping[str, Any], numbers: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    values = dict(zip(numbers["columns"], row["values"]))
    return [number(values.get(c)) for c in columns]


# --------------------------------------------------------------------------------------------------------------
# Differences


def probe_differences(row: MethodRow, other: MethodRow, layers: Sequence[str]) -> list[Difference]:
    """Per layer both probed: the paired difference of top-1 (row - other) and its verdict (module docstring)."""
    out = []
    for layer in layers:
        a, b = pooled_hits(row.probes, layer), pooled_hits(other.probes, layer)
        if a is None or b is None or a.shape[1] != b.shape[1]:
            continue
        diff = accuracy_difference_interval(a, b)
        out.append(Difference(layer, separation(diff), diff.value, diff.lo, diff.hi))
    return out


def pascal_differences(row: MethodRow, other: MethodRow, columns: Sequence[str]) -> list[Difference]:
    """Per Table 2 column both have: ahead / behind when the intervals do not overlap (module docstring)."""
    out = []
    for column in columns:
        if column not in row.pascal or column not in other.pascal:
            continue
        (va, loa, hia), (vb, lob, hib) = pascal_value(row.pascal[column]), pascal_value(other.pascal[column])
        if None in (loa, lob):
            continue
        out.append(Difference(column, overlap_separation((loa, hia), (lob, hib)), va - vb))
    return out


def _counterpart(rows: Sequence[MethodRow], method: str, mode: str, probes: bool) -> MethodRow | None:
    """``method``'s row in ``mode``, else (for probes) its row in another mode that was probed."""
    same = [r for r in rows if r.method == method and r.input_mode == mode]
    if same and (same[0].probes if probes else same[0].pascal):
        return same[0]
    if probes:
        return next((r for r in rows if r.method == method and r.probes), None)
    return None


def summarise(differences: Sequence[Difference]) -> str:
    """``ahead at conv3 +4.0, conv5 +3.1; not separable at conv1 -0.4`` (differences in points), or ``not
    separable anywhere`` when no difference is beyond the intervals."""
    by: dict[str, list[str]] = {}
    for d in differences:
        by.setdefault(d.verdict, []).append(f"{d.column.replace('_', ' ')} {d.value:+.1f}")
    if set(by) == {"not separable"}:
        return "not separable anywhere (" + ", ".join(by["not separable"]) + ")"
    return "; ".join(f"{verdict} at {', '.join(cols)}" for verdict, cols in by.items())


def sentence(row: MethodRow, rows: Sequence[MethodRow], layers: Sequence[str], columns: Sequence[str]) -> str:
    """One plain sentence on ``row`` against colorization and against the Gaussian baseline (module docstring),
    e.g. ``**rotation (color)** against colorization (gray): probes ahead at conv3 +4.0; not separable at conv1
    -0.4; PASCAL (against colorization (color)) not separable anywhere (...).``"""
    parts = []
    for method in (REFERENCE, BASELINE):
        probe_ref = _counterpart(rows, method, row.input_mode, probes=True)
        pascal_ref = _counterpart(rows, method, row.input_mode, probes=False)
        ref = probe_ref or pascal_ref
        if method == row.method or ref is None:
            continue
        said = []
        if probe_ref is not None and row.probes and (diffs := probe_differences(row, probe_ref, layers)):
            said.append(f"probes {summarise(diffs)}")
        if pascal_ref is not None and row.pascal and (diffs := pascal_differences(row, pascal_ref, columns)):
            other = f" (against {pascal_ref.label})" if pascal_ref is not ref else ""
            said.append(f"PASCAL{other} {summarise(diffs)}")
        parts.append(f"against {ref.label}: " + ("; ".join(said) if said else "no column in common"))
    if not parts:
        return f"**{row.label}** is the reference of both comparisons."
    return f"**{row.label}** " + parts[0] + "".join(f". A{p[1:]}" for p in parts[1:]) + "."


# --------------------------------------------------------------------------------------------------------------
# The page


def _probe_cells(row: MethodRow, columns: Sequence[str]) -> tuple[str, list[str]] | None:
    """Where the row's probes were measured, and its top-1 cells (None: the row has no probe)."""
    if not row.probes:
        return None
    values, first = probe_values(row), row.probes[0]
    return (f"measured: {first['data'].get('name', '?')}, {first['protocol'].get('name', '?')}",
            [interval(values[c].get("top1_ci"), values[c]["top1"]) if c in values else MISSING for c in columns])


def _pascal_cells(row: MethodRow, columns: Sequence[str]) -> tuple[str, list[str]] | None:
    """Where the row's PASCAL runs were measured, and its cells (None: the row has none)."""
    if not row.pascal:
        return None
    first = next(iter(row.pascal.values()))[0]
    return f"measured: {first.get('row', {}).get('dataset', '?')}", [_pascal_cell(row.pascal.get(c)) for c in columns]


def _section(heading: str, what: str, rows: Sequence[MethodRow], numbers: Mapping[str, Any],
             cells: Callable[[MethodRow, Sequence[str]], tuple[str, list[str]] | None]) -> list[str]:
    """A table of every row with ``cells``, each followed by its published rows (``numbers``), then their source,
    protocol and, per published row, its backbone (numbered notes)."""
    columns = list(numbers["columns"])
    titles = numbers.get("column_titles", columns)
    lines = [f"## {heading}", "", markdown_row(["Method", "Input", "Rows from", *titles]),
             "|---|---|---|" + "---:|" * len(columns)]
    notes: dict[str, str] = {}
    unpublished: list[str] = []
    for row in rows:
        measured = cells(row, columns)
        if measured is None:
            continue
        lines.append(markdown_row([f"**{row.label}**", row.input_mode, measured[0], *measured[1]]))
        if not published_for(row, numbers) and row.method not in unpublished:
            unpublished.append(row.method)
        for pub in published_for(row, numbers):
            notes.setdefault(pub["name"], pub.get("backbone", "backbone not stated"))
            mark = list(notes).index(pub["name"]) + 1
            lines.append(markdown_row([f"{pub['name']} [{what[0]}{mark}]", pub.get("input", MISSING),
                                       f"published: {numbers.get('dataset', '')}",
                                       *_published_cells(pub, numbers, columns)]))
    lines += ["", f"Published {what} rows: {numbers['source']}; protocol: {numbers.get('protocol', 'not stated')}."]
    lines += [f"- [{what[0]}{i}] {name}: {backbone}" for i, (name, backbone) in enumerate(notes.items(), 1)]
    if unpublished:
        lines.append(f"- No published {what} row (in that file) for: {', '.join(unpublished)}.")
    return lines + [""]


def render(rows: Sequence[MethodRow], skipped: Sequence[tuple[str, str]], title: str = "") -> str:
    """``comparison.md`` (module docstring); ``skipped``: (job, reason) of the evaluations that were not run."""
    probe_numbers, pascal_numbers = published_numbers.load(PROBE_NUMBERS), published_numbers.load(PASCAL_NUMBERS)
    layers, columns = list(probe_numbers["columns"]), list(pascal_numbers["columns"])
    datasets = sorted({r.probes[0]["data"].get("name", "?") for r in rows if r.probes}
                      | {res[0].get("row", {}).get("dataset", "?") for r in rows for res in r.pascal.values()})
    seeds = max((len(r.probes) for r in rows), default=0)
    lines = [f"# Pretext tasks compared{': ' + title if title else ''}", "",
             "Every method was trained and evaluated in this harness (one CaffeNet with BatchNorm, one data pipeline, "
             "the same probes and fine-tunings); each measured row is followed by the published rows of the same "
             f"method, with the network and protocol they were measured with. Measured on: {', '.join(datasets)}; "
             f"{seeds} training seed(s) per method. ± is the half-width of the 95 % interval (probes: bootstrap over "
             "validation images and seeds; PASCAL: over test images)."]
    if any(d != "imagenet" and "VOC" not in d for d in datasets):
        lines.append("The embedded data set's numbers check the pipeline end to end; they are not comparable with "
                     "the published ImageNet and PASCAL VOC numbers.")
    lines += ["", *_section("Linear probes (top-1 %)", "probe", rows, probe_numbers, _probe_cells),
              *_section("PASCAL fine-tuning (% mAP, segmentation % mIU)", "PASCAL", rows, pascal_numbers,
                        _pascal_cells),
              "## Differences beyond the intervals", "",
              "Against colorization and the Gaussian baseline. Probes: paired bootstrap of the top-1 difference on "
              "the same validation images (seeds drawn independently), ahead / behind when its 95 % interval "
              "excludes 0. PASCAL: ahead / behind when the two runs' 95 % intervals do not overlap (detection and "
              "segmentation keep no per-image record for a paired test); otherwise not separable. Differences in "
              "points.", ""]
    lines += [f"- {sentence(row, rows, layers, columns)}" for row in rows]
    if skipped:
        lines += ["", "## Not run", ""] + [f"- `{job}`: {reason}" for job, reason in skipped]
    return "\n".join(lines) + "\n"


def write_comparison(evaluations: Sequence[Evaluation], options: Mapping[str, dict[str, Any]],
                     skipped: Sequence[tuple[str, str]], out: Path, title: str = "") -> dict[str, Any]:
    """Write ``out/comparison.md`` (:func:`render` of :func:`method_rows`); returns its path and the row count."""
    rows = method_rows(evaluations, options)
    atomic_write_text(out / "comparison.md", render(rows, skipped, title))
    return {"markdown": str(out / "comparison.md"), "rows": len(rows)}


__all__ = ["BASELINE", "BASELINE_NAMES", "Difference", "Evaluation", "MethodRow", "REFERENCE", "method_rows",
           "pascal_differences", "pascal_value", "probe_differences", "published_for", "render", "sentence",
           "summarise", "write_comparison"]
