"""A sweep's run records, ``runs.json`` and ``runs.csv``: every finished job with its config, seed and checkpoint.

Each run record holds the job (id, kind, labels, seed, the config as the spec expands it and the full config the
job ran with, as its result records it), what it needed (``needs``: the train job whose run folder it used), where
and how long it ran (host, machine, seconds), its headline number, and the weights it is about with their sha256:

* a ``train`` job: its last checkpoint (``checkpoint``, ``checkpoint_sha256``);
* a ``probe`` or PASCAL job: the encoder's weight file and its sha256 (``checkpoint``, ``checkpoint_sha256``), and
  the encoder's ``weights_fingerprint`` (sha256 over its weights and input convention: it also identifies random
  encoders, which have no file);
* a skipped job: its ``skipped`` reason.

``runs.json`` adds the sweep (name, spec, variables, the chosen variable set), the command that remakes it, and
the time it took: the sum of the jobs' seconds and the span from the first start to the last end, with the hosts.
``runs.csv`` has one row per run, the configs as JSON text.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xchannel.reports.format import csv_text
from xchannel.sweep.jobs import RUN_DIR, read_json, skipped
from xchannel.sweep.runner import result_summary
from xchannel.sweep.spec import Job, Sweep
from xchannel.utils.io import atomic_write_json, atomic_write_text, sha256_file

#: The columns of ``runs.csv``.
CSV_COLUMNS = ("job", "kind", "tag", "method", "input", "seed", "state", "seconds", "host", "checkpoint",
               "checkpoint_sha256", "weights_fingerprint", "summary", "needs", "config_hash", "config",
               "resolved_config")


def sweep_command(sweep: Sweep) -> str:
    """The ``xchannel sweep`` command line that expands to this sweep: its spec (the name of a packaged one) and
    the variables given with ``--var``."""
    source = sweep.name if Path(sweep.source).parent.name == "specs" else sweep.source
    given = [shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}") for k, v in sweep.given.items()]
    return " ".join(["xchannel", "sweep", source, *(f"--var {g}" for g in given)])


def _weights(job: Job, result: Mapping[str, Any]) -> dict[str, Any]:
    """The weights a run is about: a train job's checkpoint, an evaluation's encoder."""
    if job.kind == "train":
        path = result.get("checkpoint")
        return {"checkpoint": path, "checkpoint_sha256": sha256_file(path) if path and Path(path).is_file() else None}
    enc = result.get("encoder") or {}
    return {"checkpoint": enc.get("weights_path"), "checkpoint_sha256": enc.get("checkpoint_sha256"),
            "weights_fingerprint": enc.get("weights_fingerprint"), "encoder": enc.get("spec")}


def run_record(job: Job, record: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """One finished job (its folder ``job_dir``) as a run record (module docstring)."""
    info, result = record.get("job") or {}, record.get("result") or {}
    resolved = result.get("config") or read_json(job_dir / RUN_DIR / "config.json")  # a train job's run config
    out = {"job": job.id, "kind": job.kind, "tag": job.tag, "labels": dict(job.labels),
           "seed": job.config.get("seed", (resolved or {}).get("seed")), "config_hash": job.config_hash,
           "config": job.config, "resolved_config": resolved, "needs": dict(job.needs),
           "host": info.get("host"), "machine": info.get("machine"), "started": info.get("started"),
           "finished": info.get("finished"), "seconds": info.get("seconds"), "summary": result_summary(record)}
    if skipped(record):
        return {**out, "skipped": result.get("reason")}
    return {**out, **_weights(job, result)}


def runs_json(sweep: Sweep, records: Sequence[tuple[Job, Mapping[str, Any]]], counts: Mapping[str, int],
              sweep_dir: Path) -> dict[str, Any]:
    """``runs.json``: the sweep, the command, the time and machines, and every run (module docstring)."""
    runs = [run_record(job, rec, Path(sweep_dir) / job.id) for job, rec in records]
    starts = [r["started"] for r in runs if isinstance(r["started"], (int, float))]
    ends = [r["finished"] for r in runs if isinstance(r["finished"], (int, float))]
    machines = {r["host"]: r["machine"] for r in runs if r["host"]}
    return {"sweep": sweep.name, "source": sweep.source, "variables": sweep.variables,
            "variable_set": sweep.variable_set, "command": sweep_command(sweep), "jobs": dict(counts),
            "time": {"job_seconds": round(sum(r["seconds"] or 0.0 for r in runs), 1),
                     "span_seconds": round(max(ends) - min(starts), 1) if starts and ends else None,
                     "by_kind": {kind: round(sum(r["seconds"] or 0.0 for r in runs if r["kind"] == kind), 1)
                                 for kind in dict.fromkeys(r["kind"] for r in runs)}},
            "machines": machines, "runs": runs}


def runs_csv(runs: Sequence[Mapping[str, Any]]) -> str:
    """``runs.csv``: :data:`CSV_COLUMNS`, one row per run."""
    rows = [list(CSV_COLUMNS)]
    for r in runs:
        labels = r["labels"]
        rows.append([r["job"], r["kind"], r["tag"], labels.get("method", ""), labels.get("input", ""), r["seed"],
                     "skipped" if "skipped" in r else "done", r["seconds"], r["host"], r.get("checkpoint") or "",
                     r.get("checkpoint_sha256") or "", r.get("weights_fingerprint") or "", r["summary"],
                     json.dumps(r["needs"], sort_keys=True) if r["needs"] else "", r["config_hash"],
                     json.dumps(r["config"], sort_keys=True), json.dumps(r["resolved_config"], sort_keys=True)])
    return csv_text(rows)


def write_runs(sweep: Sweep, records: Sequence[tuple[Job, Mapping[str, Any]]], counts: Mapping[str, int],
               sweep_dir: Path, out: Path) -> dict[str, Any]:
    """Write ``runs.json`` and ``runs.csv`` into ``out`` (``records``: the finished jobs of the sweep in
    ``sweep_dir``); returns their paths and the time record."""
    data = runs_json(sweep, records, counts, sweep_dir)
    atomic_write_json(out / "runs.json", data)
    atomic_write_text(out / "runs.csv", runs_csv(data["runs"]))
    return {"json": str(out / "runs.json"), "csv": str(out / "runs.csv"), "runs": len(data["runs"]),
            "time": data["time"], "command": data["command"]}


__all__ = ["CSV_COLUMNS", "run_record", "runs_csv", "runs_json", "sweep_command", "write_runs"]
