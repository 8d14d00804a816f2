"""Table 2 of the paper ("Task and Dataset Generalization on PASCAL"), published rows beside ours.

Columns (:data:`xchannel.pascal.record.TABLE2_COLUMNS`): classification with fc8, fc6-8 or all layers fine-tuned
(% mAP, VOC2007), detection (% mAP, VOC2007, Fast R-CNN) and segmentation (% mIU, FCN; the paper's "VOC 2012"
column, which its authors ran on SBD train -> VOC2011 seg11valid).

* **Published rows**: the paper's Table 2 as stored, with its source, in ``published/table2.json``
  (:mod:`xchannel.reports.published`): ImageNet, Gaussian, Autoencoder, k-means, Agrawal et al.,
  Wang & Gupta, Doersch et al.*, Pathak et al.*, Donahue et al.*, Ours (gray), Ours (color).
* **Measured rows**: one per encoder, input mode and data set, from the result JSON files the PASCAL tasks write
  (``kind: "pascal"``; each names its column in ``table2_column`` and its number in ``headline.value``). Results of
  the same encoder (spec and weights fingerprint), input mode, data set and variant (``row.variant``, set by a
  task run outside the published protocol, e.g. detection with RPN proposals) fill one row; when a column is given
  twice, the newest result (``created``) is used. Every measured row names the data set it was measured on:
  ``embedded`` (the procedural stand-in of ``xchannel make-data``, not comparable with the published numbers) or
  ``PASCAL VOC``.

Measured values are printed ``mean ± half-width`` where their result recorded a 95 % interval over test images
(``headline.uncertainty``, :mod:`xchannel.metrics.uncertainty`); the classification columns get a "random scores"
row per data set, the mAP of random scores on its test labels (``headline.chance``). A missing value is shown as
"—" (empty in the CSV).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.metrics.uncertainty import overlap_separation
from xchannel.pascal.record import TABLE2_COLUMNS
from xchannel.reports import published as published_numbers
from xchannel.reports.format import MISSING, csv_text, interval, markdown_row, number, value_range
from xchannel.reports.results import read_result
from xchannel.utils.io import atomic_write_text

COLUMNS: tuple[str, ...] = tuple(TABLE2_COLUMNS)


@dataclass
class MeasuredRow:
    """One measured row: an encoder in one input mode on one data set, its values (column -> %) and the result
    files they came from."""

    label: str
    spec: str
    input_mode: str
    dataset: str
    fingerprint: str | None = None
    rescaled: bool | None = None
    pretext: str | None = None  # the pretext task the encoder was trained with, when its checkpoint says
    values: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # column -> Interval.to_dict() record
    chance: dict[str, dict[str, Any]] = field(default_factory=dict)  # classification column -> random-score mAP
    sources: dict[str, str] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)
    superseded: list[str] = field(default_factory=list)


def load_published() -> dict[str, Any]:
    """The paper's Table 2 (``published/table2.json``), its columns checked against :data:`COLUMNS`."""
    data = published_numbers.load("table2")
    if list(data["columns"]) != list(COLUMNS):
        raise published_numbers.PublishedError(f"published table2: columns {data['columns']} differ from Table 2's "
                                               f"{list(COLUMNS)}")
    return data


def _result_files(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, bool]]:
    """Files given, and JSON files found under folders given (flag: found in a folder, so foreign JSON files are
    skipped rather than refused)."""
    out: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend((f, True) for f in sorted(p.rglob("*.json")))
        elif p.is_file():
            out.append((p, False))
        else:
            raise UserError(f"{p}: no such result file or folder")
    return out


