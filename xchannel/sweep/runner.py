"""Submitting a sweep, idempotently, and reporting the state of its jobs.

The sweep folder::

    SWEEP_DIR/
      sweep.json                 the expanded spec (name, variables, every job's kind, labels, config)
      .submitit/<slurm job id>/  submitit's files of SLURM array tasks (pickles, stdout/stderr)
      <job id>/
        config.json              the job (id, kind, labels, config, resources)
        submission.json          the last submission: where (local / debug / here / slurm) and submitit's job id
        logs/                    submitit's stdout/stderr (for SLURM: links to .submitit/<id>/)
        run/                     the job's working folder (checkpoints, the kind's own result file)
        attempts.jsonl, error.json, result.json   (see xchannel.sweep.jobs)

Idempotence: a job with ``result.json`` is done; a job that is pending or running (by SLURM's accounting through
submitit, or by its process on this machine) is left alone; only missing and failed jobs are (re)submitted, and a
re-submitted job resumes from what its ``run/`` folder holds. One submitting process at a time holds the folder's
lock. A failing job records its error and never stops the others.

Dependencies (a job's ``needs``, :mod:`xchannel.sweep.spec`): a job starts only when every job it needs has a
result. ``debug`` and ``here`` run the jobs in spec order (dependencies come from earlier groups); ``local`` starts
a job once its dependencies have finished; ``slurm`` submits the jobs whose dependencies are in the same
submission (or still pending or running from an earlier one) as arrays with ``--dependency=afterok:<ids>``
(``--kill-on-invalid-dep=yes``: a failed dependency cancels them), one array per resource request and set of
dependencies. A job whose dependency failed, or is neither done nor submitted, is *blocked*: not started, listed.

Clusters (``--cluster``):

``local`` (default)
    submitit's ``LocalExecutor``: each job is a subprocess of this machine, at most ``parallel`` at once; this
    process waits for them and starts the next ones (Ctrl-C stops them; they checkpoint on SIGTERM).
``debug``
    submitit's ``DebugExecutor``: one after the other in this process (``--pdb``: post-mortem on a failure).
``slurm``
    job arrays through submitit's ``SlurmExecutor``, one array per distinct resource request, at most the
    profile's ``array_parallelism`` tasks at once. Returns after submitting (``--wait`` waits).
``here``
    in this process, without submitting anything: for running inside an existing allocation, e.g. ``srun
    xchannel sweep SPEC --cluster here --job ID``; every task of the step runs the job (DDP ranks from SLURM's or
    torchrun's variables), non-distributed job kinds run on rank 0 only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from xchannel import __version__
from xchannel.errors import UserError
from xchannel.sweep.cluster import ClusterProfile, make_executor
from xchannel.sweep.jobs import (CONFIG_FILE, ERROR_FILE, LOG_DIR, RESULT_FILE, SUBMISSION_FILE, SweepJob, get_kind,
                                 read_attempts, read_json, read_result)
from xchannel.sweep.spec import Job, Sweep
from xchannel.utils.config import from_dict, to_dict
from xchannel.utils.io import atomic_write_json

CLUSTERS: tuple[str, ...] = ("local", "debug", "slurm", "here")
STATES: tuple[str, ...] = ("done", "running", "pending", "failed", "missing")
SWEEP_FILE = "sweep.json"
SUBMITIT_DIR = ".submitit"
LOCK_FILE = ".lock"
PREVIOUS_ERROR_FILE = "error.previous.json"
DEFAULT_ROOT = Path("runs") / "sweeps"
#: The local executor's default time limit when no profile is given: jobs on this machine are not scheduled, so
#: the limit only bounds a hung job (submitit signals USR2 30 s before it, the job checkpoints and restarts).
LOCAL_TIMEOUT_MIN = 3 * 24 * 60

# SLURM job states (sacct) -> sweep states.
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING",
                  "SUSPENDED", "SPECIAL_EXIT", "RESIZING", "STOPPED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def default_sweep_dir(name: str) -> Path:
    return DEFAULT_ROOT / name


# --------------------------------------------------------------------------------------------------------------
# The sweep folder


def write_sweep(sweep: Sweep, sweep_dir: Path) -> None:
    """Record the expanded spec in ``sweep.json`` and each job's ``config.json``. A folder that holds another
    sweep (a different name) is refused."""
    sweep_dir = Path(sweep_dir)
    old = read_json(sweep_dir / SWEEP_FILE)
    if old is not None and old.get("name") != sweep.name:
        raise UserError(f"{sweep_dir}: holds sweep {old.get('name')!r}, not {sweep.name!r}: choose another --dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {**sweep.to_dict(), "updated": _now(), "xchannel": __version__}
    if old is not None:
        known = {j.id for j in sweep.jobs}
        earlier = {j.get("id") for j in old.get("jobs", [])} | set(old.get("stale_jobs", []))
        stale = sorted(earlier - known)
        if stale:
            record["stale_jobs"] = stale  # folders of jobs that an earlier version of the spec made
    atomic_write_json(sweep_dir / SWEEP_FILE, record)
    for job in sweep.jobs:
        path = sweep_dir / job.id / CONFIG_FILE
        if read_json(path) != job.to_dict():
            atomic_write_json(path, job.to_dict())


def load_sweep(sweep_dir: Path) -> Sweep:
    """The sweep recorded in ``sweep_dir/sweep.json``."""
    path = Path(sweep_dir) / SWEEP_FILE
    data = read_json(path)
    if data is None:
        raise UserError(f"{sweep_dir}: not a sweep folder (no readable {SWEEP_FILE}); run `xchannel sweep SPEC` "
                        f"first")
    data = {k: v for k, v in data.items() if k not in ("updated", "xchannel", "stale_jobs")}
    return Sweep.from_dict(data, str(path))


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep folder's lock (one submitting process at a time); refuse if another process holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{sweep_dir}: another `xchannel sweep` is submitting or running jobs here ({holder}); "
                            f"wait for it or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# Job states


@dataclass
class JobStatus:
    """Where one job stands. ``state`` is one of :data:`STATES`."""

    id: str
    kind: str
    state: str
    attempts: int = 0
    cluster: str | None = None
    cluster_job_id: str | None = None
    cluster_state: str | None = None
    detail: str = ""
    error_tail: list[str] = field(default_factory=list)


def _log_paths(sub: dict[str, Any]) -> tuple[Path | None, Path | None]:
    """(stdout, stderr) of task 0 of a submission."""
    from submitit.core.utils import JobPaths

    folder, job_id = sub.get("log_folder"), sub.get("job_id")
    if not folder or not job_id:
        return None, None
    paths = JobPaths(folder, job_id=str(job_id), task_id=0)
    return paths.stdout, paths.stderr


def tail_lines(text: str, n: int) -> list[str]:
    """The last ``n`` lines of a log that say something: progress-bar redraws (``\\r``) count as line breaks;
    blank lines and the ``^^^^`` markers of Python tracebacks are left out."""
    lines = [line.rstrip() for line in text.replace("\r", "\n").split("\n")]
    return [line for line in lines if line.strip(" \t^~")][-n:]


def error_tail(job_dir: Path, sub: dict[str, Any] | None, n: int = 12) -> list[str]:
    """The end of a failed job's error: submitit's stderr log of its last submission, else ``error.json``."""
    if sub is not None:
        _, stderr = _log_paths(sub)
        if stderr is not None and stderr.is_file():
            try:
                with open(stderr, "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
                    lines = tail_lines(f.read().decode("utf-8", "replace"), n)
            except OSError:
                lines = []
            if lines:
                return lines
    err = read_json(job_dir / ERROR_FILE)
    if err is not None:
        return tail_lines(err.get("traceback") or f"{err.get('error')}: {err.get('message')}", n)
    return []


def _error_summary(job_dir: Path) -> str:
    err = read_json(job_dir / ERROR_FILE)
    if err is None:
        return ""
    return f"{err.get('error')}: {str(err.get('message', '')).splitlines()[0] if err.get('message') else ''}"


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its closing ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _process_alive(sub: dict[str, Any]) -> bool:
    """Is the process recorded in a submission still the same process, running on this host? The recorded start
    time guards against a recycled pid."""
    pid = sub.get("pid")
    if not isinstance(pid, int) or sub.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():  # a debug / here job ran in this very process, which is asking: it has ended
        return False
    start = process_start(pid)
    return start is not None and start == sub.get("pid_start")


def _slurm_states(subs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """submitit's view (sacct) of the SLURM jobs of ``subs`` (sweep job id -> submission): one sacct call."""
    import submitit

    jobs = {jid: submitit.SlurmJob(folder=sub["log_folder"], job_id=str(sub["job_id"]))
            for jid, sub in subs.items()}
    if not jobs:
        return {}
    watcher = next(iter(jobs.values())).watcher
    try:
        watcher.update()
    except Exception as err:  # sacct missing or failing: say so in every row rather than crash the status
        return {jid: f"UNKNOWN (sacct: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
                for jid in jobs}
    return {jid: watcher.get_state(str(j.job_id), mode="cache") for jid, j in jobs.items()}


