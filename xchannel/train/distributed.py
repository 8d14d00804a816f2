"""Process-group set-up for DistributedDataParallel under torchrun or SLURM.

The world is read from the environment: torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT``, or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` with the first host of
``SLURM_JOB_NODELIST`` as the rendezvous (through submitit's ``JobEnvironment`` when submitit launched the job, which
also works inside an existing ``salloc``/``sbatch`` allocation). One process per GPU; NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def world_from_env() -> World:
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:  # torchrun, or set up explicitly
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        try:  # submitit knows the job's layout, also for job arrays
            import submitit

            job = submitit.JobEnvironment()
            return World(job.global_rank, job.num_tasks, job.local_rank)
        except RuntimeError:
            return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return World()


def init_distributed(device: torch.device) -> World:
    """Join the process group when the environment describes more than one process."""
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return world
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _first_slurm_host()
    if "MASTER_PORT" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "0")
        os.environ["MASTER_PORT"] = str(20000 + int(job) % 20000)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size)
    return world


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` (first dimension, any count per process) of every process, concatenated in rank order;
    ``x`` itself outside a process group. Every process must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    most = int(max(int(c) for c in counts))
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts)])


def mean_over_processes(value: float, device: torch.device) -> float:
    """The mean of ``value`` over the processes of the group (``value`` itself outside one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
