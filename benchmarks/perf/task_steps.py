"""Every pretext task's training step against its bare network, one row per task.

Workload per task: the network its ``demo``/``imagenet`` configs train (the AlexNet backbone and the task's heads,
full width in the full setting), a batch of crops of real photographs (uint8 RGB; 180 px for the dense tasks,
227 px for the image-level ones and instance discrimination, 255 px for jigsaw, 288 px for context prediction: the
photographs' smallest side is 300 px, so its patches are 64 px with 32 px gaps, the paper's 96 / 48 scaled by 2/3),
fp32, the optimiser the task's full-scale config uses (instance discrimination: NCE with K = 4096 against a bank of
100,000 images; the bank's size changes only its memory).

* ``full`` step: what :func:`xchannel.train.engine.train` does per batch: ``task.prepare`` (colour conversion,
  the task's transforms: rotations, dropped pixels, tiles, colour dropping, negatives ...; its seeded generator),
  ``task.loss`` (forward pass, targets, loss), the backward pass, the update and ``task.after_step`` (the memory
  bank's update).
* ``bare`` step, the baseline: the forward pass on the precomputed input, the same loss on precomputed targets,
  the backward pass and the update.

The target is full >= 0.9 x bare in images/s for every task (the task's data and target work costs at most 10 %).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.perf.common import Check, Settings, interleave, median, photo_crops, record, set_threads
from xchannel.pretext import TASKS, get_task
from xchannel.pretext.base import step_generator
from xchannel.train.config import TrainConfig
from xchannel.train.engine import build_optimizer, total_loss
from xchannel.utils.config import build_config

NAME = "task_steps"
TITLE = "Each pretext task's training step (inputs, targets, loss, update) vs its bare network"
#: task -> (crop, config overrides of its full-scale training)
WORKLOADS: dict[str, tuple[int, list[str]]] = {
    "colorization": (180, []),
    "rotation": (227, ["optim.name=sgd", "optim.nesterov=true", "optim.lr=0.1"]),
    "supervised": (227, ["optim.name=sgd", "optim.lr=0.01", "pretext.classes=1000"]),
    "autoencoder": (180, ["pretext.denoise=0.5"]),
    "splitbrain": (180, []),
    "jigsaw": (255, ["optim.name=sgd", "optim.lr=0.01", "pretext.permutations=1000"]),
    "context": (288, ["optim.name=sgd", "optim.lr=0.0224", "optim.momentum=0.0", "optim.weight_decay=0.0",
                      "pretext.patch=64"]),
    "instance": (227, ["optim.name=sgd", "optim.lr=0.03", "optim.weight_decay=1e-4"]),
}
#: task -> (crop, overrides) of the smoke setting, where the others' crops are 64 px (a 3 x 3 grid needs more)
SMOKE: dict[str, tuple[int, list[str]]] = {
    "jigsaw": (96, ["pretext.tile=24", "pretext.permutations=10"]),
    "context": (96, ["pretext.patch=24", "pretext.jitter=2"]),
}
#: training-set size the stateful tasks are told (instance discrimination's memory bank)
BANK_IMAGES = 100_000


def _bare_loss(task, model, pre) -> Callable[[], dict[str, torch.Tensor]]:
    """The network and the task's loss on the precomputed input and targets of ``pre``."""
    if task.name == "colorization":
        from xchannel.pretext.losses import rebalanced_cross_entropy

        with torch.no_grad():
            out_hw = tuple(model(pre.L[:1]).shape[-2:])
        targets = task.targets(pre.ab_at(*task.head_pixels(model), out_hw))
        L, mask = pre.L, pre.has_color
        return lambda: {"ce": rebalanced_cross_entropy(model(L), *targets, mask)}
    if task.name == "splitbrain":
        with torch.no_grad():
            targets = {n: t for n, (_, t) in task.outputs_and_targets(model, pre).items()}
        inputs, keep = {"L": pre.L, "ab": pre.ab}, pre.has_color.view(-1, 1, 1).float()
        return lambda: {n: (F.cross_entropy(o, targets[n], reduction="none") * keep).mean()
                        for n, o in model(inputs).items()}
    return lambda: task.loss(model, pre)  # prepare() made every input and target: the loss is the network's


def build(task_name: str, width: float, overrides: list[str]):
    cfg = build_config(TrainConfig, None, [f"task={task_name}", "model.name=alexnet", f"model.width={width}",
                                           *overrides])
    torch.manual_seed(0)
    task = get_task(task_name)(cfg, torch.device("cpu"))
    task.set_training_data(BANK_IMAGES, [0] * BANK_IMAGES)
    model = task.build_model().train()
    return task, model, build_optimizer(cfg, model)


def steps(task, model, optim, images: torch.Tensor) -> dict[str, Callable[[], float]]:
    batch = {"image": images, "label": torch.arange(images.shape[0]) % 10, "index": torch.arange(images.shape[0])}
    pre = task.prepare(batch, step_generator(0, 0, 0, torch.device("cpu")))
    bare_loss = _bare_loss(task, model, pre)

    def update(losses: dict[str, torch.Tensor]) -> float:
        loss = total_loss(losses)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.item()

    step = iter(range(1 << 30))

    def full() -> float:
        b = task.prepare(batch, step_generator(0, next(step), 0, torch.device("cpu")))
        loss = update(task.loss(model, b))
        task.after_step(b)
        return loss

    return {"full": full, "bare": lambda: update(bare_loss())}


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    set_threads(settings)
    started = time.perf_counter()
    width, batch = settings.pick(1.0, 0.5, 0.125), settings.pick(32, 16, 2)
    repeats = settings.pick(5, 3, 1)
    figures: dict[str, Any] = {}
    checks = []
    for name in TASKS:
        crop, overrides = WORKLOADS.get(name, (180, []))
        if settings.mode == "smoke" and name in SMOKE:
            smoke_keys = {o.split("=")[0] for o in SMOKE[name][1]}
            crop = SMOKE[name][0]
            overrides = [o for o in overrides if o.split("=")[0] not in smoke_keys] + SMOKE[name][1]
        else:
            crop = crop if crop == 227 else settings.pick(crop, crop, 64)
        task, model, optim = build(name, width, overrides)
        t = interleave(steps(task, model, optim, photo_crops(batch, crop, seed=1)), repeats, warmup=1)
        full_s, bare_s = median(t["full"]), median(t["bare"])
        paired = median([b / f for f, b in zip(t["full"], t["bare"])])
        figures[name] = {"images_per_s": {"full": batch / full_s, "bare": batch / bare_s}, "full_over_bare": paired,
                         "crop": crop}
        checks.append(Check(f"{name}: images/s, full step / bare", 100.0 * paired, ">=", 90.0, unit="%",
                            baseline="bare forward + backward, precomputed inputs and targets",
                            note=f"{batch / full_s:.2f} vs {batch / bare_s:.2f} images/s at {crop} px"))
    workload = {"tasks": list(TASKS), "width": width, "batch": batch, "precision": "fp32", "repeats": repeats,
                "crops": {n: WORKLOADS.get(n, (180, []))[0] for n in TASKS}}
    notes = ["full_over_bare is the median over rounds of bare/full seconds (each round runs both back to back).",
             "rotation's batch is the number of source images: each step trains on their four rotations.",
             "jigsaw and context: the batch is the number of crops (9 patches each; context: 40 pairs each)."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)