def job_states(sweep: Sweep, sweep_dir: Path, jobs: Sequence[Job] | None = None) -> list[JobStatus]:
    """The state of every job (or of ``jobs``), from the job folders and, for SLURM jobs, from sacct."""
    sweep_dir = Path(sweep_dir)
    jobs = list(sweep.jobs if jobs is None else jobs)
    subs = {j.id: read_json(sweep_dir / j.id / SUBMISSION_FILE) for j in jobs}
    slurm = _slurm_states({jid: s for jid, s in subs.items()
                           if s and s.get("cluster") == "slurm" and not (sweep_dir / jid / RESULT_FILE).is_file()})
    out = []
    for job in jobs:
        job_dir = sweep_dir / job.id
        sub = subs[job.id]
        attempts = len(read_attempts(job_dir))
        st = JobStatus(job.id, job.kind, "missing", attempts=attempts)
        if sub is not None:
            st.cluster, st.cluster_job_id = sub.get("cluster"), _opt_str(sub.get("job_id"))
        result = read_result(job_dir)
        if result is not None:
            st.state, st.detail = "done", result_summary(result)
            out.append(st)
            continue
        if sub is None:
            if (job_dir / ERROR_FILE).is_file():
                st.state, st.detail = "failed", _error_summary(job_dir)
                st.error_tail = error_tail(job_dir, None)
            elif (dep := missing_need(job, sweep_dir)) is not None:
                st.detail = f"needs {dep}, which has no result yet"
            out.append(st)
            continue
        cluster = sub.get("cluster")
        if cluster == "slurm":
            sstate = slurm.get(job.id, "UNKNOWN")
            st.cluster_state = sstate
            base = sstate.split()[0] if sstate else "UNKNOWN"
            if base in _SLURM_PENDING:
                st.state = "pending"
            elif base in _SLURM_RUNNING:
                st.state = "running"
            elif base == "UNKNOWN" and not (job_dir / ERROR_FILE).is_file():
                st.state, st.detail = "pending", "not yet in SLURM's accounting"
            else:
                st.state = "failed"
                st.detail = _error_summary(job_dir) or f"SLURM state {sstate}, no result"
        else:
            if _process_alive(sub):
                st.state = "running"
            else:
                st.state = "failed"
                st.detail = _error_summary(job_dir) or "the process ended without a result"
        if st.state == "failed":
            st.error_tail = error_tail(job_dir, sub)
        elif st.state == "running" and attempts:
            last = read_attempts(job_dir)[-1]
            if last.get("resumed_from"):
                st.detail = f"resumed from step {last['resumed_from']}"
        out.append(st)
    return out


