"""Target 2: the AlexNet cross-channel training step, with its targets, against the bare network.

Workload: the pretext AlexNet (Sec. 3.2; CaffeNet layers with BatchNorm, fully convolutional, full width), a
batch of 32 crops of 180 x 180 px (uint8 RGB, cut from real photographs), Adam, as the training engine runs it.

* ``full`` step: everything :func:`xchannel.train.engine.train` does per batch: ``ColorizationTask.prepare``
  (L of the crops), the forward pass, the targets (ab of the head's 12 x 12 pixels, soft encoding, rebalancing
  weights, gray mask), the loss, the backward pass and the Adam update.
* ``bare`` step, the baseline: the forward pass on a precomputed L, the same loss on precomputed targets, the
  backward pass and the Adam update.

The target is full >= 0.9 x bare in images/s (the target pipeline costs at most 10 %), in float32 and, on a
machine with native bfloat16 (:mod:`xchannel.runtime`), under bfloat16 autocast; where bfloat16 is emulated its
row says "not native here" (a ratio of two emulated steps says nothing about the pipeline, and each takes ~20x
as long). The FLOP rate of each step (forward + backward, counted by ``FlopCounterMode``) is reported
against this machine's matmul peak in the same precision, measured in the same run.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.perf.common import (NOT_NATIVE, Check, Settings, bf16_native, interleave, matmul_peak, median,
                                    photo_crops, record, set_threads, stats)
from xchannel import runtime
from xchannel.pretext.losses import rebalanced_cross_entropy

NAME = "train_step"
TITLE = "AlexNet cross-channel training step (batch 32 x 180 px, targets included) vs the bare network"
PRECISIONS = ("fp32", "bf16")


def _autocast(precision: str):
    return runtime.autocast("cpu", precision)


def build(width: float, precision: str, seed: int = 0):
    """(task, model, optimizer) as the engine builds them for the AlexNet colorization run."""
    from xchannel.pretext.colorization import ColorizationTask
    from xchannel.train.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name, cfg.model.width = "alexnet", width
    cfg.precision = precision
    torch.manual_seed(seed)
    task = ColorizationTask(cfg, torch.device("cpu"))
    model = task.build_model().train()
    optim = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)
    return task, model, optim


def steps(task, model, optim, images: torch.Tensor, precision: str) -> dict[str, Any]:
    """The two timed steps (see the module docstring) and the precomputed inputs of the bare one."""
    pre = task.prepare({"image": images})
    L = pre.L
    with torch.no_grad():
        out_hw = tuple(model(L[:1]).shape[-2:])
    ab = pre.ab_at(*task.head_pixels(model), out_hw)
    idx, wts, v = task.targets(ab)
    mask = pre.has_color

    def update(loss: torch.Tensor) -> float:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.item()

    def full() -> float:
        batch = task.prepare({"image": images})
        with _autocast(precision):
            loss = task.loss(model, batch)["ce"]
        return update(loss)

    def bare() -> float:
        with _autocast(precision):
            loss = rebalanced_cross_entropy(model(L), idx, wts, v, mask)
        return update(loss)

    def data() -> None:  # the full step's extra work alone: L, ab at the head's pixels, targets, gray mask
        batch = task.prepare({"image": images})
        batch.L
        task.targets(batch.ab_at(*task.head_pixels(model), out_hw))
        batch.has_color

    return {"full": full, "bare": bare, "data": data, "L": L, "targets": (idx, wts, v, mask)}


def step_flops(model, L: torch.Tensor, targets: tuple, precision: str) -> int:
    """FLOPs of one forward + backward pass (convolutions and matmuls), counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        with _autocast(precision):
            loss = rebalanced_cross_entropy(model(L), *targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    set_threads(settings)
    started = time.perf_counter()
    width, batch, crop = settings.pick(1.0, 1.0, 0.125), settings.pick(32, 32, 2), settings.pick(180, 180, 64)
    repeats = settings.pick(5, 3, 1)
    images = photo_crops(batch, crop, seed=1)
    measured = [p for p in PRECISIONS if p != "bf16" or bf16_native()]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(dtypes[p], n=settings.pick(2048, 2048, 256)) for p in measured}
    figures: dict[str, Any] = {"matmul_peak_gflops": peaks}
    checks = []
    for precision in PRECISIONS:
        if precision not in measured:
            figures[precision] = {"measured": False, "why": f"{NOT_NATIVE}: {runtime.bf16_support('cpu').reason}"}
            checks.append(Check.not_measured(f"{precision}: images/s, full step / bare", ">=", 90.0,
                                             f"{NOT_NATIVE} ({runtime.bf16_support('cpu').reason})", unit="%",
                                             baseline="bare forward + backward, precomputed targets"))
            continue
        task, model, optim = build(width, precision)
        s = steps(task, model, optim, images, precision)
        flops = step_flops(model, s["L"], s["targets"], precision)
        t = interleave({"full": s["full"], "bare": s["bare"]}, repeats, warmup=1)
        full_s, bare_s = median(t["full"]), median(t["bare"])
        # rounds run full and bare back to back: the median of the per-round ratios cancels slow drifts
        paired = median([b / f for f, b in zip(t["full"], t["bare"])])
        data_s = median(interleave({"data": s["data"]}, settings.pick(15, 7, 1), warmup=1)["data"])
        fig = {"seconds": {k: stats(v) for k, v in t.items()},
               "images_per_s": {"full": batch / full_s, "bare": batch / bare_s},
               "full_over_bare": paired,
               "target_pipeline_seconds": data_s,
               "target_pipeline_share_of_full_step": data_s / full_s,
               "gflop_per_step": flops / 1e9,
               "achieved_gflops": {"full": flops / full_s / 1e9, "bare": flops / bare_s / 1e9},
               "fraction_of_matmul_peak": {"full": flops / full_s / 1e9 / peaks[precision],
                                           "bare": flops / bare_s / 1e9 / peaks[precision]}}
        figures[precision] = fig
        checks.append(Check(f"{precision}: images/s, full step / bare", 100.0 * paired, ">=", 90.0,
                            unit="%", baseline="bare forward + backward, precomputed targets",
                            note=f"{batch / full_s:.2f} vs {batch / bare_s:.2f} images/s; the target pipeline "
                                 f"alone takes {1e3 * data_s:.0f} ms ({100 * data_s / full_s:.1f}% of the step); "
                                 f"{100 * fig['fraction_of_matmul_peak']['full']:.0f}% of the {precision} "
                                 f"matmul peak ({peaks[precision]:.0f} GFLOP/s)"))
    best = max(figures[p]["images_per_s"]["full"] for p in measured)
    figures["best_full_images_per_s"] = best
    figures["auto_precision"] = runtime.resolve_precision("auto", "cpu")
    workload = {"model": f"alexnet (pretext geometry, width {width})", "batch": batch, "crop": crop,
                "optimizer": "Adam (the paper's betas and weight decay)", "precisions": measured,
                "repeats": repeats, "channels_last": False}
    notes = ["FLOPs count convolutions and matmuls of the forward and backward passes (FlopCounterMode); the "
             "matmul peak is an n x n @ n x n product in the same precision, measured at the start of this run.",
             "full_over_bare is the median over rounds of bare/full seconds (each round runs both back to back); "
             "target_pipeline_seconds times the full step's extra work alone (L, ab at the head, targets, mask)."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)
