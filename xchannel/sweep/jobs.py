"""Job kinds and the job that runs one of them, locally, in a SLURM array task, or in this process.

Job kinds
---------
A job kind is one entry of :data:`KINDS`: the dataclass its config is validated with (imported lazily, so a spec
that does not use a kind never imports its module), the function that runs it, whether it is a DistributedDataParallel
job (one process per GPU), and the config fields the sweep owns (``out``, ``progress``, ``resume``: every job writes
into its own folder). ``train`` runs :func:`xchannel.train.engine.train` with ``resume=True``, ``probe`` runs
:func:`xchannel.probe.run_probe`, ``pascal-cls``/``pascal-seg``/``pascal-det`` run
``xchannel.pascal.<task>.run_task``. A new kind is one :class:`JobKind` added with :func:`register`.

A kind may say, when a job is about to run, that it has nothing to compute (``skip``: a reason, or None): the job
then records ``{"status": "skipped", "reason": ...}`` as its result instead of running. ``probe`` skips colour
input to an encoder trained on gray L, whose colour version (conv1's ab weights zero) computes exactly the gray
features (:func:`probe_skip`); ``pascal-cls`` skips it where conv1 stays frozen (fc8, fc6-8:
:func:`classification_skip`).

Dependencies
------------
A job of a group with ``needs`` (:mod:`xchannel.sweep.spec`) holds ``sweep-job:<id>`` in a config key until it
runs; :func:`resolve_needs` then puts that job's run folder there (refusing if the job has no result yet).

The job folder
--------------
``SWEEP_DIR/<job id>/`` holds ``config.json`` (the job as the spec expands it), ``run/`` (the kind's own output:
checkpoints, logs, its result file), ``logs/`` (submitit's stdout/stderr), ``attempts.jsonl`` (one line per start:
host, time, SLURM restart count, the step it resumed from), ``error.json`` (the last failure) and, written
atomically and last, ``result.json``. A job with ``result.json`` is done and is never run again.

Preemption and time limits
--------------------------
:class:`SweepJob` is a submitit ``Checkpointable``. Submitit's job wrapper (``submitit.core.submission``) installs
its handler for the preemption signal (``USR2``; SLURM sends it ``signal_delay_s`` before the time limit, and
``scancel --signal=USR2`` sends it by hand) and makes SIGTERM a no-op. Its handler calls :meth:`SweepJob.checkpoint`,
dumps the returned submission over the job's pickle, runs ``scontrol requeue`` and exits: called as a signal
handler in the middle of a training step it would lose everything since the last periodic checkpoint. The
training engine instead checkpoints *at a step boundary* when SIGUSR1 or SIGTERM arrives (it installs its own
handlers while it trains) and returns with status ``"interrupted"``. :class:`PreemptionRelay` joins the two:

* ``USR2`` while the engine trains: the engine's SIGUSR1 handler is called (it sets its stop flag), the engine
  checkpoints at the end of the current step and returns; then submitit's handler runs outside any signal
  context: ``checkpoint()`` (all state is on disk, so it resubmits the same job and counts the requeue), requeue,
  exit. The requeued job resumes from that checkpoint.
* ``USR2`` while nothing is being trained (set-up, a probe, writing the result): submitit's handler runs at once.
* SIGTERM (``scancel``, ``scontrol requeue``, preemption with ``PreemptMode=REQUEUE``): the engine checkpoints at
  the step boundary and returns; the job then fails with :class:`JobInterrupted` (no result is written). If SLURM
  requeues it, the next start resumes from that checkpoint; otherwise re-running the sweep does.

Multi-GPU and multi-node
------------------------
When submitit starts several tasks for a job (``tasks_per_node`` x ``nodes``), every task runs :class:`SweepJob`;
the job exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` from submitit's
``JobEnvironment`` (rendezvous on the first node of the allocation, a port derived from the job id), which
:mod:`xchannel.train.distributed` reads. Only rank 0 writes ``attempts.jsonl``, ``error.json`` and ``result.json``.
Under ``srun`` inside an existing allocation (``--cluster here``) SLURM's own variables describe the world.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import submitit
from submitit.core.utils import DelayedSubmission

from xchannel import __version__
from xchannel.errors import UserError
from xchannel.utils.config import build_config, from_dict, merge, to_dict
from xchannel.utils.io import append_jsonl, atomic_write_json

# Files of a job folder.
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
ATTEMPTS_FILE = "attempts.jsonl"
SUBMISSION_FILE = "submission.json"
RUN_DIR = "run"
LOG_DIR = "logs"


class JobInterrupted(RuntimeError):
    """The job stopped on a signal after checkpointing; it resumes when it runs again."""


# --------------------------------------------------------------------------------------------------------------
# Job kinds


def _import(target: str, what: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise UserError(f"{what} needs {module}, which this installation of xchannel does not have") from None
        raise
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise UserError(f"{what} needs {target}, which does not exist") from None


@dataclass(frozen=True)
class JobKind:
    """One kind of job (see the module docstring).

    ``config`` and ``presets`` are ``"module:attribute"`` strings; ``presets`` names a mapping ``{name: [key=value
    overrides of the defaults]}`` (the PASCAL tasks' ``PRESETS``) or a function ``name -> config``. ``run(cfg, run_dir, progress)`` runs the job
    with the sweep-owned fields already set and returns its result dict; a result with ``status ==
    "interrupted"`` means the job checkpointed on a signal. ``resume_point(run_dir)`` says where a restart would
    begin (the training step of the newest checkpoint), for the attempt log. ``skip(cfg)`` says why a job has
    nothing to compute (None: run it)."""

    name: str
    help: str
    config: str
    run: Callable[[Any, Path, bool], dict[str, Any]]
    distributed: bool = False
    managed: tuple[str, ...] = ("out", "progress", "resume")
    presets: str | None = None
    resume_point: Callable[[Path], int | None] | None = None
    skip: Callable[[Any], str | None] | None = None

    def config_class(self) -> type:
        return _import(self.config, f"job kind {self.name!r}")

    def preset(self, name: str, where: str) -> dict[str, Any]:
        """The preset ``name`` of this kind as a config dict."""
        if self.presets is None:
            raise UserError(f"{where}: job kind {self.name!r} has no presets (remove 'preset')")
        try:
            factory = _import(self.presets, f"job kind {self.name!r}")
        except UserError as err:
            raise UserError(f"{where}: {err} (for 'preset: {name}')") from None
        try:
            if isinstance(factory, Mapping):  # a task's PRESETS: name -> key=value overrides of the defaults
                if name not in factory:
                    raise UserError(f"no preset {name!r} (presets: {', '.join(factory)})")
                return to_dict(build_config(self.config_class(), None, list(factory[name])))
            return to_dict(factory(str(name)))
        except UserError as err:
            raise UserError(f"{where}: job kind {self.name!r}, preset {name!r}: {err}") from None

    def build(self, config: dict[str, Any], where: str = "job config") -> Any:
        """The kind's config dataclass from a job config dict (``preset`` first, then the rest merged over it),
        checked strictly (unknown keys, wrong types) and by the dataclass's ``validate()`` when it has one."""
        data = dict(config)
        preset = data.pop("preset", None)
        base = self.preset(preset, where) if preset is not None else {}
        try:
            cls = self.config_class()
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        cfg = from_dict(cls, merge(base, data), where)
        if hasattr(cfg, "validate"):
            try:
                cfg.validate()
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
        return cfg


def _set_managed(cfg: Any, out: Path, progress: bool, resume: bool = True) -> None:
    """Point the kind's output at the job's run folder and set the other sweep-owned fields it has."""
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg.out = str(out)
    if "progress" in names:
        cfg.progress = progress
    if "resume" in names:
        cfg.resume = resume


def _run_train(cfg: Any, run_dir: Path, progress: bool) -> dict[str, Any]:
    from xchannel.train.engine import train

    cfg.out = str(run_dir)
    return train(cfg, resume=True, progress=progress)


def _train_resume_point(run_dir: Path) -> int | None:
    from xchannel.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir) if run_dir.is_dir() else []
    return found[0][0] if found else None


