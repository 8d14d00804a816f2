"""``xchannel report SWEEP_DIR``: a sweep's results as the paper's figures and tables, published numbers beside ours.

What is written to the output folder (default ``results/<sweep name>/``), each file atomically:

``figure7.png``, ``figure7.md``, ``figure7.csv``
    From the ``probe`` jobs (Fig. 7: linear classification on frozen layers), by
    :func:`xchannel.reports.figure7.write_figure7`. Results of the same encoder, input mode, data set and protocol
    are merged into one line: layers probed by separate jobs are joined, and repeated seeds are averaged (the
    standard deviation over seeds is kept). The merged records are written to ``figure7/<encoder>_<input>.json``
    and drawn as ``xchannel plot figure7`` draws them, with the published ImageNet numbers overlaid when the data
    set is ImageNet. The table lists the published rows and ours.
``table2.md``, ``table2.csv``
    From the PASCAL jobs (``pascal-cls``/``pascal-det``/``pascal-seg``), by
    :func:`xchannel.reports.table2.write_table2`: the published Table 2 rows, then one measured row per encoder and
    input mode.
``training.md``
    From the ``train`` jobs: steps, loss at the first and last step, validation numbers, throughput.
``comparison.md``
    When the spec's ``report`` lists ``comparison`` (the ``pretexts`` sweep): every method's measured rows beside
    its published numbers, and whether it differs from colorization and from the Gaussian baseline beyond the
    intervals (:mod:`xchannel.reports.comparison`); Fig. 7's published lines are then the pretext tasks'
    (``published/pretext_imagenet_linear.json``).
``runs.json``, ``runs.csv``
    Every finished job with its config, seed and checkpoint sha256, the command and the time the sweep took
    (:mod:`xchannel.reports.runs`).
``jobs.csv``, ``README.md``
    Every job of the sweep with its state and headline number; what was made, and which jobs are still missing
    or failed (a report of a sweep that has not finished says so: it is made from the results that exist).

Jobs labelled on a ``method`` axis (the ``pretexts`` sweep) are named by that label in every table and plot (their
encoders are run folders of the sweep's train jobs, whose file names say nothing), with the seed added to Table 2's
rows when the sweep has several. Jobs that their kind skipped (``{"status": "skipped"}``, e.g. colour probes of a
network trained on gray) are listed with their reason, in ``README.md`` and ``comparison.md``; a skipped colour
classification with conv1 frozen shows its gray run's number in Table 2's colour row (:func:`gray_stand_ins`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.reports.comparison import BASELINE_NAMES, PROBE_NUMBERS, Evaluation, write_comparison
from xchannel.reports.figure7 import write_figure7
from xchannel.reports.format import MISSING, csv_text, markdown_row, number
from xchannel.reports.runs import write_runs
from xchannel.reports.table2 import write_table2_results
from xchannel.sweep.jobs import RUN_DIR, read_json, read_result, skipped
from xchannel.sweep.runner import JobStatus, job_states, load_sweep, result_summary
from xchannel.sweep.spec import Job, Sweep
from xchannel.utils.io import atomic_write_json, atomic_write_text

PASCAL_KINDS = ("pascal-cls", "pascal-det", "pascal-seg")


def default_output(sweep: Sweep) -> Path:
    """``results/<sweep name>``."""
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
# Methods


def method_named(job: Job, result: Mapping[str, Any], seed_too: bool = False) -> dict[str, Any]:
    """``result`` with its encoder named by the job's ``method`` label (the baselines by their names,
    :data:`~xchannel.reports.comparison.BASELINE_NAMES`; the seed label added when ``seed_too``): for a probe
    ``encoder.name``/``spec``, for PASCAL ``row.encoder``/``spec``, and no weights fingerprint, so that one
    method's columns share a row whatever images initialised its random encoder. Without such a label, the result
    itself."""
    method = job.labels.get("method")
    if method is None:
        return dict(result)
    name = BASELINE_NAMES.get(method, method) + (f", {job.labels['seed']}" if seed_too and "seed" in job.labels
                                                  else "")
    if result.get("kind") == "pascal":
        return {**result, "row": {**result["row"], "encoder": name, "spec": name, "weights_fingerprint": None}}
    enc = result.get("encoder") or {}
    return {**result, "encoder": {**enc, "name": name, "spec": name, "loaded_spec": enc.get("spec")}}


def input_mode(job: Job, result: Mapping[str, Any]) -> str:
    """The input an evaluation ran on: the job's ``input`` label, or, for a job labelled ``own`` (the network's own
    input, ``input_mode: null``), the mode its result records."""
    label = str(job.labels.get("input", ""))
    if label != "own":
        return label
    row = result.get("row") if result.get("kind") == "pascal" else result.get("encoder")
    return str((row or {}).get("input_mode") or label)


def gray_stand_ins(records: Sequence[tuple[Job, Mapping[str, Any]]],
                   done: Sequence[tuple[Job, Mapping[str, Any]]]) -> list[tuple[Job, dict[str, Any]]]:
    """For each skipped colour classification job (conv1 frozen on a gray-trained network:
    :func:`~xchannel.sweep.jobs.classification_skip`), the finished gray job of the same group, method and seed,
    its result relabelled as the colour input's and marked ``same_as_gray``: Table 2's colour row then shows the
    number that stands for both, as the paper's does (Ours (color) fc8 / fc6-8 = Ours (gray))."""
    def but_input(job: Job) -> tuple:
        return job.kind, job.tag, tuple(sorted((k, v) for k, v in job.labels.items() if k != "input"))

    gray = {but_input(job): (job, res) for job, res in done if job.labels.get("input") == "gray"}
    out = []
    for job, rec in records:
        if job.kind != "pascal-cls" or job.labels.get("input") != "color" or not skipped(rec):
            continue
        key = but_input(job)
        if key in gray:
            result = gray[key][1]
            out.append((job, {**result, "same_as_gray": gray[key][0].id,
                              "row": {**result["row"], "input_mode": "color"}}))
    return out


