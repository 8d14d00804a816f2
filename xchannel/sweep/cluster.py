"""Cluster profiles and the submitit executors built from them.

A *cluster profile* (``slurm/*.yaml``) says where and with what resources jobs run: partition, account, QOS,
nodes x tasks x CPUs x GPUs, memory, time limit, node constraint, extra ``#SBATCH`` options and how many array
tasks may run at once. It is loaded strictly (:func:`load_profile`: an unknown key is an error naming it) and
turned into a submitit executor by :func:`make_executor` for one of three kinds:

``"slurm"``
    a real SLURM cluster (this machine's one-node cluster from ``slurm/local-cluster.sh``, or a real one); every
    profile field is used. The mapping onto submitit's ``AutoExecutor`` parameters, and the ``#SBATCH`` line
    each ends up as::

        partition             -> slurm_partition              --partition
        account               -> slurm_account                --account
        qos                   -> slurm_qos                    --qos
        nodes                 -> nodes                        --nodes
        tasks_per_node        -> tasks_per_node               --ntasks-per-node
        cpus_per_task         -> cpus_per_task                --cpus-per-task
        gpus_per_node (> 0)   -> gpus_per_node                --gpus-per-node
        mem_gb                -> mem_gb                       --mem=<N>GB
        timeout_min           -> timeout_min                  --time
        constraint            -> slurm_constraint             --constraint
        exclude               -> slurm_exclude                --exclude
        array_parallelism     -> slurm_array_parallelism      --array=0-<n-1>%<parallelism>
        signal_delay_s        -> slurm_signal_delay_s         --signal=USR2@<s>
        additional_parameters -> slurm_additional_parameters  --<key>=<value> for each entry
        setup                 -> slurm_setup                  shell lines run before ``srun``
        job_name              -> name                         --job-name
        max_num_timeout, python -> SlurmExecutor(max_num_timeout=, python=)

    Unset optional fields (``None``, ``gpus_per_node: 0``) add no ``#SBATCH`` line, so the cluster's defaults
    apply.

``"local"``
    subprocesses on this machine (submitit's ``LocalExecutor``): the same job code, no scheduler. Uses
    ``tasks_per_node``, ``gpus_per_node``, ``timeout_min``, ``setup``, ``max_num_timeout`` and ``python``
    (submitit's local executor signals USR2 30 s before the time limit); scheduler-only fields (partition, account, qos, memory, constraint, ...) do not apply.
    A profile with ``nodes > 1`` is refused: one machine is one node.

``"debug"``
    in this process, one job after the other (submitit's ``DebugExecutor``): for stepping through job code
    with a debugger. Resources do not apply.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

from xchannel.errors import UserError
from xchannel.utils.config import build_config

ExecutorKind = Literal["local", "debug", "slurm"]
EXECUTOR_KINDS: tuple[str, ...] = ("local", "debug", "slurm")

# ``#SBATCH`` options that a profile field already sets, or that submitit itself manages (output/error paths
# and the array range are how it finds results): an ``additional_parameters`` entry for one of them would
# silently override the field or break result collection, so it is refused.
_RESERVED_SBATCH_OPTIONS: dict[str, str] = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "cpus-per-task": "cpus_per_task",
    "gpus-per-node": "gpus_per_node",
    "mem": "mem_gb",
    "time": "timeout_min",
    "constraint": "constraint",
    "exclude": "exclude",
    "signal": "signal_delay_s",
    "job-name": "job_name",
    "array": "array_parallelism (submitit sets --array from the number of tasks)",
    "output": "(submitit's job folder: it reads results and logs from there)",
    "error": "(submitit's job folder: it reads results and logs from there)",
}


@dataclass
class ClusterProfile:
    """Where and with what resources jobs run. Fields left at ``None`` use the cluster's defaults."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None
    timeout_min: int = 60
    constraint: str | None = None
    exclude: str | None = None
    array_parallelism: int = 256
    # Seconds before the time limit at which SLURM sends USR2, so submitit can checkpoint and requeue the job.
    signal_delay_s: int = 90
    # How many times a job that hit its time limit (or was preempted) is requeued by submitit's checkpointing.
    max_num_timeout: int = 3
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    job_name: str = "xchannel"
    # Interpreter on the compute nodes; None: this process's interpreter (same virtual env on a shared disk).
    python: str | None = None

    def validate(self, where: str = "cluster profile") -> None:
        """Raise :class:`UserError` naming ``where`` and the field if a value cannot describe a real job."""
        positive = {"nodes": self.nodes, "tasks_per_node": self.tasks_per_node,
                    "cpus_per_task": self.cpus_per_task, "timeout_min": self.timeout_min,
                    "array_parallelism": self.array_parallelism}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"{where}: {name} must be at least 1, got {value}")
        for name, value in {"gpus_per_node": self.gpus_per_node, "signal_delay_s": self.signal_delay_s,
                            "max_num_timeout": self.max_num_timeout}.items():
            if value < 0:
                raise UserError(f"{where}: {name} must be >= 0, got {value}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise UserError(f"{where}: mem_gb must be positive (or null for the cluster default), got {self.mem_gb}")
        if self.signal_delay_s >= self.timeout_min * 60:
            raise UserError(f"{where}: signal_delay_s ({self.signal_delay_s} s) must be shorter than the time "
                            f"limit timeout_min={self.timeout_min} ({self.timeout_min * 60} s)")
        if not self.job_name.strip():
            raise UserError(f"{where}: job_name must not be empty")
        for key, value in self.additional_parameters.items():
            option = str(key).replace("_", "-")
            if option in _RESERVED_SBATCH_OPTIONS:
                raise UserError(f"{where}: additional_parameters[{key!r}] is set by the profile field "
                                f"{_RESERVED_SBATCH_OPTIONS[option]}; set it there instead")
            if not isinstance(value, (str, int, float, bool)):
                raise UserError(f"{where}: additional_parameters[{key!r}] must be a string, number or true, "
                                f"got {value!r}")
        for i, line in enumerate(self.setup):
            if not isinstance(line, str):
                raise UserError(f"{where}: setup[{i}] must be a shell command line (a string), got {line!r}")


def load_profile(path: str | Path, overrides: list[str] = ()) -> ClusterProfile:
    """Read a cluster profile from YAML (strict: unknown or duplicate keys and wrong types are errors that name
    the file and the key), apply ``key=value`` overrides, and validate it."""
    profile = build_config(ClusterProfile, path, list(overrides))
    profile.validate(where=str(path))
    return profile


def executor_parameters(kind: ExecutorKind, profile: ClusterProfile) -> tuple[dict[str, Any], dict[str, Any]]:
    """The submitit ``AutoExecutor`` arguments for ``profile`` on ``kind``: ``(constructor_kwargs,
    update_parameters_kwargs)``. This is the whole mapping (see the module docstring); :func:`make_executor`
    applies it. Pure: needs no cluster."""
    _check_kind(kind)
    profile.validate()
    if kind == "debug":
        return {}, {"name": profile.job_name, "timeout_min": profile.timeout_min}
    ctor: dict[str, Any] = {f"{kind}_max_num_timeout": profile.max_num_timeout}
    if profile.python is not None:
        ctor[f"{kind}_python"] = profile.python
    params: dict[str, Any] = {
        "name": profile.job_name,
        "timeout_min": profile.timeout_min,
        "tasks_per_node": profile.tasks_per_node,
    }
    if profile.gpus_per_node > 0:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.setup:
        params[f"{kind}_setup"] = list(profile.setup)
    if kind == "local":
        if profile.nodes > 1:
            raise UserError(f"cluster profile asks for nodes={profile.nodes}, but kind 'local' runs on this "
                            f"one machine: use kind 'slurm' or set nodes=1")
        return ctor, params
    params.update(nodes=profile.nodes, cpus_per_task=profile.cpus_per_task,
                  slurm_array_parallelism=profile.array_parallelism,
                  slurm_signal_delay_s=profile.signal_delay_s)
    if profile.mem_gb is not None:
        params["mem_gb"] = profile.mem_gb
    optional = {"slurm_partition": profile.partition, "slurm_account": profile.account,
                "slurm_qos": profile.qos, "slurm_constraint": profile.constraint,
                "slurm_exclude": profile.exclude}
    params.update({k: v for k, v in optional.items() if v is not None})
    if profile.additional_parameters:
        params["slurm_additional_parameters"] = dict(profile.additional_parameters)
    return ctor, params


def make_executor(kind: ExecutorKind, folder: str | Path, profile: ClusterProfile | None = None) -> submitit.Executor:
    """A submitit executor of ``kind`` ("local", "debug" or "slurm") writing job files under ``folder`` (may
    contain ``%j`` for the job id), with ``profile``'s resources (default: :class:`ClusterProfile()`).

    Jobs submitted with it are ordinary submitit jobs: ``executor.submit(fn, *args)``, ``executor.map_array``,
    ``with executor.batch(): ...``; ``job.result()`` returns the value or raises ``FailedJobError`` carrying
    the job's traceback."""
    profile = profile if profile is not None else ClusterProfile()
    ctor, params = executor_parameters(kind, profile)
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise UserError("kind 'slurm' needs SLURM's client commands (sbatch, srun, sacct) on PATH: start this "
                        "machine's cluster with `slurm/local-cluster.sh start`, or use kind 'local'")
    executor = submitit.AutoExecutor(folder=Path(folder), cluster=kind, **ctor)
    executor.update_parameters(**params)
    return executor


def _check_kind(kind: str) -> None:
    if kind not in EXECUTOR_KINDS:
        raise UserError(f"executor kind {kind!r} is not one of {', '.join(map(repr, EXECUTOR_KINDS))}")


def probe_job() -> dict[str, str]:
    """A job that reports where it ran: host, interpreter and the SLURM/CUDA variables of its environment.

    Submit it to check a profile end to end (``make_executor("slurm", folder, profile).submit(probe_job)``):
    the result shows the job id, partition, account, allocated CPUs/GPUs and restart count SLURM gave it."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION",
            "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS", "SLURM_JOB_NUM_NODES", "SLURM_NTASKS", "SLURM_CPUS_PER_TASK",
            "SLURM_GPUS_ON_NODE", "SLURM_RESTART_COUNT", "CUDA_VISIBLE_DEVICES", "SUBMITIT_EXECUTOR")
    info = {k: os.environ[k] for k in keys if k in os.environ}
    info["hostname"] = socket.gethostname()
    info["python"] = sys.executable
    return info
