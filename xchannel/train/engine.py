"""The training engine: one loop for every pretext task.

The engine knows a task (:mod:`xchannel.pretext`) only through its interface: it hands each collated batch and a
generator seeded by (seed, step, rank) to ``task.prepare``, back-propagates the sum of ``task.loss``'s named
losses (logging each), calls ``task.validate`` and writes ``task.export``'s entries into every checkpoint.

What it guarantees:

* **Resumable to the bit.** The data order and each image's augmentation are functions of (seed, step): the sampler
  restarts at any step, and every item's crop and mirror come from a generator seeded by (seed, epoch, position).
  A checkpoint holds the model, optimiser, scheduler and RNG states and the task's own state (``task_state``: a
  memory bank, a permutation set); writing one draws nothing from the run's random streams. With
  ``deterministic=True`` a run killed at any moment (SIGKILL included) and resumed with ``--resume`` ends with the
  same weights as an uninterrupted run.
* **Bad files change nothing.** With ``data.screen`` (the default) every training and validation file is checked
  before the data order is drawn (:mod:`xchannel.data.screen`); the unusable ones are left out of the order, named
  in the log and counted in the summary, so a folder holding them trains to the very weights of the same folder
  cleaned. The screened list is stored in the run folder (``data_screen.json.gz``) and a resumed run reads it
  back, so its data order holds even if the folder has changed since.
* **Nothing written is lost.** Checkpoints and results are written atomically; a non-finite loss stops the run with
  an error and keeps the last good checkpoint; SIGTERM / SIGUSR1 (SLURM's warning before pre-emption or time-out)
  make the run checkpoint at the next step and return with status ``"interrupted"``.
* **Runs anywhere.** CPU or CUDA, fp32 / bf16 / fp16 autocast, channels_last, and DistributedDataParallel under
  torchrun or SLURM (:mod:`xchannel.train.distributed`). ``precision: auto`` (the default) is bf16 where it is
  native and fp32 elsewhere (:mod:`xchannel.runtime`); the choice is logged, saved in ``config.json``, the
  checkpoints and the summary, and a resumed run keeps the precision its checkpoint ran with.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from xchannel import __version__, runtime
from xchannel.data.images import (ImageFolderDataset, ImageListDataset, ImageSamples, RandomCropMirror,
                                  ResizeCenterCrop, SkipCounter, collate_skip)
from xchannel.data.screen import ScreenResult, load_screens, save_screens, screen_samples
from xchannel.errors import UserError
from xchannel.pretext import get_task
from xchannel.pretext.base import step_generator
from xchannel.train import checkpoint as ckpt
from xchannel.train.config import TrainConfig
from xchannel.train.distributed import World, cleanup, init_distributed
from xchannel.utils.config import to_dict
from xchannel.utils.io import append_jsonl, atomic_write_json


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------------------------
# Data order as a function of (seed, step)


def item_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ResumableSampler(Sampler):
    """Yields ``(index, item_seed)`` for one rank, starting at a given global step.

    Each epoch is a permutation drawn from (seed, epoch); rank r takes every world_size-th index of it; epochs hold
    whole batches only. ``start_step`` skips the batches already trained on, so a resumed run sees exactly the data
    an uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world: World, start_step: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.world = n, batch_size, seed, world
        self.per_rank = n // world.world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"the training data has {n} images: fewer than one batch of {batch_size} per process")
        self.start_step = start_step

    def __len__(self) -> int:  # an effectively endless stream; the engine stops at cfg.steps
        return 1 << 62

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_step, self.batches_per_epoch)
        while True:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            mine = perm[self.world.rank :: self.world.world_size][: self.batches_per_epoch * self.batch_size]
            for pos in range(batch * self.batch_size, len(mine)):
                yield int(mine[pos]), item_seed(self.seed, epoch, pos * self.world.world_size + self.world.rank)
            epoch, batch = epoch + 1, 0


