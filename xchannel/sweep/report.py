"""``xchannel report SWEEP_DIR``: a sweep's results as the paper's figures and tables, published numbers beside ours.

What is written to the output folder (default ``results/<sweep name>/``), each file atomically:

``figure7.png``, ``figure7.md``, ``figure7.csv``
    From the ``probe`` jobs (Fig. 7: linear classification on frozen layers). Results of the same encoder, input
    mode, data set and protocol are merged into one line: layers probed by separate jobs are joined, and repeated
    seeds are averaged (the standard deviation over seeds is kept). The merged records are written to
    ``figure7/<encoder>_<input>.json`` and drawn by ``xchannel plot figure7``'s function
    (:func:`xchannel.commands.plot.make_plot`), which overlays the published ImageNet numbers when the data set is
    ImageNet. The table lists the published rows (``benchmarks/published/figure7.json``) and ours.
``table2.md``, ``table2.csv``
    From the PASCAL jobs (``pascal-cls``/``pascal-det``/``pascal-seg``), by :func:`xchannel.pascal.table2.write_table2`:
    the published Table 2 rows, then one measured row per encoder and input mode.
``training.md``
    From the ``train`` jobs: steps, loss at the first and last step, validation numbers, throughput.
``jobs.csv``, ``README.md``
    Every job of the sweep with its state and headline number; what was made, and which jobs are still missing
    or failed (a report of a sweep that has not finished says so: it is made from the results that exist).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.metrics.uncertainty import format_interval
from xchannel.sweep.jobs import RUN_DIR, read_result
from xchannel.sweep.runner import JobStatus, job_states, load_sweep, result_summary
from xchannel.sweep.spec import Job, Sweep
from xchannel.utils.io import atomic_write_json, atomic_write_text

FIGURE7_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
PASCAL_KINDS = ("pascal-cls", "pascal-det", "pascal-seg")


def default_output(sweep: Sweep) -> Path:
    return Path("results") / sweep.name


def collect(sweep: Sweep, sweep_dir: Path) -> list[tuple[Job, dict[str, Any]]]:
    """(job, result record) of every finished job, in spec order."""
    out = []
    for job in sweep.jobs:
        record = read_result(Path(sweep_dir) / job.id)
        if record is not None and isinstance(record.get("result"), dict):
            out.append((job, record))
    return out


# --------------------------------------------------------------------------------------------------------------
# Figure 7


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "encoder"


def layer_sorted(names: Sequence[str]) -> list[str]:
    """Layer names in network order (AlexNet's conv1 ... fc7 first, others after them in the given order)."""
    rank = {name: i for i, name in enumerate(FIGURE7_LAYERS)}
    position = {name: i for i, name in enumerate(names)}
    return sorted(position, key=lambda n: (rank.get(n, len(rank)), position[n]))


def merge_probe_results(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge probe results per (encoder spec, input mode, data set, protocol): layers are joined and every
    layer's top-1/top-5 is averaged over the results that have it (seeds), with ``top1_std``/``top5_std``
    (population standard deviation; 0 for one seed) and ``runs`` (how many results were averaged)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in results:
        enc, data, proto = r.get("encoder", {}), r.get("data", {}), r.get("protocol", {})
        key = (enc.get("spec"), enc.get("input_mode"), data.get("name"), proto.get("name"))
        groups.setdefault(key, []).append(r)
    merged = []
    for (spec, mode, _, _), rs in groups.items():
        order: list[str] = []
        for r in rs:
            order += [layer for layer in r.get("layer_order", []) if layer not in order]
        order = layer_sorted(order)
        layers: dict[str, dict[str, Any]] = {}
        for layer in order:
            have = [r["layers"][layer] for r in rs if layer in r.get("layers", {})]
            entry = dict(have[0])
            for metric in ("top1", "top5"):
                vals = [float(h[metric]) for h in have]
                mean = sum(vals) / len(vals)
                entry[metric] = mean
                entry[f"{metric}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
            entry["runs"] = len(have)
            if len(have) > 1:  # one run's interval does not describe the mean of several
                entry.pop("top1_ci", None)
            layers[layer] = entry
        first = rs[0]
        merged.append({"kind": "linear_probe", "encoder": first.get("encoder", {}), "data": first.get("data", {}),
                       "protocol": first.get("protocol", {}), "layer_order": order, "layers": layers,
                       "seeds": sorted({r.get("config", {}).get("seed") for r in rs if "config" in r},
                                       key=lambda s: (s is None, s)),
                       "sources": [r.get("output") or r.get("_path") for r in rs],
                       "name": f"{spec} ({mode})"})
    return merged


def figure7_table(merged: Sequence[Mapping[str, Any]], published: Mapping[str, Any] | None,
                  metric: str = "top1") -> tuple[str, str]:
    """Markdown and CSV: published rows (when available) and ours, one column per layer."""
    columns: list[str] = list(published["columns"]) if published else []
    for r in merged:
        columns += [layer for layer in r["layer_order"] if layer not in columns]
    columns = layer_sorted(columns)
    head = "top-1" if metric == "top1" else "top-5"
    md = [f"# Figure 7: linear classification on frozen layers ({head} accuracy, %)", "",
          "| Method | Input | Data | " + " | ".join(columns) + " |", "|---|---|---|" + "---:|" * len(columns)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "method", "input", "dataset", *columns, "source"])
    if published:
        for row in published["rows"]:
            vals = dict(zip(published["columns"], row["values"]))
            md.append(f"| {row['name']} | {row.get('input', '—')} | {published.get('dataset', '')}, published | "
                      + " | ".join("—" if vals.get(c) is None else f"{vals[c]:.1f}" for c in columns) + " |")
            w.writerow(["published", row["name"], row.get("input", ""), published.get("dataset", ""),
                        *("" if vals.get(c) is None else f"{vals[c]:.1f}" for c in columns), published["source"]])
    for r in merged:
        enc = r["encoder"]
        name = enc.get("name") or enc.get("spec")
        data = r.get("data", {}).get("name", "?")
        cells, raw = [], []
        for c in columns:
            v = r["layers"].get(c)
            if v is None:
                cells.append("—")
                raw.append("")
                continue
            std = v.get(f"{metric}_std", 0.0)
            if v.get("runs", 1) > 1:
                cells.append(f"{v[metric]:.1f} ± {std:.1f}")
            else:
                cells.append(format_interval(v.get(f"{metric}_ci"), v[metric]))
            raw.append(f"{v[metric]:.2f}")
        md.append(f"| **{name}** (measured) | {enc.get('input_mode', '—')} | {data}, measured | "
                  + " | ".join(cells) + " |")
        w.writerow(["measured", name, enc.get("input_mode", ""), data, *raw, "; ".join(map(str, r["sources"]))])
    md.append("")
    if published:
        md.append(f"Published rows: {published['source']}.")
    datasets = sorted({r.get("data", {}).get("name", "?") for r in merged})
    if any(not r.get("data", {}).get("is_imagenet") for r in merged):
        md.append(f"Measured on: {', '.join(datasets)}. Only ImageNet measurements are comparable with the published "
                  f"numbers; others (e.g. the embedded procedural data set) check the pipeline end to end.")
    if any(v.get("runs", 1) > 1 for r in merged for v in r["layers"].values()):
        md.append("± is the standard deviation over seeds.")
    if any(f"{metric}_ci" in v for r in merged for v in r["layers"].values()):
        md.append("± on a single result is the half-width of its 95 % interval (bootstrap over validation images and "
                  "head seeds).")
    md.append("")
    return "\n".join(md), buf.getvalue()


def write_figure7(results: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    from xchannel.commands.plot import make_plot, published_numbers

    merged = merge_probe_results(results)
    paths = []
    for r in merged:
        enc = r["encoder"]
        path = out / "figure7" / f"{_slug(enc.get('name') or enc.get('spec'))}_{enc.get('input_mode')}.json"
        atomic_write_json(path, r)
        paths.append(path)
    plot = make_plot("figure7", paths, out / "figure7.png")
    md, table_csv = figure7_table(merged, published_numbers("figure7"))
    atomic_write_text(out / "figure7.md", md)
    atomic_write_text(out / "figure7.csv", table_csv)
    return {"plot": str(plot), "markdown": str(out / "figure7.md"), "csv": str(out / "figure7.csv"),
            "merged": [str(p) for p in paths], "lines": len(merged)}


# --------------------------------------------------------------------------------------------------------------
# Training and the job list


def training_table(records: Sequence[tuple[Job, Mapping[str, Any]]]) -> str:
    lines = ["# Training jobs", "", "| job | steps | loss (first → last) | validation | images/s | processes |",
             "|---|---:|---|---|---:|---:|"]
    for job, rec in records:
        r = rec["result"]
        first, last = r.get("first_loss"), r.get("last_loss")
        loss = f"{first:.4f} → {last:.4f}" if isinstance(first, (int, float)) and isinstance(last, (int, float)) \
            else "—"
        val = r.get("val") or {}
        val_text = ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3f}"
                             for k, v in val.items() if isinstance(v, (int, float))) or "—"
        ips = r.get("images_per_s")
        ips_text = f"{ips:.1f}" if isinstance(ips, (int, float)) else "—"
        lines.append(f"| {job.id} | {r.get('step', '—')} | {loss} | {val_text} | {ips_text} | "
                     f"{r.get('world_size', 1)} |")
    return "\n".join(lines) + "\n"


def jobs_csv(sweep: Sweep, statuses: Sequence[JobStatus]) -> str:
    axes: list[str] = []
    for job in sweep.jobs:
        axes += [a for a in job.labels if a not in axes]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["job", "kind", "tag", *axes, "state", "attempts", "summary"])
    for job, st in zip(sweep.jobs, statuses):
        w.writerow([job.id, job.kind, job.tag, *(job.labels.get(a, "") for a in axes), st.state, st.attempts,
                    st.detail])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# The report


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Collect the results of the sweep in ``sweep_dir`` into ``out`` (default ``results/<sweep name>/``); see the
    module docstring. Returns what was written and what could not be made."""
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    out = Path(out) if out is not None else default_output(sweep)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    statuses = job_states(sweep, sweep_dir)
    records = collect(sweep, sweep_dir)
    by_kind: dict[str, list[tuple[Job, dict[str, Any]]]] = {}
    for job, rec in records:
        by_kind.setdefault(job.kind, []).append((job, rec))
    made: dict[str, Any] = {}
    notes: list[str] = []

    probes = [rec["result"] for _, rec in by_kind.get("probe", [])]
    if probes:
        made["figure7"] = write_figure7(probes, out)
    elif "figure7" in sweep.report:
        notes.append("figure7: no finished probe job yet")

    pascal = [(job, rec) for kind in PASCAL_KINDS for job, rec in by_kind.get(kind, [])]
    if pascal:
        from xchannel.pascal.table2 import write_table2

        files = []
        for job, rec in pascal:
            own = rec["result"].get("output")
            path = Path(own) if own and Path(own).is_file() else None
            if path is None:  # the task's own file is gone: write its record next to the job's result
                path = sweep_dir / job.id / RUN_DIR / "table2-record.json"
                atomic_write_json(path, rec["result"])
            files.append(path)
        t2 = write_table2(files, out)
        made["table2"] = {"markdown": t2["markdown_path"], "csv": t2["csv_path"], "rows": len(t2["rows"])}
    elif "table2" in sweep.report:
        notes.append("table2: no finished PASCAL job yet")

    if by_kind.get("train"):
        atomic_write_text(out / "training.md", training_table(by_kind["train"]))
        made["training"] = {"markdown": str(out / "training.md"), "jobs": len(by_kind["train"])}

    atomic_write_text(out / "jobs.csv", jobs_csv(sweep, statuses))
    counts = {s: sum(st.state == s for st in statuses) for s in ("done", "running", "pending", "failed", "missing")}
    unfinished = [st for st in statuses if st.state != "done"]
    readme = [f"# Sweep {sweep.name}", ""] + ([sweep.description, ""] if sweep.description else []) + [
              f"Made by `xchannel report {sweep_dir}` from {counts['done']} of {len(statuses)} finished jobs "
              f"(" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ").", ""]
    for name, info in made.items():
        files = [v for k, v in info.items() if k in ("plot", "markdown", "csv")]
        readme.append(f"- {name}: " + ", ".join(f"`{Path(f).name}`" for f in files))
    readme.append("- jobs.csv: every job, its state and headline number")
    if notes:
        readme += ["", "Not made:"] + [f"- {n}" for n in notes]
    if unfinished:
        readme += ["", "Jobs without a result (the report leaves them out):"]
        readme += [f"- {st.id}: {st.state}" + (f" ({st.detail})" if st.detail else "") for st in unfinished]
    atomic_write_text(out / "README.md", "\n".join(readme).replace("\n\n\n", "\n\n") + "\n")
    if not records:
        notes.append("no job of this sweep has finished: only jobs.csv and README.md were written")
    return {"sweep": sweep.name, "out": str(out), "made": made, "notes": notes, "counts": counts,
            "summaries": {job.id: result_summary(rec) for job, rec in records}}


__all__ = ["collect", "default_output", "figure7_table", "jobs_csv", "merge_probe_results", "training_table",
           "write_figure7", "write_report"]
