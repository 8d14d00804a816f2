"""Helpers shared by several test modules: small embedded VOCdevkit trees, small image folders, the tiny training
settings of every pretext task, and waiting for a training run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xchannel.data.synthetic import SyntheticSpec, make_dataset


def synthetic_voc(factory: pytest.TempPathFactory, *, voc_trainval: int, voc_test: int, size: int = 96,
                  voc2012: bool = False) -> Path:
    """A small embedded data set in a fresh temporary folder (2 ImageFolder classes of 2 + 1 images, the VOC trees
    with the given sizes, VOC2011 with ``voc_trainval`` segmentation val images); returns its ``VOCdevkit``
    folder."""
    root = factory.mktemp("voc")
    make_dataset(root, SyntheticSpec(voc_trainval=voc_trainval, voc_test=voc_test, seg_val=voc_trainval, classes=2,
                                     train_per_class=2, val_per_class=1, size=size, voc2012=voc2012))
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


def write_image_folder(root: Path, n_per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """A small ImageFolder of coloured discs and bars on varied backgrounds (two classes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for cls in ("disc", "bar"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            bg = rng.uniform(60, 200, 3)
            img = np.ones((size, size, 3)) * bg + rng.normal(0, 8, (size, size, 3))
            cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size / 4) ** 2) if cls == "disc" else (abs(yy - cy) < size / 8)
            colour = [(220, 30, 30), (30, 200, 40), (230, 210, 20)][rng.integers(3)] if cls == "disc" else (40, 60, 220)
            img[mask] = colour
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / cls / f"{i:03d}.jpg", quality=95)
    return root


#: Config sections that make each pretext task tiny enough for tests on 2 CPU cores (merged over a test's base
#: config, one level deep). Tasks with on-device randomness use it, so resume tests cover their generator.
TINY_TASKS: dict[str, dict] = {
    "colorization": {"model": {"name": "alexnet", "width": 0.125}},
    "rotation": {"model": {"name": "alexnet", "width": 0.0625}, "data": {"crop": 227},
                 "pretext": {"all_four": False}},
    "supervised": {"model": {"name": "alexnet", "width": 0.0625}, "data": {"crop": 227}},
    "autoencoder": {"model": {"name": "alexnet", "width": 0.125}, "pretext": {"denoise": 0.5}},
    "splitbrain": {"model": {"name": "alexnet", "width": 0.125}},
    "jigsaw": {"model": {"name": "alexnet", "width": 0.125}, "data": {"crop": 96},
               "pretext": {"tile": 24, "permutations": 10}},
    "context": {"model": {"name": "alexnet", "width": 0.125}, "data": {"crop": 96},
                "pretext": {"patch": 24, "jitter": 2}},
    "instance": {"model": {"name": "alexnet", "width": 0.0625}, "data": {"crop": 227}, "pretext": {"negatives": 16}},
}


def with_task(base: dict, task: str) -> dict:
    """``base`` (a training config dict) set up for the tiny version of ``task``."""
    out = {**base, "task": task}
    for key, value in TINY_TASKS[task].items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out
