"""Target 3: the training loader keeps ahead of the training step.

Workload: the loader that :func:`xchannel.train.engine.train` builds for the AlexNet run, unchanged: the embedded
data set's training images (JPEG, ``xchannel make-data``), decoded by :func:`xchannel.data.load_rgb` (with the
colour check of every image), ``RandomCropMirror(180)``, batches of 32, the resumable sampler and the default
number of worker processes (``DataConfig.workers``). The rate is sustained images/s after the first batch (worker
start-up is reported apart).

The baseline is the training step's rate measured in the same run (:mod:`benchmarks.perf.train_step`, the faster
precision); run alone, this benchmark measures a short bfloat16 training step itself.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.perf.common import Check, Settings, embedded_data, interleave, median, photo_crops, record, set_threads
from xchannel import runtime

NAME = "loader"
TITLE = "Training loader (JPEG decode, crop, mirror; default workers) vs the training step's images/s"


def loader_rate(train_dir: str, crop: int, batch: int, workers: int, batches: int) -> dict[str, float]:
    """Start-up seconds (first batch) and sustained images/s over the next ``batches`` batches."""
    from xchannel.data.images import RandomCropMirror
    from xchannel.train.distributed import World
    from xchannel.train.engine import ResumableSampler, SeededItems, _loader, open_images

    ds = open_images(train_dir, RandomCropMirror(crop))
    sampler = ResumableSampler(len(ds), batch, seed=0, world=World())
    t0 = time.perf_counter()
    it = iter(_loader(SeededItems(ds), batch, workers, sampler))
    next(it)
    t1 = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(it)["image"])
    t2 = time.perf_counter()
    del it
    return {"startup_seconds": t1 - t0, "images_per_s": images / (t2 - t1), "images": images}


def _step_rate(settings: Settings) -> float:
    """images/s of the AlexNet training step in the precision ``auto`` chooses here (when the train_step benchmark
    did not run before)."""
    from benchmarks.perf.train_step import build, steps

    width, batch, crop = settings.pick(1.0, 1.0, 0.125), settings.pick(32, 32, 2), settings.pick(180, 180, 64)
    precision = runtime.resolve_precision("auto", "cpu")
    task, model, optim = build(width, precision)
    s = steps(task, model, optim, photo_crops(batch, crop, seed=1), precision)
    return batch / median(interleave({"full": s["full"]}, settings.pick(3, 2, 1))["full"])


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    from xchannel.train.config import DataConfig

    set_threads(settings)
    started = time.perf_counter()
    train_dir = str(embedded_data(settings) / "train")
    crop, batch = settings.pick(180, 180, 64), settings.pick(32, 32, 4)
    batches = settings.pick(40, 15, 2)
    workers = DataConfig().workers
    prior = (context or {}).get("train_step")
    if prior is not None and prior.get("mode") == settings.mode:
        step = float(prior["figures"]["best_full_images_per_s"])
        step_source = "train_step benchmark, this run"
    else:
        step = _step_rate(settings)
        step_source = f"{runtime.resolve_precision('auto', 'cpu')} training step measured here"
    default = loader_rate(train_dir, crop, batch, workers, batches)
    single = loader_rate(train_dir, crop, batch, 0, max(1, batches // 3))
    figures = {"default_workers": workers, "loader": default, "loader_no_workers": single,
               "training_step_images_per_s": step, "training_step_source": step_source,
               "loader_over_step": default["images_per_s"] / step}
    checks = [Check(f"loader images/s ({workers} workers) / training step's", default["images_per_s"] / step, ">=",
                    1.5, baseline="training step (best precision)",
                    note=f"{default['images_per_s']:.0f} vs {step:.1f} images/s")]
    workload = {"data": "embedded data set (xchannel make-data), ImageNet-style training folder",
                "images_in_set": None, "crop": crop, "batch": batch, "timed_batches": batches, "workers": workers}
    from xchannel.data.images import ImageFolderDataset

    workload["images_in_set"] = len(ImageFolderDataset(train_dir))
    notes = ["The loader runs alone here; in training its worker processes share the CPU with the step."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)