def _run_probe(cfg: Any, run_dir: Path, progress: bool) -> dict[str, Any]:
    from xchannel.probe import run_probe

    _set_managed(cfg, run_dir / "probe.json", progress)
    return run_probe(cfg)


def _colour_of_gray_network(cfg: Any) -> bool:
    """Whether a job's config gives colour input to a checkpoint that was trained on gray L."""
    from xchannel.features.encoders import load_encoder, parse_spec

    if cfg.input_mode != "color" or parse_spec(cfg.encoder)[0] != "checkpoint":
        return False
    geometry = getattr(cfg, "geometry", None)
    encoder = load_encoder(cfg.encoder, geometry=geometry) if geometry is not None else load_encoder(cfg.encoder)
    return encoder.input_mode == "gray"


def probe_skip(cfg: Any) -> str | None:
    """Why a probe job has nothing to compute, or None: colour input to a checkpoint trained on gray L (the
    colour network's conv1 has zero ab weights, so its features are the gray ones, and the gray probe stands for
    both, as in the paper's Fig. 7)."""
    if not _colour_of_gray_network(cfg):
        return None
    return ("colour input to a network trained on gray L computes the gray features exactly (conv1's ab weights "
            "are zero): the gray probe stands for both")


def classification_skip(cfg: Any) -> str | None:
    """Why a PASCAL classification job has nothing to compute, or None: colour input to a checkpoint trained on
    gray L when conv1 stays frozen (``layers`` fc8 or fc6-8). Its ab weights start at zero and never train, so the
    run repeats the gray run (``tests/test_pascal_cls.py`` checks that the scores agree to 1e-5); the paper's
    Table 2 prints the same fc8 and fc6-8 numbers for Ours (gray) and Ours (color). With ``layers: all`` the ab
    weights train and the colour run is its own."""
    if cfg.layers == "all" or not _colour_of_gray_network(cfg):
        return None
    return (f"colour input to a network trained on gray L with conv1 frozen (layers {cfg.layers}): its ab weights "
            "stay zero and the run repeats the gray run (the same scores to float rounding); the gray run stands for "
            "both")


