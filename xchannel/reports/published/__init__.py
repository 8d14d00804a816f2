"""The published numbers the reports put beside ours: one JSON file per figure or table, with their sources.

The files are package data of :mod:`xchannel.reports.published` (``xchannel/reports/published/<id>.json``), read
with :mod:`importlib.resources`, so an installed copy has them as well as a checkout. Each file holds::

    {"id": "figure7", "title": "...", "metric": "top1", "unit": "%", "dataset": "imagenet",
     "columns": ["conv1", ...],                       # the x axis of a figure, the columns of a table
     "source": "paper, table/figure", "notes": "...",
     "rows": [{"name": "...", "values": [13.1, ...],  # one value per column; null where the paper has none
               "source": "...", ...}]}                # optional per-row source and attributes (e.g. "input")

Adding a figure or table is adding one file; :func:`load` validates it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

REQUIRED = ("id", "title", "metric", "columns", "source", "rows")


class PublishedError(ValueError):
    """A malformed or unknown published-numbers file (the message names the file and the problem)."""


def folder() -> Traversable:
    """Where the published numbers are stored (inside the installed package)."""
    return resources.files(__name__)


def available(where: Traversable | Path | None = None) -> list[str]:
    """Ids of the stored figures and tables."""
    return sorted(p.name[:-5] for p in (where or folder()).iterdir() if p.name.endswith(".json"))


def load(name: str, where: Traversable | Path | None = None) -> dict[str, Any]:
    """The published numbers ``name`` (e.g. ``"figure7"``), validated; ``where``: another folder of such files."""
    where = where or folder()
    path = where.joinpath(f"{name}.json")
    if not path.is_file():
        raise PublishedError(f"{path}: no published numbers {name!r}; available: {', '.join(available(where))}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PublishedError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise PublishedError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["id"] != name:
        raise PublishedError(f"{path}: id {data['id']!r} does not match the file name")
    for i, row in enumerate(data["rows"]):
        values = row.get("values")
        if not isinstance(row.get("name"), str) or not isinstance(values, list):
            raise PublishedError(f"{path}: row {i} needs a 'name' and a 'values' list")
        if len(values) != len(data["columns"]):
            raise PublishedError(f"{path}: row {row['name']!r} has {len(values)} values for "
                                 f"{len(data['columns'])} columns")
        if not all(v is None or isinstance(v, (int, float)) for v in values):
            raise PublishedError(f"{path}: row {row['name']!r} has non-numeric values")
    return data


def series(name: str) -> dict[str, dict[str, float]]:
    """``{row name: {column: value}}`` of a figure or table, leaving out missing values."""
    data = load(name)
    return {row["name"]: {c: v for c, v in zip(data["columns"], row["values"]) if v is not None}
            for row in data["rows"]}


__all__ = ["PublishedError", "available", "folder", "load", "series"]
