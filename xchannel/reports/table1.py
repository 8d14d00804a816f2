"""Table 1 (colorization results) from the rows that ``xchannel evaluate colorization`` measures: ours, labelled
with what they were measured on, then the paper's (``published/table1.json``) with their source.

Writes ``table1.md``, ``table1.csv`` and ``table1.json`` (:func:`write_table1`); the rows are records with the
fields of :data:`COLUMNS` (AuC, classifier top-1 and AMT in [0, 1], shown in %; cost columns in MB and ms) and
``amt_se``: :class:`xchannel.evaluation.colorization.RowResult` as a dict, as ``table1.json`` keeps them, so a
table can be rendered again from that file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xchannel.reports import published as published_numbers
from xchannel.reports.format import MISSING, csv_text, interval, markdown_row, number
from xchannel.utils.io import atomic_write_json, atomic_write_text

#: The paper's Table 1 columns: (key in results and in ``published/table1.json``, header as printed).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("params_mb", "Params (MB)"),
    ("feats_mb", "Feats (MB)"),
    ("runtime_ms", "Runtime (ms)"),
    ("auc_nonrebal", "AuC non-rebal (%)"),
    ("auc_rebal", "AuC rebal (%)"),
    ("vgg_top1", "VGG Top-1 Class Acc (%)"),
    ("amt_labeled_real", "AMT Labeled Real (%)"),
)
#: Columns measured as fractions in [0, 1] and shown in %.
PERCENT = ("auc_nonrebal", "auc_rebal", "vgg_top1", "amt_labeled_real")
#: Columns whose rows may carry a 95 % interval over the images (``<column>_ci``, in %).
AUC = ("auc_nonrebal", "auc_rebal")
TITLE = "Table 1: colorization results"


def load_published() -> dict[str, Any]:
    """The paper's Table 1, with ``measured_on`` (what its rows were measured on) filled in."""
    data = published_numbers.load("table1")
    return {**data, "measured_on": data.get("measured_on", "ImageNet val 10k (paper)")}


def _cell(value: float | None, se: float | None = None) -> str:
    """A number with one decimal (an int as printed: the paper's "129", "100"), "±se" when given."""
    if value is None:
        return MISSING
    text = str(value) if isinstance(value, int) else number(value)
    return text if se is None else f"{text}±{number(se)}"


def table_rows(rows: Sequence[Mapping[str, Any]], measured_on: str, published: Mapping[str, Any]
               ) -> list[list[str]]:
    """Header + rows as strings: Method, the paper's seven columns, Measured on (ours first, then the paper's)."""
    out = [["Method", *(title for _, title in COLUMNS), "Measured on"]]
    for r in rows:
        pct = {k: None if r[k] is None else 100.0 * r[k] for k in PERCENT}
        se = None if r["amt_se"] is None else 100.0 * r["amt_se"]
        values = {k: _cell(pct[k] if k in PERCENT else r[k], se if k == "amt_labeled_real" else None)
                  for k, _ in COLUMNS}
        for k in AUC:  # mean ± half-width of the 95 % interval over the images (not for the exact ground truth)
            if r.get(f"{k}_ci") and r[f"{k}_ci"]["half_width"] > 0:
                values[k] = interval(r[f"{k}_ci"])
        out.append([r["name"], *(values[k] for k, _ in COLUMNS), measured_on])
    keys = list(published["columns"])
    for row in published["rows"]:
        se = dict(zip(keys, row.get("se", [None] * len(keys))))
        vals = dict(zip(keys, row["values"]))
        out.append([row["name"], *(_cell(vals.get(k), se.get(k)) for k, _ in COLUMNS),
                    published.get("measured_on", "published")])
    return out


def to_markdown(table: list[list[str]], title: str, notes: Sequence[str]) -> str:
    """``# title``, the notes, then the table (numbers right-aligned)."""
    header, *body = table
    align = ["---"] + ["---:"] * (len(header) - 2) + ["---"]
    lines = [f"# {title}", "", *notes, "", markdown_row(header), markdown_row(align)]
    lines += [markdown_row(row) for row in body]
    return "\n".join(lines) + "\n"


def to_csv(table: list[list[str]]) -> str:
    """The table as CSV, missing values empty."""
    return csv_text([[c.replace(MISSING, "") for c in row] for row in table])


def write_table1(out_dir: str | Path, result: Mapping[str, Any], config: Mapping[str, Any], measured_on: str,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """``table1.md``, ``table1.csv`` and ``table1.json`` in ``out_dir`` (written atomically), the paper's rows
    beside ours. ``result["rows"]``: the measured rows (records with the fields of :data:`COLUMNS`); its other keys
    (counts, classifier) go into ``table1.json`` as they are."""
    out = Path(out_dir)
    published = load_published()
    rows = [dict(r) for r in result["rows"]]
    table = table_rows(rows, measured_on, published)
    pub_note = f"Paper rows: {published['source']}. {published.get('notes', '')}".strip()
    md = to_markdown(table, TITLE, [f"Our rows measured on: {measured_on}.", *notes, pub_note])
    paths = {"md": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["csv"], to_csv(table))
    payload = {"kind": "colorization_table1", "measured_on": measured_on, "columns": [k for k, _ in COLUMNS],
               "column_titles": [t for _, t in COLUMNS], "rows": rows,
               **{k: v for k, v in result.items() if k != "rows"},
               "published": published, "notes": list(notes), "config": dict(config)}
    atomic_write_json(paths["json"], payload)
    return paths


__all__ = ["AUC", "COLUMNS", "PERCENT", "TITLE", "load_published", "table_rows", "to_csv", "to_markdown", "write_table1"]