class SeededItems(Dataset):
    """Wraps a data set so that item ``(index, seed)`` is drawn with torch's RNG seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def open_images(path: str, transform) -> Dataset:
    """An ImageFolder tree (a directory) or an image list (a file)."""
    p = Path(path)
    if not path:
        raise UserError("data.train is not set: give an ImageFolder tree or an image list")
    if p.is_dir():
        return ImageFolderDataset(p, transform)
    if p.is_file():
        return ImageListDataset(p, transform)
    raise UserError(f"{p}: no such image folder or list")


def _loader(dataset: Dataset, batch_size: int, workers: int, sampler=None, seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_skip,
                      drop_last=False, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed))


#: The run folder's stored screen (:mod:`xchannel.data.screen`): the usable files the run's data order is drawn from.
SCREEN_FILE = "data_screen.json.gz"


def screen_data(cfg: TrainConfig, run_dir: Path, datasets: dict[str, ImageSamples], counters: dict[str, SkipCounter],
                world: World, resumed: dict | None, progress: bool) -> dict[str, ScreenResult]:
    """Screen the run's data sets (``{"train": ..., "val": ...}``, sources ``cfg.data.train``/``val``) once, before
    the data order is drawn, and apply the result to them and to their skip counters.

    A fresh run screens (the main process; the others wait and read its result) and stores the result in
    ``run_dir/SCREEN_FILE``. A resumed run (``resumed`` is its checkpoint) reads the stored result back instead,
    so its data order is the one its first part drew; its training source must be the stored one (a changed
    validation source is screened anew). Whether a run is screened is fixed when it starts: resuming with the
    other ``data.screen`` is an error. Returns ``{name: result}`` (empty when screening is off).
    """
    path = run_dir / SCREEN_FILE
    if resumed is not None:
        started = bool(resumed.get("config", {}).get("data", {}).get("screen", False))
        if started != cfg.data.screen:
            raise UserError(f"{run_dir} was started with data.screen={str(started).lower()}: resume it with "
                            f"data.screen={str(started).lower()} (its data order depends on it)")
    if not cfg.data.screen:
        return {}
    sources = {"train": cfg.data.train, "val": cfg.data.val}

    def screen(name: str) -> ScreenResult:
        ds = datasets[name]
        return screen_samples(ds.samples, ds.max_pixels, cfg.data.workers, progress, source=str(sources[name]),
                              desc=f"screening {name} images")

    screens: dict[str, ScreenResult] = {}
    if resumed is None and world.is_main:
        screens = {name: screen(name) for name in datasets}
        save_screens(path, screens, datasets["train"].max_pixels)
    if world.distributed:
        dist.barrier()  # the main process has written the screen
    if not screens:
        stored = load_screens(path)
        train = stored.get("train")
        if train is None or train.source != str(sources["train"]):
            raise UserError(f"{path}: the run's data order was drawn from the screened files of "
                            f"{train.source if train else 'no training data'}, but data.train is now "
                            f"{sources['train']}; resume with the original data.train, or start a new run")
        screens = {name: stored[name] if name in stored and stored[name].source == str(sources[name])
                   else screen(name) for name in datasets}
    for name, result in screens.items():
        result.apply(datasets[name], counters[name])
    return screens


# ----------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class RunContext:
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    world: World


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_lambda(cfg: TrainConfig):
    """Piecewise-constant schedule: lr until lr_steps[0], then lr_values[0], ... (the paper's 3e-5, 1e-5, 3e-6)."""
    steps, values = list(cfg.optim.lr_steps), list(cfg.optim.lr_values)
    if len(steps) != len(values):
        raise UserError(f"optim.lr_steps ({len(steps)}) and optim.lr_values ({len(values)}) differ in length")

    def factor(step: int) -> float:
        lr = cfg.optim.lr
        for s, v in zip(steps, values):
            if step >= s:
                lr = v
        return lr / cfg.optim.lr if cfg.optim.lr else 0.0

    return factor


class _StopFlag:
    """Set by SIGTERM / SIGUSR1: checkpoint at the next step boundary and return."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        if hasattr(signal, "SIGUSR1") and _in_main_thread():
            for s in (signal.SIGTERM, signal.SIGUSR1):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``optim.name``: Adam (betas) or SGD (momentum, Nesterov), with ``optim.lr`` and ``optim.weight_decay``."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The back-propagated loss: the sum of a task's named losses (the loss itself when there is one)."""
    if not losses:
        raise ValueError("a task's loss() returned no losses")
    values = list(losses.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.task`` as configured; returns the run summary (also written to ``summary.json``)."""
    device = resolve_device(cfg.device)
    world = init_distributed(device)
    try:
        return _train(cfg, resume, progress, device, world)
    finally:
        cleanup()


def _train(cfg: TrainConfig, resume: bool, progress: bool, device: torch.device, world: World) -> dict:
    task = get_task(cfg.task)(cfg, device)  # first: a wrong task name or option stops the run before it starts
    run_dir = Path(cfg.out)
    existing = ckpt.list_checkpoints(run_dir) if run_dir.exists() else []
    if existing and not resume:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another out=")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed + world.rank)

    state = ckpt.load_latest(run_dir) if resume else None
    if state is not None and state["step"] >= cfg.steps:
        summary = _read_summary(run_dir)
        if world.is_main:
            print(f"{run_dir}: already finished ({state['step']} of {cfg.steps} steps): nothing to do")
        return {**summary, "status": "already-finished"}
    # a resumed run keeps the precision it ran with, wherever it resumes
    ran_with = (state or {}).get("precision", {}).get("resolved") if cfg.precision == "auto" else None
    precision = runtime.precision_record(ran_with or cfg.precision, device)
    precision["requested"] = cfg.precision
    if world.is_main:
        print(f"{run_dir}: {runtime.describe_precision(precision)}; {torch.get_num_threads()} threads", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"xchannel": __version__, **to_dict(cfg),
                                                    "runtime": {"precision": precision,
                                                                "cpu": runtime.cpu_capability()}})

    model = task.build_model().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    resize = cfg.data.resize or cfg.data.crop
    if resize < cfg.data.crop:
        raise UserError(f"data.resize ({resize}) is smaller than data.crop ({cfg.data.crop})")
    scale = cfg.data.scale
    if scale is not None and not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise UserError(f"data.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(scale)}")
    train_set = open_images(cfg.data.train, RandomCropMirror(cfg.data.crop, resize=resize, scale=scale))
    val_set = None
    if cfg.data.val:
        val_set = open_images(cfg.data.val, ResizeCenterCrop(cfg.data.crop, resize=resize))
    skips, val_skips = SkipCounter(), SkipCounter()
    datasets = {"train": train_set, **({"val": val_set} if val_set is not None else {})}
    screens = screen_data(cfg, run_dir, datasets, {"train": skips, "val": val_skips}, world, state,
                          progress and world.is_main)
    task.set_training_data(len(train_set), train_set.targets)
    if state is None:
        _initialise(cfg, task, model, train_set, device)
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step = 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.load_state_dict(state.get("task_state", {}))
        ckpt.set_rng_state(state["rng"])
        step = state["step"]
        if world.is_main:
            print(f"resuming {run_dir} from step {step}")
    scaler = torch.amp.GradScaler(device.type, enabled=precision["resolved"] == "fp16")
    net = model
    if world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = ResumableSampler(len(train_set), cfg.data.batch_size, cfg.seed, world, start_step=step)
    loader = _loader(SeededItems(train_set), cfg.data.batch_size, cfg.data.workers, sampler)
    metrics_path = run_dir / "metrics.jsonl"
    last_val: dict = {}
    first_loss = last_loss = None
    t0, seen = time.perf_counter(), 0
    status = "finished"

    load = runtime.LoadMonitor()
    busy = None
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.task}", disable=not (progress and world.is_main),
               dynamic_ncols=True)
    net.train()
    with _StopFlag() as stop:
        batches = iter(loader)
        while step < cfg.steps:
            batch = next(batches)
            n_good = skips.update(batch)
            if n_good == 0:  # an all-bad batch still consumes its data position and its step
                step += 1
                scheduler.step()
                bar.update(1)
                continue
            b = task.prepare(batch, step_generator(cfg.seed, step, world.rank, device))
            with runtime.autocast(device, precision["resolved"]):
                losses = task.loss(net, b)
            loss = total_loss(losses)
            if not torch.isfinite(loss):
                last = ckpt.list_checkpoints(run_dir)
                raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1}; the last good checkpoint "
                                    f"is {last[0][1] if last else 'none (no checkpoint yet)'}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            task.after_step(b)
            scheduler.step()
            step += 1
            seen += n_good * world.world_size
            loss_v = loss.item()
            first_loss = loss_v if first_loss is None else first_loss
            last_loss = loss_v
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            if world.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                busy = load.warning()
                parts = {"losses": {k: v.item() for k, v in losses.items()}} if len(losses) > 1 else {}
                append_jsonl(metrics_path, {"step": step, "loss": loss_v, **parts, "lr": scheduler.get_last_lr()[0],
                                            "images_per_s": rate, "skipped": skips.skipped, "time": time.time(),
                                            **({"busy": busy} if busy else {})})
            bar.set_postfix(loss=f"{loss_v:.4f}", img_s=f"{rate:.1f}", **({"note": busy} if busy else {}))
            if world.is_main and val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                last_val = _validate(task, model, val_set, cfg, run_dir, step, val_skips)
                append_jsonl(metrics_path, {"step": step, "val": last_val, "time": time.time()})
            interrupted = _agree(stop.signal is not None, device, world)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or interrupted:
                _save(run_dir, step, task, model, optimizer, scheduler, cfg, world, precision)
            if interrupted:
                status = "interrupted"
                if world.is_main:
                    print(f"signal received: checkpointed {run_dir} at step {step}; resume with --resume")
                break
    bar.close()
    summary = {"status": status, "task": cfg.task, "step": step, "steps": cfg.steps, "first_loss": first_loss,
               "last_loss": last_loss,
               "images_per_s": seen / max(time.perf_counter() - t0, 1e-9), "val": last_val,
               "data": skips.summary(), "val_data": val_skips.summary(),
               "screen": {name: result.describe() for name, result in screens.items()}, "device": str(device),
               "precision": precision,
               "world_size": world.world_size, "checkpoint": str(ckpt.checkpoint_path(run_dir, step)),
               "xchannel": __version__}
    if world.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _agree(flag: bool, device: torch.device, world: World) -> bool:
    """All ranks stop together if any rank got the signal."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _save(run_dir: Path, step: int, task, model, optimizer, scheduler, cfg: TrainConfig, world: World,
          precision: dict) -> None:
    """The checkpoint: the task's self-describing entries (:meth:`~xchannel.pretext.base.PretextTask.export`:
    backbone, heads, task, pretrained stages), the whole trained network's ``state_dict`` (and its ``model`` and
    ``hparams`` when it is one registered network, as a colorizer is), the precision the run resolved, and the
    state that resumes the run, the task's own included (``task_state``).

    The export runs on a fork of the CPU generator: a task that builds its backbone anew to export it (a merged
    or re-attached network) draws its throw-away initialisation there, so a run that checkpoints at some step
    draws the same dropout masks afterwards as a run that does not."""
    if not world.is_main:
        return
    from xchannel.models import MODELS, model_checkpoint

    whole = model_checkpoint(model) if getattr(model, "registry_name", None) in MODELS else {}
    with torch.random.fork_rng(devices=[]):
        entries = task.export(model)
    state = {**entries, **whole, "state_dict": model.state_dict(), "task_state": task.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "rng": ckpt.rng_state(), "config": json.loads(json.dumps(to_dict(cfg))),
             "precision": precision, "xchannel": __version__}
    ckpt.save_checkpoint(run_dir, step, state, keep=cfg.keep_checkpoints)


def _validate(task, model, val_set, cfg: TrainConfig, run_dir: Path, step: int, skips: SkipCounter) -> dict:
    # the same evenly spaced images every time, so that all classes of a sorted ImageFolder are represented;
    # bad ones are skipped, counted and named like the training set's (the summary's "val_data")
    n = min(cfg.data.val_images, len(val_set))
    subset = torch.utils.data.Subset(val_set, np.linspace(0, len(val_set) - 1, n).round().astype(int).tolist())
    loader = _loader(subset, min(cfg.data.batch_size, 16), 0)
    good = (b for b in loader if skips.update(b))
    return task.validate(model, good, run_dir / "samples", step, cfg.data.val_images)


def _initialise(cfg: TrainConfig, task, model, train_set, device) -> None:
    """Weights of a fresh run: from a checkpoint, or the Gaussian / k-means (Kraehenbuehl et al.) initialisation."""
    if cfg.model.init_from:
        from xchannel.utils.io import safe_torch_load

        src = safe_torch_load(cfg.model.init_from)
        weights = src.get("state_dict", src) if isinstance(src, dict) else src
        own = model.state_dict()
        usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise UserError(f"{cfg.model.init_from}: no weights match the model {cfg.model.name}")
        model.load_state_dict(usable, strict=False)
        skipped = sorted(set(own) - set(usable))
        if skipped:
            print(f"init_from {cfg.model.init_from}: kept the fresh initialisation of {', '.join(skipped)}")
        return
    if cfg.model.init == "default":
        return
    from xchannel.models import init as minit

    if cfg.model.init == "gaussian":
        minit.gaussian_init_(model, seed=cfg.seed)
        return
    loader = _loader(SeededItems(train_set), cfg.data.batch_size, 0,
                     ResumableSampler(len(train_set), cfg.data.batch_size, cfg.seed + 1, World()))
    images, it = [], iter(loader)
    while len(images) < cfg.model.init_batches:
        b = next(it)
        if "image" in b:
            images.append(b["image"])
    task.kmeans_init(model, images)


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}