def trained_options(run_dir: Path) -> dict[str, Any] | None:
    """The options a train job's task was trained with (its config's ``pretext`` section over the task's
    defaults), from the run folder's ``config.json``; None when it cannot be read."""
    from xchannel.pretext import get_task
    from xchannel.utils.config import from_dict, to_dict

    config = read_json(run_dir / "config.json")
    if config is None or "task" not in config:
        return None
    try:
        task = get_task(config["task"])
        return to_dict(from_dict(task.Config, dict(config.get("pretext") or {}), str(run_dir)))
    except UserError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Training and the job list


def training_table(records: Sequence[tuple[Job, Mapping[str, Any]]]) -> str:
    """``training.md``: one row per finished training job (steps, loss, validation numbers, throughput)."""
    lines = ["# Training jobs", "", "| job | steps | loss (first → last) | validation | images/s | processes |",
             "|---|---:|---|---|---:|---:|"]
    for job, rec in records:
        r = rec["result"]
        first, last = r.get("first_loss"), r.get("last_loss")
        loss = f"{first:.4f} → {last:.4f}" if isinstance(first, (int, float)) and isinstance(last, (int, float)) \
            else MISSING
        val = r.get("val") or {}
        val_text = ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3f}"
                             for k, v in val.items() if isinstance(v, (int, float))) or MISSING
        ips = r.get("images_per_s")
        lines.append(markdown_row([job.id, str(r.get("step", MISSING)), loss, val_text,
                                   number(ips if isinstance(ips, (int, float)) else None),
                                   str(r.get("world_size", 1))]))
    return "\n".join(lines) + "\n"


