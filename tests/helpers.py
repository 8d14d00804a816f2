"""Helpers shared by several test modules: small embedded VOCdevkit trees, and waiting for a training run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from xchannel.data.synthetic import SyntheticSpec, make_dataset


def synthetic_voc(factory: pytest.TempPathFactory, *, voc_trainval: int, voc_test: int, size: int = 96,
                  voc2012: bool = False) -> Path:
    """A small embedded data set in a fresh temporary folder (2 ImageFolder classes of 2 + 1 images, the VOC trees
    with the given sizes); returns its ``VOCdevkit`` folder."""
    root = factory.mktemp("voc")
    make_dataset(root, SyntheticSpec(voc_trainval=voc_trainval, voc_test=voc_test, classes=2, train_per_class=2,
                                     val_per_class=1, size=size, voc2012=voc2012))
    return root / "VOCdevkit"


def wait_for_steps(run_dir: Path, n: int, timeout: float) -> None:
    """Wait until the training run in ``run_dir`` has logged ``n`` steps to its metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{metrics}: fewer than {n} steps after {timeout} s")