def read_results(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """PASCAL result records from files and folders (folders: every ``*.json`` below them that is one). A file
    given by name that is not a readable PASCAL result is an error naming it."""
    results = []
    for path, found in _result_files(paths):
        try:
            data = read_result(path, "pascal", "PASCAL task", "xchannel pascal cls|det|seg")
        except UserError:
            if found:
                continue
            raise
        column = data.get("table2_column")
        value = (data.get("headline") or {}).get("value")
        row = data.get("row")
        if column not in TABLE2_COLUMNS or not isinstance(value, (int, float)) or not isinstance(row, Mapping):
            raise UserError(f"{path}: a PASCAL result needs 'table2_column' (one of {', '.join(COLUMNS)}), a "
                            f"numeric 'headline.value' and a 'row' record")
        results.append(data)
    return results


def calibration_rank(row: MeasuredRow) -> int:
    """0 for an encoder trained with labels (pretext task ``supervised``: the ceiling), 1 for the Gaussian network
    (the floor), 2 for every other row: the calibration rows come first."""
    if row.pretext == "supervised":
        return 0
    return 1 if row.spec.split(":")[0] == "gaussian" else 2


def measured_rows(results: Sequence[Mapping[str, Any]]) -> list[MeasuredRow]:
    """Group results into rows (see the module docstring): the calibration rows (:func:`calibration_rank`) first,
    the others in order of first appearance."""
    rows: dict[tuple, MeasuredRow] = {}
    for r in results:
        info = r["row"]
        mode = str(info.get("input_mode") or "")
        dataset = str(info.get("dataset") or (r.get("data") or {}).get("name") or "unknown")
        variant = str(info.get("variant") or "")
        key = (info.get("spec"), mode, dataset, info.get("weights_fingerprint"), variant)
        if key not in rows:
            name = str(info.get("encoder") or info.get("spec") or "encoder")
            label = name if f"({mode})" in name else f"{name} ({mode})"
            if variant:
                label += f", {variant}"
            rows[key] = MeasuredRow(label=label, spec=str(info.get("spec") or ""), input_mode=mode,
                                    dataset=dataset, fingerprint=info.get("weights_fingerprint"),
                                    rescaled=info.get("rescaled"), pretext=info.get("pretext"))
        row = rows[key]
        col, created = r["table2_column"], str(r.get("created") or "")
        if col in row.values and created < row.created.get(col, ""):
            row.superseded.append(r["_path"])
            continue
        if col in row.values:
            row.superseded.append(row.sources[col])
        row.values[col] = float(r["headline"]["value"])
        for attr, key in (("intervals", "uncertainty"), ("chance", "chance")):
            getattr(row, attr).pop(col, None)
            if isinstance(r["headline"].get(key), Mapping):
                getattr(row, attr)[col] = dict(r["headline"][key])
        row.sources[col] = r["_path"]
        row.created[col] = created
    return sorted(rows.values(), key=calibration_rank)


def _cell(row: MeasuredRow, column: str) -> str:
    """A measured value, ``mean ± half-width`` of its 95 % interval where the result recorded one."""
    if column not in row.values:
        return MISSING
    return interval(row.intervals.get(column), row.values[column])


def chance_rows(rows: Sequence[MeasuredRow]) -> dict[str, dict[str, dict[str, Any]]]:
    """data set -> classification column -> the random-score mAP recorded with its results (the test labels are
    the data set's, so any result of the column gives it)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for col, chance in row.chance.items():
            out.setdefault(row.dataset, {}).setdefault(col, chance)
    return out


def calibration_lines(rows: Sequence[MeasuredRow]) -> list[str]:
    """Per data set and column, whether the supervised row is above the Gaussian one beyond their 95 % intervals
    (the intervals do not overlap: a conservative reading of two independent runs). Empty without both rows."""
    lines = []
    for dataset in sorted({r.dataset for r in rows}):
        top = [r for r in rows if r.dataset == dataset and calibration_rank(r) == 0]
        floor = [r for r in rows if r.dataset == dataset and calibration_rank(r) == 1]
        if not (top and floor):
            continue
        sup, gauss = top[0], floor[0]
        parts = []
        for c in COLUMNS:
            if c not in sup.values or c not in gauss.values:
                continue
            a, b = sup.intervals.get(c), gauss.intervals.get(c)
            if a and b:
                verdict = {"ahead": "separated", "behind": "reversed",
                           "not separable": "not separated"}[overlap_separation(a["ci95"], b["ci95"])]
            else:
                verdict = "no intervals"
            parts.append(f"{TABLE2_COLUMNS[c][1]}: {verdict} ({_cell(sup, c)} vs {_cell(gauss, c)})")
        if parts:
            lines.append(f"Calibration on {dataset}, {sup.label} above {gauss.label} beyond the 95 % intervals? "
                         + "; ".join(parts) + ".")
    return lines


def render_markdown(published: Mapping[str, Any], rows: Sequence[MeasuredRow]) -> str:
    """The table as markdown: published rows, then measured rows, then notes (sources, data sets, files)."""
    heads = [TABLE2_COLUMNS[c][1] for c in COLUMNS]
    lines = ["# Table 2: task and data set generalization on PASCAL", "",
             markdown_row(["Method", "Input", "Data", *heads]), "|---|---|---|" + "---:|" * len(COLUMNS)]
    for r in published["rows"]:
        lines.append(markdown_row([r["name"], r.get("input", MISSING),
                                   f"{published.get('dataset', 'PASCAL VOC')}, published",
                                   *(number(v) for v in r["values"])]))
    for k, row in enumerate(rows, 1):
        lines.append(markdown_row([f"**{row.label}** (measured) [m{k}]", row.input_mode or MISSING,
                                   f"{row.dataset}, measured", *(_cell(row, c) for c in COLUMNS)]))
    chance = chance_rows(rows)
    for dataset, cols in chance.items():
        lines.append(markdown_row(["random scores (chance)", MISSING, f"{dataset}, measured",
                                   *(value_range(cols[c]["mean"], *cols[c]["range95"]) if c in cols else MISSING
                                     for c in COLUMNS)]))
    lines += ["", f"Published rows: {published['source']}. "
              "* = only a subset of the AlexNet layers was pre-trained, the rest initialised with "
              "Krähenbühl et al.'s k-means scheme [36]. " + MISSING + " = not reported.", ""]
    if published.get("notes"):
        lines += [f"Notes on the published numbers: {published['notes']}", ""]
    if rows:
        datasets = sorted({r.dataset for r in rows})
        lines.append("Measured rows (this code), on: " + ", ".join(datasets) + ".")
        if any(calibration_rank(r) < 2 for r in rows):
            lines.append("The calibration rows come first: an encoder trained with the data set's labels "
                         "(pretext task `supervised`, the ceiling) and the Gaussian network (the floor); every "
                         "other row is read between them.")
            lines += calibration_lines(rows)
        if any(row.intervals for row in rows):
            lines.append("± is the half-width of the 95 % interval of a percentile bootstrap over the test images "
                         "(one fine-tuning run; the spread between fine-tuning seeds is not in it).")
        if chance:
            lines.append("Random scores: the classification mAP of uniformly random scores on the same test labels, "
                         "mean and central 95 % of the draws; a measured value inside that range is not "
                         "distinguishable from chance.")
        if "embedded" in datasets:
            lines.append("'embedded' is the procedural stand-in data set of `xchannel make-data` (VOC file formats, "
                         "synthetic images, few iterations): its numbers check the pipeline end to end and are not "
                         "comparable with the published PASCAL VOC numbers.")
        lines.append("")
        for k, row in enumerate(rows, 1):
            files = ", ".join(f"{c}: `{row.sources[c]}`" for c in COLUMNS if c in row.sources)
            extra = "" if row.rescaled is None else f"; rescaled: {'yes' if row.rescaled else 'no'}"
            lines.append(f"- [m{k}] encoder `{row.spec}`{extra}; results {files}")
            if row.superseded:
                lines.append(f"  (older results for the same cells, not shown: {', '.join(row.superseded)})")
        lines.append("")
    return "\n".join(lines)


def render_csv(published: Mapping[str, Any], rows: Sequence[MeasuredRow]) -> str:
    """The table as CSV: ``kind`` (published / measured / chance), ``method``, ``input``, ``dataset``, ``spec``, the
    five columns (empty when missing), ``source`` (the paper, or the result files), then each column's half-width
    of its 95 % interval."""
    table = [["kind", "method", "input", "dataset", "spec", *COLUMNS, "source", *(f"{c}_half_width" for c in COLUMNS)]]
    for r in published["rows"]:
        table.append(["published", r["name"], r.get("input", ""), published.get("dataset", "PASCAL VOC"), "",
                      *(number(v, missing="") for v in r["values"]), published["source"], *("" for _ in COLUMNS)])
    for row in rows:
        table.append(["measured", row.label, row.input_mode, row.dataset, row.spec,
                      *(number(row.values.get(c), 2, missing="") for c in COLUMNS),
                      "; ".join(f"{c}={row.sources[c]}" for c in COLUMNS if c in row.sources),
                      *(number(row.intervals[c]["half_width"] if c in row.intervals else None, 2, missing="")
                        for c in COLUMNS)])
    for dataset, cols in chance_rows(rows).items():
        table.append(["chance", "random scores", "", dataset, "",
                      *(number(cols[c]["mean"] if c in cols else None, 2, missing="") for c in COLUMNS),
                      cols[next(iter(cols))]["label"]])
    return csv_text(table)


def write_table2(result_paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Render Table 2 from result files/folders into ``out_dir/table2.md`` and ``out_dir/table2.csv``
    (atomically). Returns ``{"markdown", "csv", "markdown_path", "csv_path", "rows"}``."""
    return write_table2_results(read_results(result_paths), out_dir)


def write_table2_results(results: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`write_table2` from result records already read (each with its ``_path``)."""
    rows = measured_rows(results)
    published = load_published()
    md, table_csv = render_markdown(published, rows), render_csv(published, rows)
    out = Path(out_dir)
    atomic_write_text(out / "table2.md", md)
    atomic_write_text(out / "table2.csv", table_csv)
    return {"markdown": md, "csv": table_csv, "markdown_path": str(out / "table2.md"),
            "csv_path": str(out / "table2.csv"), "rows": rows}


__all__ = ["COLUMNS", "MeasuredRow", "chance_rows", "load_published", "measured_rows", "read_results", "render_csv",
           "render_markdown", "write_table2", "write_table2_results"]