def _pascal_runner(module: str) -> Callable[[Any, Path, bool], dict[str, Any]]:
    def run(cfg: Any, run_dir: Path, progress: bool) -> dict[str, Any]:
        task = _import(f"xchannel.pascal.{module}:run_task", f"PASCAL {module}")
        _set_managed(cfg, run_dir / f"{module}.json", progress)
        return task(cfg)

    run.__name__ = f"run_pascal_{module}"
    return run


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Add a job kind (its name must be new)."""
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


register(JobKind("train", "pretext training (xchannel.train.engine.train, resumed from the job's checkpoints)",
                 "xchannel.train.config:TrainConfig", _run_train, distributed=True, managed=("out",),
                 presets="xchannel.sweep.jobs:train_preset", resume_point=_train_resume_point))
register(JobKind("probe", "linear probes of a frozen encoder (xchannel.probe.run_probe; Fig. 7)",
                 "xchannel.probe.run:ProbeConfig", _run_probe, skip=probe_skip))
for _kind, _module, _what, _skip in (
        ("pascal-cls", "classification", "VOC2007 classification", classification_skip),
        ("pascal-seg", "segmentation", "segmentation (SBD -> VOC2011 seg11valid), FCN-32s", None),
        ("pascal-det", "detection", "VOC2007 detection, Fast R-CNN", None)):
    register(JobKind(_kind, f"{_what} fine-tuning (xchannel.pascal.{_module}.run_task; Table 2)",
                     f"xchannel.pascal.{_module}:Config", _pascal_runner(_module),
                     presets=f"xchannel.pascal.{_module}:PRESETS", skip=_skip))


def train_preset(name: str) -> Any:
    """A named training configuration of :mod:`xchannel.configs` (``demo-alexnet``, ...) as a TrainConfig."""
    from xchannel.configs import named_configs, resolve
    from xchannel.train.config import TrainConfig

    if name not in named_configs():
        raise UserError(f"no named training config {name!r} ({', '.join(named_configs())})")
    return build_config(TrainConfig, resolve(name))


def get_kind(name: str, where: str = "sweep") -> JobKind:
    if name not in KINDS:
        raise UserError(f"{where}: unknown job kind {name!r}; kinds: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def resource_fields() -> list[str]:
    """The cluster profile fields a group's ``resources`` may set."""
    from xchannel.sweep.cluster import ClusterProfile

    return [f.name for f in dataclasses.fields(ClusterProfile)]


