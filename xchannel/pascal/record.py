"""The result record every PASCAL task writes (atomically): ``kind: "pascal"``, ``task``, ``table2_column`` (one
of :data:`TABLE2_COLUMNS`), ``headline`` (the Table 2 number in percent, with its metric's name), ``row`` (what a
Table 2 row groups by: encoder name, spec, input mode, data set name), ``protocol``, ``config``, ``encoder`` (its
description plus the preparation steps applied), ``data``, ``metrics``, ``history``, ``timing``, ``code`` and
``created``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xchannel.utils.config import to_dict
from xchannel.utils.io import atomic_write_json, slug

if TYPE_CHECKING:  # an annotation only: the record format does not import the encoders
    from xchannel.pascal.prepare import PreparedEncoder

#: Table 2's columns: key -> (task, heading). Result records name theirs in ``table2_column``.
TABLE2_COLUMNS: dict[str, tuple[str, str]] = {
    "cls_fc8": ("classification", "Classification fc8 (% mAP)"),
    "cls_fc6-8": ("classification", "Classification fc6-8 (% mAP)"),
    "cls_all": ("classification", "Classification all (% mAP)"),
    "det": ("detection", "Detection (% mAP)"),
    "seg": ("segmentation", "Segmentation (% mIU)"),
}


def code_version() -> dict[str, Any]:
    """The xchannel version and git commit (shared with the probe's results)."""
    from xchannel.probe.run import code_version as _code_version

    return _code_version()


def default_output(task: str, encoder_name: str, input_mode: str, suffix: str = "") -> Path:
    """``results/pascal/<task>_<encoder>_<input mode>[_<suffix>].json``."""
    parts = [task, slug(encoder_name), input_mode] + ([suffix] if suffix else [])
    return Path("results") / "pascal" / ("_".join(parts) + ".json")


def result_record(*, task: str, column: str, cfg: Any, prepared: PreparedEncoder, protocol: Mapping[str, Any],
                  metrics: Mapping[str, Any], headline: Mapping[str, Any], data: Mapping[str, Any],
                  history: Sequence[Mapping[str, Any]] = (), timing: Mapping[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The JSON record of one PASCAL run (see the module docstring for the keys). ``headline`` is
    ``{"metric": name, "value": percent, "label": human-readable}``, the number Table 2 shows."""
    if column not in TABLE2_COLUMNS:
        raise ValueError(f"unknown Table 2 column {column!r}; known: {', '.join(TABLE2_COLUMNS)}")
    enc = prepared.record
    return {
        "kind": "pascal",
        "task": task,
        "table2_column": column,
        "headline": dict(headline),
        "row": {"encoder": enc.get("name"), "spec": enc.get("spec"), "input_mode": enc.get("input_mode"),
                "weights_fingerprint": enc.get("weights_fingerprint"), "dataset": data.get("name"),
                "pretext": enc.get("task"),
                "rescaled": any(s.get("step") == "rescale" for s in enc.get("preparation", []))},
        "protocol": dict(protocol),
        "config": to_dict(cfg),
        "encoder": enc,
        "data": dict(data),
        "metrics": dict(metrics),
        "history": list(history),
        "timing": dict(timing or {}),
        **extra,
        "code": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON atomically; returns the path (also stored in ``record["output"]``)."""
    path = Path(path)
    record["output"] = str(path)
    atomic_write_json(path, record)
    return path


__all__ = ["TABLE2_COLUMNS", "code_version", "default_output", "result_record", "write_result"]