def jobs_csv(sweep: Sweep, statuses: Sequence[JobStatus]) -> str:
    """``jobs.csv``: every job with its labels, state, attempts and headline."""
    axes = list(dict.fromkeys(a for job in sweep.jobs for a in job.labels))
    return csv_text([["job", "kind", "tag", *axes, "state", "attempts", "summary"]]
                    + [[job.id, job.kind, job.tag, *(job.labels.get(a, "") for a in axes), st.state, st.attempts,
                        st.detail] for job, st in zip(sweep.jobs, statuses)])


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
    passed = [(job.id, rec["result"].get("reason", "")) for job, rec in records if skipped(rec)]
    for job, rec in records:
        if not skipped(rec):
            by_kind.setdefault(job.kind, []).append((job, rec))
    made: dict[str, Any] = {}
    notes: list[str] = []
    compare = "comparison" in sweep.report
    several_seeds = len({job.labels.get("seed") for job in sweep.jobs}) > 1

    probes = [(job, method_named(job, rec["result"])) for job, rec in by_kind.get("probe", [])]
    if probes:
        made["figure7"] = write_figure7([r for _, r in probes], out, PROBE_NUMBERS if compare else "figure7")
    elif "figure7" in sweep.report:
        notes.append("figure7: no finished probe job yet")

    pascal = [(job, method_named(job, rec["result"], several_seeds))
              for kind in PASCAL_KINDS for job, rec in by_kind.get(kind, [])]
    pascal += gray_stand_ins(records, pascal)
    if pascal:
        results = []
        for job, result in pascal:
            own = result.get("output")
            path = Path(own) if own and Path(own).is_file() else None
            if path is None:  # the task's own file is gone: write its record next to the job's result
                path = sweep_dir / job.id / RUN_DIR / "table2-record.json"
                atomic_write_json(path, result)
            results.append({**result, "_path": str(path)})
        t2 = write_table2_results(results, out)
        made["table2"] = {"markdown": t2["markdown_path"], "csv": t2["csv_path"], "rows": len(t2["rows"])}
    elif "table2" in sweep.report:
        notes.append("table2: no finished PASCAL job yet")

    if compare and (probes or pascal):
        options = {job.labels["method"]: trained_options(sweep_dir / job.id / RUN_DIR)
                   for job, _ in by_kind.get("train", []) if "method" in job.labels}
        evaluations = [Evaluation(job.labels.get("method", job.id), input_mode(job, result), result)
                       for job, result in probes + pascal]
        made["comparison"] = write_comparison(evaluations, options, passed, out, sweep.name)
    elif compare:
        notes.append("comparison: no finished probe or PASCAL job yet")

    if by_kind.get("train"):
        atomic_write_text(out / "training.md", training_table(by_kind["train"]))
        made["training"] = {"markdown": str(out / "training.md"), "jobs": len(by_kind["train"])}

    atomic_write_text(out / "jobs.csv", jobs_csv(sweep, statuses))
    counts = {s: sum(st.state == s for st in statuses) for s in ("done", "running", "pending", "failed", "missing")}
    made["runs"] = write_runs(sweep, records, counts, sweep_dir, out)
    unfinished = [st for st in statuses if st.state != "done"]
    readme = [f"# Sweep {sweep.name}", ""] + ([sweep.description, ""] if sweep.description else []) + [
              f"Made by `xchannel report {sweep_dir}` from {counts['done']} of {len(statuses)} finished jobs "
              f"(" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ").", ""]
    for name, info in made.items():
        files = [v for k, v in info.items() if k in ("plot", "markdown", "csv", "json")]
        readme.append(f"- {name}: " + ", ".join(f"`{Path(f).name}`" for f in files))
    readme.append("- jobs.csv: every job, its state and headline number")
    time = made["runs"]["time"]
    readme += ["", f"Command: `{made['runs']['command']}`; the jobs took {time['job_seconds']:.0f} s in all"
               + (f", {time['span_seconds']:.0f} s from the first start to the last end" if time["span_seconds"]
                  else "") + " (runs.json: per job, with the machine)."]
    if passed:
        readme += ["", "Skipped by their kind (nothing to compute):"] + [f"- {j}: {why}" for j, why in passed]
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


__all__ = ["collect", "default_output", "gray_stand_ins", "input_mode", "jobs_csv", "method_named", "trained_options",
           "training_table",
           "write_report"]