def resolve_needs(config: dict[str, Any], needs: Mapping[str, str], sweep_dir: Path, where: str) -> dict[str, Any]:
    """``config`` with each key of ``needs`` (dotted) set to the run folder of the job it names, in ``sweep_dir``;
    a :class:`UserError` when that job has no result yet."""
    from xchannel.sweep.spec import expand_dotted

    out = dict(config)
    for key, dep_id in needs.items():
        if read_result(Path(sweep_dir) / dep_id) is None:
            raise UserError(f"{where} needs job {dep_id}, which has no result yet: run it first (the runners "
                            f"order jobs by their needs)")
        out = merge(out, expand_dotted({key: str(Path(sweep_dir) / dep_id / RUN_DIR)}, where))
    return out


def skipped(record: Mapping[str, Any] | None) -> bool:
    """Whether a job's result record says it was skipped (its kind found nothing to compute)."""
    result = (record or {}).get("result")
    return isinstance(result, Mapping) and result.get("status") == "skipped"


def machine_record() -> dict[str, Any]:
    """The machine a job ran on: host, CPU model and what torch reports of it, CPUs, threads, GPU."""
    import platform

    import torch

    from xchannel.runtime import cpu_capability

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "cpu": cpu_capability(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# --------------------------------------------------------------------------------------------------------------
# Reading a job folder


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written by the sweep, or None when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_result(job_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(job_dir) / RESULT_FILE)


def read_attempts(job_dir: Path) -> list[dict[str, Any]]:
    path = Path(job_dir) / ATTEMPTS_FILE
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return out


# --------------------------------------------------------------------------------------------------------------
# Signals: submitit's preemption handler <-> the training engine


class PreemptionRelay:
    """While a job runs, route submitit's preemption signal through the training engine (module docstring).

    Active only where submitit installed a handler for its preemption signal (in a submitit job process, main
    thread); elsewhere (debug executor, ``--cluster here``) it changes nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._sig: int | None = None
        self._submitit_handler: Any = None

    def __enter__(self) -> "PreemptionRelay":
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            sig = submitit.JobEnvironment._usr_sig()
        except RuntimeError:
            return self
        handler = signal.getsignal(sig)
        if callable(handler):
            self._sig, self._submitit_handler = sig, handler
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        engine_stop = signal.getsignal(signal.SIGUSR1)
        if callable(engine_stop) and self.signum is None:
            self.signum = signum
            print(f"xchannel sweep: caught {signal.Signals(signum).name}: checkpointing at the end of this step, "
                  f"then requeueing", file=sys.stderr, flush=True)
            engine_stop(signal.SIGUSR1, frame)
        elif self.signum is None:
            self._submitit_handler(signum, frame)

    def __exit__(self, *exc: Any) -> None:
        if self._sig is not None:
            signal.signal(self._sig, self._submitit_handler)

    def forward(self) -> None:
        """If a preemption signal was deferred, let submitit handle it now: checkpoint(), requeue, exit."""
        if self.signum is not None and self._submitit_handler is not None:
            signum, self.signum = self.signum, None
            self._submitit_handler(signum, None)


# --------------------------------------------------------------------------------------------------------------
# Distributed set-up from submitit's job environment


def _submitit_environment() -> Any | None:
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def export_distributed_env() -> tuple[int, int]:
    """For a job that submitit started as several tasks, export torch's rendezvous variables (unless they are
    set already) so that :mod:`xchannel.train.distributed` joins the process group; returns (rank, world size)."""
    from xchannel.train.distributed import world_from_env

    env = _submitit_environment()
    if env is not None and env.num_tasks > 1 and "RANK" not in os.environ:
        digits = re.sub(r"\D", "", str(env.raw_job_id)) or "0"
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank))
        os.environ.setdefault("MASTER_ADDR", env.hostnames[0] if env.cluster == "slurm" else "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(20000 + int(digits) % 20000))
    world = world_from_env()
    return world.rank, world.world_size


def _limit_threads() -> None:
    """Use the CPUs SLURM allocated to the task (``SLURM_CPUS_PER_TASK``) for torch's intra-op threads, unless
    ``OMP_NUM_THREADS`` says otherwise: by default torch takes every core of the node, and jobs sharing a node
    then slow each other down many times over."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, int(cpus)))


def _submitit_job_id() -> str | None:
    env = _submitit_environment()
    try:
        return None if env is None else str(env.job_id)
    except KeyError:
        return None


# --------------------------------------------------------------------------------------------------------------
# The job


