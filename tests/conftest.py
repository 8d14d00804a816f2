"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER_SCRIPT = REPO / "slurm" / "local-cluster.sh"
# local-cluster.sh exits 3 when this machine cannot host the cluster at all (not root, no apt-get, packages
# not installable): only then are SLURM tests skipped; any other failure is an error.
_CANNOT_HOST = 3


@dataclass(frozen=True)
class LocalSlurmCluster:
    """The running one-node SLURM cluster of ``slurm/local-cluster.sh``."""

    state_dir: Path
    slurm_conf: Path
    started_here: bool  # False: it was already running and is left running
    start_seconds: float  # how long `local-cluster.sh start` took (0 when it was already running)

    def command(self, *args: str, timeout: float = 60) -> str:
        """Run a SLURM client command (``squeue``, ``sacct``, ``scancel``, ``scontrol``...) on this cluster;
        return its stdout, raise ``CalledProcessError`` (with stderr) if it fails."""
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=True,
                              env=dict(os.environ, SLURM_CONF=str(self.slurm_conf)))
        return proc.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """Start (or reuse) the local SLURM cluster for the session; stop it at the end if this fixture started it
    (set ``XCHANNEL_SLURM_KEEP=1`` to leave it running for the next session).

    While the fixture is active ``SLURM_CONF`` points at the cluster's configuration, so submitit's calls to
    ``sbatch``/``sacct``/``scancel`` reach it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the local SLURM cluster needs Linux")
    state_dir = Path(os.environ.get("XCHANNEL_SLURM_DIR", "/tmp/xchannel-slurm"))
    env = dict(os.environ, XCHANNEL_SLURM_DIR=str(state_dir))
    script = ["bash", str(LOCAL_CLUSTER_SCRIPT)]
    status = subprocess.run([*script, "status"], env=env, capture_output=True, text=True, timeout=120)
    started_here, start_seconds = False, 0.0
    if status.returncode != 0:
        t0 = time.monotonic()
        proc = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=1200)
        start_seconds = time.monotonic() - t0
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode == _CANNOT_HOST:
            pytest.skip(f"this machine cannot host the local SLURM cluster: {output}")
        if proc.returncode != 0:
            pytest.fail(f"slurm/local-cluster.sh start failed (exit {proc.returncode}):\n{output}", pytrace=False)
        started_here = True
    cluster = LocalSlurmCluster(state_dir=state_dir, slurm_conf=state_dir / "etc" / "slurm.conf",
                                started_here=started_here, start_seconds=start_seconds)
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(cluster.slurm_conf))
    try:
        yield cluster
    finally:
        patch.undo()
        if started_here and not os.environ.get("XCHANNEL_SLURM_KEEP"):
            subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The sweeps' tiny data set: ImageFolder (2 classes x 8 train / 4 val), VOC2007 (8 trainval / 8 test), VOC2011,
    VOC2012 and SBD trees of 64 px images (``xchannel.data.synthetic.make_dataset``). Read only."""
    from xchannel.data.synthetic import SyntheticSpec, make_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root, SyntheticSpec(classes=2, train_per_class=8, val_per_class=4, voc_trainval=8, voc_test=8,
                                     seg_val=8, size=64), overwrite=True)
    return root


@pytest.fixture
def one_thread(monkeypatch):
    """Jobs (and in-process runs) on one thread each: bit-identical results across processes, no oversubscription."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
