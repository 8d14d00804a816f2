"""How the reports write numbers: a value, ``mean ± spread``, ``mean ± half-width`` of a 95 % interval record,
``value [lo, hi]``, and the rows of markdown and CSV tables. Every report formats through these, so a number reads
the same in every table.

The intervals themselves are computed by :mod:`xchannel.metrics.uncertainty`; here they are only written out, from
the records that its :meth:`~xchannel.metrics.uncertainty.Interval.to_dict` produces
(``{"value", "ci95": [lo, hi], "half_width", ...}``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: How a missing value is shown in markdown (empty in CSV).
MISSING = "—"


def number(value: float | None, digits: int = 1, missing: str = MISSING) -> str:
    """``value`` with ``digits`` decimals; ``missing`` when there is none."""
    return missing if value is None else f"{value:.{digits}f}"


def plus_minus(value: float, spread: float, digits: int = 1) -> str:
    """``value ± spread``, e.g. ``35.0 ± 7.2`` (spread: a half-width or a standard deviation)."""
    return f"{value:.{digits}f} ± {spread:.{digits}f}"


def interval(record: Mapping[str, Any] | None, value: float | None = None, digits: int = 1) -> str:
    """``value ± half_width`` of an interval record (``value`` overrides the record's); the value alone when there
    is no record, :data:`MISSING` when there is no value."""
    v = record["value"] if value is None and record else value
    if v is None:
        return MISSING
    if not record:
        return number(v, digits)
    return plus_minus(v, record["half_width"], digits)


def value_range(value: float, lo: float, hi: float, digits: int = 1) -> str:
    """``value [lo, hi]``, e.g. a chance level and the central 95 % of its draws."""
    return f"{number(value, digits)} [{number(lo, digits)}, {number(hi, digits)}]"


def markdown_row(cells: Iterable[str]) -> str:
    """``| a | b | c |``."""
    return "| " + " | ".join(cells) + " |"


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV text (``\\n`` line ends)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


__all__ = ["MISSING", "csv_text", "interval", "markdown_row", "number", "plus_minus", "value_range"]