class SweepJob(submitit.helpers.Checkpointable):
    """One sweep job as a submitit callable: ``SweepJob(job.to_dict(), job_dir, sweep_name)()``.

    Calling it runs the job's kind in ``job_dir/run`` (resuming from what is there), then writes
    ``job_dir/result.json`` atomically and returns the same record. A job whose result exists returns it at once.
    """

    def __init__(self, job: dict[str, Any], job_dir: str | Path, sweep: str = "") -> None:
        self.job = dict(job)
        self.job_dir = str(Path(job_dir).resolve())
        self.sweep = sweep
        self.requeues = 0  # times submitit checkpointed and requeued this job (kept in the resubmitted pickle)

    def __repr__(self) -> str:
        return f"SweepJob({self.job.get('id')!r})"

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on preemption / time-out: everything needed to resume is in the job's run folder
        (the training engine checkpointed before this is called), so the resubmission is the job itself."""
        self.requeues += 1
        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        job_dir = Path(self.job_dir)
        job_id = self.job["id"]
        kind = get_kind(self.job["kind"], f"job {job_id}")
        done = read_result(job_dir)
        if done is not None:
            return done
        rank, world_size = export_distributed_env() if kind.distributed else (0, 1)
        _limit_threads()
        main = rank == 0
        run_dir = job_dir / RUN_DIR
        started = time.time()
        attempts = read_attempts(job_dir)
        attempt = {"attempt": len(attempts) + 1, "started": started, "host": socket.gethostname(),
                   "pid": os.getpid(), "submitit_job_id": _submitit_job_id(), "requeues": self.requeues,
                   "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                   "world_size": world_size,
                   "resumed_from": kind.resume_point(run_dir) if kind.resume_point else None}
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            append_jsonl(job_dir / ATTEMPTS_FILE, attempt)
        relay = PreemptionRelay()
        try:
            config = resolve_needs(self.job["config"], self.job.get("needs") or {}, job_dir.parent, f"job {job_id}")
            cfg = kind.build(config, f"job {job_id}")
            reason = kind.skip(cfg) if kind.skip is not None else None
            if reason is not None:
                out = {"status": "skipped", "reason": reason}
            else:
                with relay:
                    out = kind.run(cfg, run_dir, sys.stderr.isatty())
            relay.forward()  # a deferred preemption: submitit checkpoints, requeues and exits here
            if isinstance(out, dict) and out.get("status") == "interrupted":
                raise JobInterrupted(f"job {job_id} stopped on a signal after checkpointing at step "
                                     f"{out.get('step')} of {out.get('steps')}; it resumes from there when it runs "
                                     f"again (SLURM requeue, or re-running the sweep)")
        except Exception as err:
            if main:
                atomic_write_json(job_dir / ERROR_FILE, {
                    "job": job_id, "attempt": attempt["attempt"], "error": type(err).__name__, "message": str(err),
                    "traceback": traceback.format_exc(), "host": attempt["host"], "time": time.time()})
            raise
        finished = time.time()
        record = {"job": {"id": job_id, "kind": kind.name, "tag": self.job.get("tag"),
                          "labels": self.job.get("labels", {}), "sweep": self.sweep,
                          "config_hash": self.job.get("config_hash"), "config": self.job["config"],
                          "attempts": attempt["attempt"], "requeues": self.requeues, "host": attempt["host"],
                          "world_size": world_size, "started": started, "finished": finished,
                          "seconds": round(finished - started, 3), "submitit_job_id": attempt["submitit_job_id"],
                          "needs": dict(self.job.get("needs") or {}), "machine": machine_record(),
                          "xchannel": __version__},
                  "result": out}
        if main:
            atomic_write_json(job_dir / RESULT_FILE, record)
            (job_dir / ERROR_FILE).unlink(missing_ok=True)
        return record


__all__ = ["ATTEMPTS_FILE", "CONFIG_FILE", "ERROR_FILE", "JobInterrupted", "JobKind", "KINDS", "LOG_DIR",
           "PreemptionRelay", "RESULT_FILE", "RUN_DIR", "SUBMISSION_FILE", "SweepJob", "classification_skip",
           "export_distributed_env",
           "get_kind", "machine_record", "probe_skip", "read_attempts", "read_json", "read_result", "register",
           "resolve_needs", "resource_fields", "skipped", "train_preset"]