def _opt_str(x: Any) -> str | None:
    return None if x is None else str(x)


def result_summary(record: dict[str, Any]) -> str:
    """One line about a finished job's result (its headline number where the kind has one)."""
    r = record.get("result") or {}
    kind = (record.get("job") or {}).get("kind")
    if r.get("status") == "skipped":
        return f"skipped: {r.get('reason', '')}"
    try:
        if kind == "train":
            loss = r.get("last_loss")
            return (f"{r.get('step')} steps" + (f", loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
                    + (f", world {r['world_size']}" if r.get("world_size", 1) > 1 else ""))
        if kind == "probe":
            layers = r.get("layers", {})
            return "top-1 " + " ".join(f"{k} {v['top1']:.1f}" for k, v in layers.items())
        if isinstance(r.get("headline"), dict):
            h = r["headline"]
            return f"{h.get('label', h.get('metric', ''))} {h.get('value', float('nan')):.1f}".strip()
    except (TypeError, KeyError, ValueError):
        pass
    return ""


def format_status(statuses: Sequence[JobStatus], tail: int = 10) -> str:
    """A table of the jobs (id, kind, state, attempts, SLURM/local job id, detail); under each failed job the end
    of its error; a count per state at the end."""
    rows = [("job", "kind", "state", "tries", "cluster job", "detail")]
    for s in statuses:
        where = f"{s.cluster}:{s.cluster_job_id}" if s.cluster and s.cluster_job_id else (s.cluster or "")
        state = s.state + (f" ({s.cluster_state})" if s.cluster_state and s.state in ("failed", "pending")
                           and s.cluster_state.split()[0] not in ("PENDING", "UNKNOWN") else "")
        rows.append((s.id, s.kind, state, str(s.attempts), where, s.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
            continue
        s = statuses[i - 1]
        if s.state == "failed" and s.error_tail:
            lines.extend(f"    | {t}" for t in s.error_tail[-tail:])
    counts = Counter(s.state for s in statuses)
    lines.append("")
    lines.append(f"{len(statuses)} jobs: " + ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Resources


def job_profile(job: Job, base: ClusterProfile) -> ClusterProfile:
    """The cluster profile of one job: ``base`` with the job's group ``resources`` over it. A job kind that is
    not distributed runs as one task on one node (at most one GPU) whatever the base profile asks for."""
    where = f"job {job.id}: resources"
    kind = get_kind(job.kind, where)
    data = {**to_dict(base), **job.resources}
    if not kind.distributed:
        asked = {k: job.resources[k] for k in ("nodes", "tasks_per_node") if job.resources.get(k, 1) != 1}
        if asked:
            raise UserError(f"{where}: job kind {job.kind!r} runs as a single process; "
                            f"{', '.join(f'{k}={v}' for k, v in asked.items())} would run it several times")
        data.update(nodes=1, tasks_per_node=1, gpus_per_node=min(1, int(data.get("gpus_per_node") or 0)))
    profile = from_dict(ClusterProfile, data, where)
    profile.validate(where)
    return profile


# --------------------------------------------------------------------------------------------------------------
# Submission


@dataclass
class SubmitReport:
    """What a call of :func:`submit_sweep` did."""

    cluster: str
    submitted: list[str] = field(default_factory=list)  # job ids started or submitted
    done: list[str] = field(default_factory=list)  # already done before (left alone)
    active: list[str] = field(default_factory=list)  # pending or running elsewhere (left alone)
    failed: list[str] = field(default_factory=list)  # failed in this call (in-process and local clusters)
    succeeded: list[str] = field(default_factory=list)  # finished in this call (in-process and local clusters)
    blocked: dict[str, str] = field(default_factory=dict)  # not started: job id -> the dependency without a result
    cluster_job_ids: dict[str, str] = field(default_factory=dict)


def missing_need(job: Job, sweep_dir: Path) -> str | None:
    """The first job that ``job`` needs and that has no result yet, or None when it can run."""
    return next((dep for dep in job.needs.values() if read_result(Path(sweep_dir) / dep) is None), None)


def _block(job: Job, dep: str, report: SubmitReport, echo: Callable[[str], None]) -> None:
    report.blocked[job.id] = dep
    echo(f"  BLOCKED {job.id}  needs {dep}, which has no result")


def select_jobs(sweep: Sweep, patterns: Sequence[str] | None) -> list[Job]:
    """The jobs whose ids match any of the shell-style ``patterns`` (all jobs when none); a pattern matching no
    job is an error."""
    if not patterns:
        return list(sweep.jobs)
    chosen = []
    for pattern in patterns:
        hits = [j for j in sweep.jobs if fnmatchcase(j.id, pattern) or j.id == pattern]
        if not hits:
            raise UserError(f"sweep {sweep.name}: no job matches {pattern!r}")
        chosen.extend(h for h in hits if h not in chosen)
    return [j for j in sweep.jobs if j in chosen]


def submit_sweep(sweep: Sweep, sweep_dir: str | Path, cluster: str = "local", profile: ClusterProfile | None = None,
                 *, jobs: Sequence[str] | None = None, parallel: int | None = None, wait: bool = False,
                 pdb: bool = False, progress: bool = True, echo: Callable[[str], None] = print) -> SubmitReport:
    """Run or submit every job of ``sweep`` that has no result and is not pending or running (see the module
    docstring); ``jobs`` restricts it to ids matching those patterns."""
    if cluster not in CLUSTERS:
        raise UserError(f"cluster {cluster!r} is not one of {', '.join(CLUSTERS)}")
    sweep_dir = Path(sweep_dir).resolve()
    chosen = select_jobs(sweep, jobs)
    if cluster == "here":
        return _run_here(sweep, sweep_dir, chosen, profile, echo)
    with sweep_lock(sweep_dir):
        write_sweep(sweep, sweep_dir)
        report = SubmitReport(cluster)
        todo = []
        for st, job in zip(job_states(sweep, sweep_dir, chosen), chosen):
            if st.state == "done":
                report.done.append(job.id)
            elif st.state in ("pending", "running"):
                report.active.append(job.id)
            else:
                todo.append(job)
        if report.done or report.active:
            echo(f"sweep {sweep.name}: {len(report.done)} done, {len(report.active)} pending or running: "
                 f"{len(todo)} to run")
        if not todo:
            return report
        for job in todo:
            _retire_error(sweep_dir / job.id)
        base = profile or ClusterProfile(timeout_min=LOCAL_TIMEOUT_MIN if cluster == "local" else 60)
        profiles = {job.id: job_profile(job, base) for job in todo}  # every resource error before any start
        if cluster == "slurm":
            _submit_slurm(sweep, sweep_dir, todo, profiles, report, echo)
        elif cluster == "debug":
            _run_debug(sweep, sweep_dir, todo, profiles, report, pdb, echo)
        else:
            limit = parallel if parallel is not None else (profile.array_parallelism if profile else 1)
            if limit < 1:
                raise UserError(f"--parallel must be at least 1, got {limit}")
            _run_local(sweep, sweep_dir, todo, profiles, report, limit, progress, echo)
    if cluster == "slurm" and wait:
        wait_for(sweep, sweep_dir, report.submitted, progress=progress)
    return report


def _submission_record(cluster: str, **extra: Any) -> dict[str, Any]:
    record = {"cluster": cluster, "submitted": _now(), "host": socket.gethostname(), **extra}
    if isinstance(record.get("pid"), int):
        record["pid_start"] = process_start(record["pid"])
    return record


def _write_submission(job_dir: Path, record: dict[str, Any]) -> None:
    old = read_json(job_dir / SUBMISSION_FILE) or {}
    record["count"] = int(old.get("count", 0)) + 1
    atomic_write_json(job_dir / SUBMISSION_FILE, record)


def _retire_error(job_dir: Path) -> None:
    """Before a job is submitted again, keep the error of its earlier attempt as ``error.previous.json``: its
    state must come from the new submission."""
    if (job_dir / ERROR_FILE).is_file():
        os.replace(job_dir / ERROR_FILE, job_dir / PREVIOUS_ERROR_FILE)


def _make_job(sweep: Sweep, sweep_dir: Path, job: Job) -> SweepJob:
    return SweepJob(job.to_dict(), sweep_dir / job.id, sweep.name)


def _outcome(sweep_dir: Path, job: Job, report: SubmitReport, echo: Callable[[str], None]) -> None:
    record = read_result(sweep_dir / job.id)
    if record is not None:
        report.succeeded.append(job.id)
        echo(f"  done    {job.id}  {result_summary(record)}")
    else:
        report.failed.append(job.id)
        echo(f"  FAILED  {job.id}  {_error_summary(sweep_dir / job.id) or 'no result'}")


def _run_debug(sweep: Sweep, sweep_dir: Path, todo: list[Job], profiles: dict[str, ClusterProfile],
               report: SubmitReport, pdb: bool, echo: Callable[[str], None]) -> None:
    for job in todo:
        job_dir = sweep_dir / job.id
        dep = missing_need(job, sweep_dir)
        if dep is not None:
            _block(job, dep, report, echo)
            continue
        executor = make_executor("debug", job_dir / LOG_DIR, profiles[job.id])
        sjob = executor.submit(_make_job(sweep, sweep_dir, job))
        _write_submission(job_dir, _submission_record("debug", pid=os.getpid(), job_id=sjob.job_id,
                                                      log_folder=str(job_dir / LOG_DIR)))
        report.submitted.append(job.id)
        echo(f"running {job.id} (in this process)")
        try:
            if pdb:
                sjob.result()  # submitit's debug job: post-mortem debugger on an exception
            else:
                with _environ(sjob.environ):
                    sjob.submission().result()
        except Exception:  # recorded in the job's error.json; the next job runs
            pass
        _outcome(sweep_dir, job, report, echo)


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_local(sweep: Sweep, sweep_dir: Path, todo: list[Job], profiles: dict[str, ClusterProfile],
               report: SubmitReport, parallel: int, progress: bool, echo: Callable[[str], None]) -> None:
    from tqdm import tqdm

    queue = list(todo)
    active: dict[str, tuple[Job, Any]] = {}
    threads = local_threads(parallel)
    echo(f"running {len(todo)} job(s) on this machine, at most {parallel} at once"
         + (f", {threads} torch thread(s) each" if threads else ""))
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="job", disable=not progress, dynamic_ncols=True)
    try:
        while queue or active:
            for job in list(queue):
                if len(active) >= parallel:
                    break
                dep = missing_need(job, sweep_dir)
                if dep is not None and (dep in active or any(q.id == dep for q in queue)):
                    continue  # starts when its dependency has finished
                queue.remove(job)
                if dep is not None:
                    _block(job, dep, report, lambda m: bar.write(m) if progress else echo(m))
                    bar.update(1)
                    continue
                job_dir = sweep_dir / job.id
                executor = make_executor("local", job_dir / LOG_DIR, profiles[job.id])
                with _environ({**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}):
                    sjob = executor.submit(_make_job(sweep, sweep_dir, job))
                _write_submission(job_dir, _submission_record("local", job_id=sjob.job_id, pid=int(sjob.job_id),
                                                              log_folder=str(job_dir / LOG_DIR)))
                report.submitted.append(job.id)
                report.cluster_job_ids[job.id] = str(sjob.job_id)
                active[job.id] = (job, sjob)
            for job_id, (job, sjob) in list(active.items()):
                if sjob.done():
                    del active[job_id]
                    bar.update(1)
                    _outcome(sweep_dir, job, report, lambda m: bar.write(m) if progress else echo(m))
            if active:
                time.sleep(0.25)
    except KeyboardInterrupt:
        _stop_local(active, echo)
        raise
    finally:
        bar.close()


def local_threads(parallel: int) -> int | None:
    """Torch threads for each of ``parallel`` local jobs: the cores this process may use shared between them (each
    job would otherwise take every core, and ``parallel`` of them would slow each other down), or None when
    ``OMP_NUM_THREADS`` is set (the user's choice is inherited) or a single job runs at a time."""
    from xchannel.runtime import usable_cores

    if parallel <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, usable_cores() // parallel)


def _stop_local(active: dict[str, tuple[Job, Any]], echo: Callable[[str], None], grace_s: float = 30.0) -> None:
    """SIGTERM to the running local jobs (submitit's controller forwards it; training checkpoints and stops),
    then wait for them a little."""
    procs = [sjob._process for _, sjob in active.values() if getattr(sjob, "_process", None) is not None]
    for p in procs:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(Exception):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    if active:
        echo(f"stopped {len(active)} running job(s): {', '.join(active)}; run the sweep again to resume them")


def slurm_dependencies(job: Job, sweep_dir: Path, submitted: Mapping[str, str], waiting: Mapping[str, str],
                       later: set[str]) -> list[str] | str | None:
    """The SLURM job ids ``job`` must wait for (``afterok``), or, as a string, the dependency that blocks it, or
    None when it must wait for a job not submitted yet (``later``). ``submitted``: sweep job id -> SLURM id of
    this submission; ``waiting``: the same for jobs pending or running from an earlier one."""
    ids = []
    for dep in job.needs.values():
        if read_result(Path(sweep_dir) / dep) is not None:
            continue
        if dep in submitted or dep in waiting:
            ids.append(submitted.get(dep) or waiting[dep])
        elif dep in later:
            return None
        else:
            return dep
    return sorted(set(ids))


def dependency_parameters(ids: Sequence[str]) -> dict[str, str]:
    """``#SBATCH`` options that hold an array until the SLURM jobs ``ids`` have ended well (and cancel it if one
    of them failed)."""
    return {"dependency": "afterok:" + ":".join(ids), "kill_on_invalid_dep": "yes"} if ids else {}


def _submit_slurm(sweep: Sweep, sweep_dir: Path, todo: list[Job], profiles: dict[str, ClusterProfile],
                  report: SubmitReport, echo: Callable[[str], None]) -> None:
    """One job array per distinct resource request and set of dependencies, in waves: a job is submitted once the
    jobs it needs are (:func:`slurm_dependencies`)."""
    needed = {dep for job in todo for dep in job.needs.values()} - {job.id for job in todo}
    waiting = {st.id: st.cluster_job_id for st in job_states(sweep, sweep_dir, [sweep.job(d) for d in needed])
               if st.state in ("pending", "running") and st.cluster == "slurm" and st.cluster_job_id}
    submitted: dict[str, str] = {}
    left = list(todo)
    while left:
        groups: dict[tuple[str, tuple[str, ...]], list[Job]] = {}
        later = {job.id for job in left}
        for job in list(left):
            deps = slurm_dependencies(job, sweep_dir, submitted, waiting, later)
            if deps is None:
                continue
            left.remove(job)
            if isinstance(deps, str):
                _block(job, deps, report, echo)
                continue
            key = (json.dumps(to_dict(profiles[job.id]), sort_keys=True), tuple(deps))
            groups.setdefault(key, []).append(job)
        if not groups and left:  # what is left waits for jobs that were blocked
            for job in left:
                _block(job, next(d for d in job.needs.values() if d in report.blocked or d in later), report, echo)
            return
        for (_, deps), jobs in groups.items():
            _submit_array(sweep, sweep_dir, jobs, profiles[jobs[0].id], list(deps), report, echo)
            submitted.update({job.id: report.cluster_job_ids[job.id] for job in jobs})


def _submit_array(sweep: Sweep, sweep_dir: Path, jobs: list[Job], profile: ClusterProfile, deps: list[str],
                  report: SubmitReport, echo: Callable[[str], None]) -> None:
    """Submit ``jobs`` as one SLURM array with ``profile``, held until the SLURM jobs ``deps`` ended well."""
    folder = sweep_dir / SUBMITIT_DIR / "%j"
    if deps:
        profile = replace(profile, additional_parameters={**profile.additional_parameters,
                                                          **dependency_parameters(deps)})
    executor = make_executor("slurm", folder, profile)
    executor.update_parameters(name=f"{profile.job_name}-{sweep.name}")
    with executor.batch():
        sjobs = [executor.submit(_make_job(sweep, sweep_dir, job)) for job in jobs]
    array = sjobs[0].job_id.split("_")[0] if sjobs else "?"
    echo(f"submitted {len(jobs)} job(s) as SLURM array {array} (at most {profile.array_parallelism} at once; "
         f"{profile.nodes} node(s) x {profile.tasks_per_node} task(s), {profile.gpus_per_node} GPU(s) per node, "
         f"{profile.timeout_min} min)" + (f", after {', '.join(deps)}" if deps else ""))
    for job, sjob in zip(jobs, sjobs):
        job_dir = sweep_dir / job.id
        _write_submission(job_dir, _submission_record("slurm", job_id=str(sjob.job_id), log_folder=str(folder)))
        _link_logs(job_dir, sweep_dir / SUBMITIT_DIR / str(sjob.job_id))
        report.submitted.append(job.id)
        report.cluster_job_ids[job.id] = str(sjob.job_id)


def _link_logs(job_dir: Path, target: Path) -> None:
    """``job_dir/logs/<slurm id>`` -> the array task's submitit folder (relative, so the sweep folder can move)."""
    logs = job_dir / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    link = logs / target.name
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(target, logs))


def wait_for(sweep: Sweep, sweep_dir: Path, job_ids: Sequence[str], poll_s: float = 5.0,
             timeout_s: float | None = None, progress: bool = True) -> list[JobStatus]:
    """Poll until none of ``job_ids`` is pending or running (or ``timeout_s`` passes); returns their states."""
    from tqdm import tqdm

    jobs = [sweep.job(j) for j in job_ids]
    start = time.monotonic()
    bar = tqdm(total=len(jobs), desc=f"sweep {sweep.name}", unit="job", disable=not progress, dynamic_ncols=True)
    try:
        while True:
            states = job_states(sweep, sweep_dir, jobs)
            finished = sum(s.state in ("done", "failed") for s in states)
            bar.update(finished - bar.n)
            if finished == len(jobs) or (timeout_s is not None and time.monotonic() - start > timeout_s):
                return states
            time.sleep(poll_s)
    finally:
        bar.close()


def _run_here(sweep: Sweep, sweep_dir: Path, chosen: list[Job], profile: ClusterProfile | None,
              echo: Callable[[str], None]) -> SubmitReport:
    """Run the jobs in this process (every task of an ``srun`` step runs them together; see the module docstring)."""
    from xchannel.train.distributed import world_from_env

    world = world_from_env()
    report = SubmitReport("here")
    if world.is_main:
        with sweep_lock(sweep_dir):
            write_sweep(sweep, sweep_dir)
    for job in chosen:
        job_dir = sweep_dir / job.id
        if read_result(job_dir) is not None:
            report.done.append(job.id)
            continue
        kind = get_kind(job.kind)
        if not kind.distributed and not world.is_main:
            continue
        dep = missing_need(job, sweep_dir)
        if dep is not None:
            if world.is_main:
                _block(job, dep, report, echo)
            continue
        if world.is_main:
            _retire_error(job_dir)
            _write_submission(job_dir, _submission_record(
                "here", pid=os.getpid(), job_id=os.environ.get("SLURM_JOB_ID"), world_size=world.world_size,
                log_folder=None))
            echo(f"running {job.id} here" + (f" ({world.world_size} processes)" if world.distributed else ""))
        report.submitted.append(job.id)
        try:
            _make_job(sweep, sweep_dir, job)()
        except Exception:  # recorded in error.json by rank 0; go on with the next job
            pass
        if world.is_main:
            _outcome(sweep_dir, job, report, echo)
    return report


__all__ = ["CLUSTERS", "DEFAULT_ROOT", "JobStatus", "STATES", "SWEEP_FILE", "SubmitReport", "default_sweep_dir",
           "dependency_parameters", "error_tail", "format_status", "is_sweep_dir", "job_profile", "job_states",
           "load_sweep", "local_threads", "missing_need", "slurm_dependencies",
           "result_summary", "select_jobs", "submit_sweep", "sweep_lock", "tail_lines", "wait_for", "write_sweep"]
