"""Frozen-encoder linear probes (Sec. 3.2, Fig. 7): one linear classifier per layer, all trained in one pass.

Protocol (:func:`run_probe`)
----------------------------
1. The encoder (:func:`xchannel.features.load_encoder`) is frozen: eval mode, no gradients, BatchNorm statistics
   fixed. Gray encoders see L, color encoders Lab, RGB networks normalised RGB.
2. Data: ``DIR/train`` and ``DIR/val`` ImageFolder trees with the same classes. Training images are resized (shorter
   side ``resize`` = 256) and randomly cropped to ``crop`` (227 for AlexNet) and mirrored; validation images are
   center-cropped (or, with ``ten_crop``, the four corners, the centre and their mirrors, the class probabilities
   averaged). With a feature cache the training images are center-cropped too: augmentation is off. With
   ``screen`` (the default) both splits are screened first (:mod:`xchannel.data.screen`): unusable files are
   left out before the data order is drawn, counted and named, so a folder holding them gives exactly the
   results of the same folder cleaned, with or without the cache.
3. Each requested layer is pooled by the protocol (:mod:`xchannel.probe.protocols`) and fed to its own head
   (BatchNorm without affine parameters + linear, :mod:`xchannel.probe.heads`). The encoder runs once per batch for
   all layers, stopping at the deepest; the heads' losses are summed, and because no parameter is shared each
   head receives exactly the gradient it would get alone: probing layers together or one at a time (same seed)
   gives the same heads.
4. SGD with momentum, weight decay on the weights, lr steps x0.1 (the protocol's schedule; ``epochs``/``lr``
   override it). Top-1 and top-5 accuracy (%) on the validation split, per layer.
5. Seeds and uncertainty: the heads are trained with ``head_seeds`` seeds (``seed``, ``seed + 1``, ...; by
   default 3 on a feature cache, where the encoder runs once for all of them, else 1). ``top1``/``top5`` are the
   means over seeds; ``top1_ci`` is the 95 % interval of the two-stage bootstrap over validation images and seeds
   (:func:`xchannel.metrics.uncertainty.accuracy_interval`), with each seed's value. Every image's top-1 hit is
   kept per seed (``per_image``, :func:`top1_hits`) so that encoders probed on the same images can be compared
   pairwise; ``chance`` holds the chance accuracy. The trained heads returned by :func:`fit_probe` are the first
   seed's.

The result (a dict, also written atomically as JSON) records the protocol, the full config, the encoder
(:meth:`~xchannel.features.encoders.Encoder.describe`: spec, checkpoint sha256, input mode), the data (path, counts,
a hash of the class list, skipped images), timings and the code version.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

import xchannel
from xchannel import runtime
from xchannel.data.images import (ImageFolderDataset, ImageSamples, RandomCropMirror, ResizeCenterCrop,
                                  SkipCounter, collate_skip)
from xchannel.data.screen import screen_samples
from xchannel.errors import UserError
from xchannel.features.cache import FeatureCache, file_list_fingerprint
from xchannel.features.encoders import Encoder, load_encoder, parse_spec
from xchannel.metrics.uncertainty import BootstrapConfig, accuracy_interval, chance_accuracy
from xchannel.probe.heads import ProbeHeads
from xchannel.probe.protocols import DEFAULT_PROTOCOL, PoolSpec, Protocol, Schedule, get_protocol
from xchannel.utils.config import to_dict
from xchannel.utils.io import atomic_write_json, slug

TEN_CROP_VIEWS = 10
IMAGENET_WNID = re.compile(r"^n\d{8}$")


@dataclass
class ProbeConfig:
    """Everything a probe run depends on (saved in its result).

    ``epochs``, ``lr``, ``momentum`` and ``weight_decay`` default to the protocol's schedule; ``crop`` to the
    encoder's input size (227 for AlexNet). ``layers`` are tap names, or ``all`` (every tap of the encoder).
    ``screen`` checks every image before the data order is drawn (about 1.2 ms per JPEG and worker; see
    :mod:`xchannel.data.screen`); without it bad files are only skipped when read.
    """

    encoder: str = "gaussian"
    data: str = ""
    layers: list[str] = field(default_factory=lambda: ["all"])
    protocol: str = DEFAULT_PROTOCOL
    rounding: Literal["ceil", "floor"] = "ceil"
    input_mode: Literal["gray", "color", "rgb"] | None = None
    geometry: Literal["transfer", "pretext"] = "transfer"
    epochs: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int = 64
    crop: int | None = None
    resize: int = 256
    ten_crop: bool = False
    augment: bool = True
    cache: str | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # of the frozen encoder; auto: bf16 where native (runtime.py)
    channels_last: bool = True
    workers: int = 2
    screen: bool = True
    seed: int = 0
    head_seeds: int | None = None  # heads trained with seeds seed, seed + 1, ...; None: 3 with a cache, else 1
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    kmeans_images: int = 256
    device: str = "auto"
    out: str | None = None
    data_name: str | None = None
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.crop is not None and self.crop < 16:
            problems.append(f"crop must be >= 16 pixels (got {self.crop})")
        if self.workers < 0:
            problems.append(f"workers must be >= 0 (got {self.workers})")
        if self.head_seeds is not None and self.head_seeds < 1:
            problems.append(f"head_seeds must be >= 1 (got {self.head_seeds})")
        if self.kmeans_images < 1:
            problems.append(f"kmeans_images must be >= 1 (got {self.kmeans_images})")
        if not self.layers:
            problems.append("layers is empty")
        if problems:
            raise UserError("probe config: " + "; ".join(problems))

    def seeds_used(self) -> int:
        """How many head seeds run: ``head_seeds``, else 3 on a feature cache (the encoder runs once for all of
        them) and 1 without (each seed would run the encoder again)."""
        return self.head_seeds if self.head_seeds is not None else 3 if self.cache is not None else 1


# --------------------------------------------------------------------------------------------------------------
# Layers, shapes and pooling


def resolve_layers(requested: Sequence[str], encoder: Encoder) -> list[str]:
    """Tap names in network order; ``all`` is every tap. Unknown names are a :class:`UserError`."""
    names: list[str] = []
    for item in requested:
        for name in (s.strip() for s in str(item).split(",")):
            if not name:
                continue
            names.extend(encoder.layer_names if name == "all" else [name])
    encoder.check_layers(names)
    return [n for n in encoder.layer_names if n in set(names)]


def layer_shapes(encoder: Encoder, crop: int, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-image activation shapes of ``layers`` for ``crop`` x ``crop`` inputs (one forward of a blank image)."""
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = encoder.features(torch.zeros(1, 3, crop, crop, device=device), layers)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"encoder {encoder.name}: layers {', '.join(layers)} cannot be computed on {crop} px crops "
                        f"({str(err).splitlines()[0]})") from None
    return {n: tuple(out[n].shape[1:]) for n in layers}


def pool_specs(protocol: Protocol, shapes: Mapping[str, tuple[int, ...]], rounding: str) -> dict[str, PoolSpec]:
    return {layer: protocol.pool_spec(layer, shape, rounding) for layer, shape in shapes.items()}


def probe_dims(protocol: str | Protocol, encoder: Encoder | str = "gaussian", crop: int | None = None,
               layers: Sequence[str] = ("all",), rounding: str = "ceil") -> dict[str, dict[str, Any]]:
    """``{layer: {"shape": [C, H, W], "dim": D, "in_shape": [...], "pool": "..."}}`` for an encoder (default: the
    full-width Gaussian AlexNet, on which the presets are defined) at ``crop`` (default: the encoder's)."""
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    enc = load_encoder(encoder) if isinstance(encoder, str) else encoder
    names = resolve_layers(layers, enc)
    shapes = layer_shapes(enc, crop or enc.default_crop, names)
    return {layer: spec.to_dict() for layer, spec in pool_specs(proto, shapes, rounding).items()}


class PooledFeatures(nn.Module):
    """Frozen encoder + the protocol's pooling: RGB batch -> ``{layer: N x (pooled shape)}`` float32 features."""

    def __init__(self, encoder: Encoder, specs: Mapping[str, PoolSpec], precision: str = "fp32",
                 channels_last: bool = True) -> None:
        super().__init__()
        from xchannel.probe.protocols import Pool

        self.encoder = encoder
        self.layers = list(specs)
        self.pools = nn.ModuleDict({layer: Pool(spec) for layer, spec in specs.items()})
        self.precision = precision  # resolved (runtime.resolve_precision)
        self.channels_last = channels_last
        self.batches = 0  # encoder forward passes (batches) run so far

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches += 1
        x = self.encoder.prepare(rgb)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(x.device, self.precision):
            taps = self.encoder.taps(x, self.layers)
        return {layer: self.pools[layer](taps[layer].float()).contiguous() for layer in self.layers}


# --------------------------------------------------------------------------------------------------------------
# Data


class TenCrop:
    """Resize the shorter side to ``resize`` and take the 4 corner and centre ``size`` crops and their mirrors:
    a 10 x 3 x size x size uint8 tensor (the ten-crop evaluation of AlexNet)."""

    def __init__(self, size: int, resize: int) -> None:
        self.size, self.resize = size, max(size, resize)

    def __call__(self, img) -> torch.Tensor:
        if min(img.size) != self.resize:
            img = TF.resize(img, self.resize, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return torch.stack([TF.pil_to_tensor(c) for c in TF.ten_crop(img, [self.size, self.size])])


def _open_split(root: Path, split: str, cfg: ProbeConfig, counter: SkipCounter | None = None) -> ImageFolderDataset:
    """The ImageFolder ``root/split`` (its transform is the caller's to set). With ``cfg.screen`` its unusable
    files are left out (:mod:`xchannel.data.screen`), counted and named in ``counter``."""
    path = root / split
    if not path.is_dir():
        raise UserError(f"{root}: no {split}/ folder (the probe needs DIR/train and DIR/val ImageFolder trees)")
    ds = ImageFolderDataset(path, check_color=False)
    if len(ds) == 0:
        raise UserError(f"{path}: no images found")
    if cfg.screen:
        result = screen_samples(ds.samples, ds.max_pixels, cfg.workers, cfg.progress, source=str(path),
                                desc=f"screening {split} images")
        result.apply(ds, counter if counter is not None else SkipCounter())
        if not ds.samples:
            raise UserError(f"{path}: none of its {result.files} images is readable")
    return ds


def _loader(ds, batch_size: int, workers: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate_skip,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def _data_record(root: Path, train: ImageFolderDataset, val: ImageFolderDataset, name: str | None) -> dict:
    classes = list(train.classes)
    is_imagenet = len(classes) == 1000 and all(IMAGENET_WNID.match(c) for c in classes)
    if name is None:
        synthetic = (root / ".." / "manifest.json").is_file()  # written by ``xchannel make-data``
        name = "imagenet" if is_imagenet else f"{root.resolve().name} (synthetic)" if synthetic else root.resolve().name
    return {"path": str(root.resolve()), "name": name,
            "is_imagenet": is_imagenet, "classes": len(classes),
            "class_list_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest(),
            "images": {"train": len(train), "val": len(val)}}


def _kmeans_init_data(samples: Sequence[tuple[str, int]], crop: int, resize: int, count: int, seed: int,
                      batch_size: int) -> Iterator[torch.Tensor]:
    """Center crops of ``count`` training images (a seeded random subset) for the k-means initialisation."""
    ds = ImageSamples(samples, ResizeCenterCrop(crop, max(crop, resize)), check_color=False)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    for batch in _loader(Subset(ds, order), batch_size, 0, False, seed):
        if "image" in batch:
            yield batch["image"]


# --------------------------------------------------------------------------------------------------------------
# Feature sources: the encoder on images, or the cache


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return dev


def _image_batches(loader: DataLoader, extractor: PooledFeatures, device: torch.device, counter: SkipCounter,
                   views: int, desc: str, progress: bool) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                           torch.Tensor]]:
    """(pooled features, labels, dataset indices) per batch; images of a ten-crop batch are N*10 rows."""
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        if counter.update(batch) == 0:
            continue
        images = batch["image"].to(device, non_blocking=True)
        if views > 1:
            images = images.reshape(-1, *images.shape[-3:])
        yield extractor(images), batch["label"].to(device), batch["index"]


def cache_entry(layer: str, spec: PoolSpec) -> str:
    """The cache's name for a layer pooled by ``spec`` (e.g. ``conv2~avg_k5_s5_ceil``): protocols that pool a layer
    the same way share its cached features; different poolings of one layer coexist."""
    return f"{layer}~{re.sub(r'[^A-Za-z0-9]+', '_', spec.describe()).strip('_')}"


def _fill_cache(cache: FeatureCache, split: str, loader: DataLoader, extractor: PooledFeatures,
                entries: Mapping[str, str], device: torch.device, views: int, counter: SkipCounter,
                progress: bool) -> None:
    """Run the encoder over ``loader`` once and store the pooled features of ``extractor``'s layers."""
    specs = {layer: extractor.pools[layer].spec for layer in extractor.layers}
    writer = cache.writer(split, len(loader.dataset), views,
                          {entries[layer]: spec.out_shape for layer, spec in specs.items()})
    try:
        for feats, labels, index in _image_batches(loader, extractor, device, counter, views,
                                                   f"caching {split} features", progress):
            writer.add(index.numpy(), labels.cpu().numpy(), {entries[k]: v for k, v in feats.items()})
    except BaseException:
        writer.abort()
        raise
    writer.commit()


# --------------------------------------------------------------------------------------------------------------
# Training and evaluation


def _schedule(protocol: Protocol, cfg: ProbeConfig) -> Schedule:
    base = protocol.schedule
    return Schedule(epochs=cfg.epochs or base.epochs, lr=cfg.lr if cfg.lr is not None else base.lr,
                    momentum=cfg.momentum if cfg.momentum is not None else base.momentum,
                    nesterov=base.nesterov,
                    weight_decay=cfg.weight_decay if cfg.weight_decay is not None else base.weight_decay,
                    milestones=base.milestones, gamma=base.gamma)


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op CPU threads (None: unchanged)."""
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _head_threads(device: torch.device, batch_size: int, dims: Sequence[int], num_classes: int) -> int | None:
    """1 when the heads' work per step is small (< 1 GFLOP, e.g. a demo-size probe) on the CPU, else None.

    Tiny BatchNorm/linear/cross-entropy kernels gain nothing from a second thread, and on a busy machine OpenMP's
    synchronisation between threads costs far more than the kernels themselves (measured here: 0.15 s vs 18 s for
    the same 36 steps on a loaded 2-core machine). The encoder keeps every thread.
    """
    flops = 6 * batch_size * sum(dims) * num_classes  # forward + backward of the linear layers
    return 1 if device.type == "cpu" and flops < 1e9 else None


def _train_step(heads: ProbeHeads, optim: torch.optim.Optimizer, feats: Mapping[str, torch.Tensor],
                labels: torch.Tensor, sums: dict[str, float]) -> None:
    """One SGD step of every head on its own cross-entropy (the summed loss gives each head its own gradient)."""
    optim.zero_grad(set_to_none=True)
    losses = {layer: F.cross_entropy(heads[layer](feats[layer]), labels) for layer in heads}
    torch.stack(list(losses.values())).sum().backward()
    optim.step()
    for layer, loss in losses.items():
        sums[layer] += float(loss.detach()) * len(labels)


class _Accuracy:
    """Top-1 / top-5 counts per layer, and each image's top-1 hit (in evaluation order); ten-crop rows are
    averaged as class probabilities per image."""

    def __init__(self, layers: Sequence[str], num_classes: int, views: int) -> None:
        self.k = min(5, num_classes)
        self.views = views
        self.correct = {layer: [0, 0] for layer in layers}
        self.top1: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        self.labels: list[np.ndarray] = []
        self.total = 0

    def update(self, heads: ProbeHeads, feats: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
        n = len(labels)
        for layer, head in heads.items():
            probs = F.softmax(head(feats[layer]).float(), dim=1).reshape(n, self.views, -1).mean(1)
            top = probs.topk(self.k, dim=1).indices
            hit = top == labels[:, None]
            self.correct[layer][0] += int(hit[:, 0].sum())
            self.correct[layer][1] += int(hit.any(dim=1).sum())
            self.top1[layer].append(hit[:, 0].cpu().numpy())
        self.labels.append(labels.cpu().numpy())
        self.total += n

    @property
    def hits(self) -> dict[str, np.ndarray]:
        """layer -> boolean top-1 hit of every evaluated image."""
        return {layer: np.concatenate(h) if h else np.zeros(0, bool) for layer, h in self.top1.items()}

    def result(self) -> dict[str, dict[str, float]]:
        t = max(self.total, 1)
        return {layer: {"top1": 100.0 * c[0] / t, "top5": 100.0 * c[1] / t} for layer, c in self.correct.items()}


def _train_heads(heads: ProbeHeads, sched: Schedule, seed: int, cfg: ProbeConfig, device: torch.device,
                 cached: Mapping[str, Any] | None, train_ds: ImageFolderDataset, extractor: PooledFeatures,
                 counter: SkipCounter, head_threads: int | None, timing: dict[str, float],
                 root: Path) -> list[dict[str, Any]]:
    """Train ``heads`` for the schedule's epochs, on cached features or on the encoder's; returns the history."""
    layers = list(heads.keys())
    optim = torch.optim.SGD(heads.param_groups(sched.weight_decay), lr=sched.lr, momentum=sched.momentum,
                            nesterov=sched.nesterov and sched.momentum > 0)
    lr_steps = torch.optim.lr_scheduler.MultiStepLR(optim, sched.milestone_epochs(sched.epochs), sched.gamma)
    history = []
    # Random crops and mirrors draw from the global generator (in the main process; DataLoader workers are seeded
    # from the loader's generator). Seeding it here, after everything that consumes it while being built (module
    # constructors), makes the augmentation independent of which layers and encoder are probed.
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    epochs_bar = tqdm(range(sched.epochs), desc=f"probe epochs (seed {seed})", disable=not cfg.progress,
                      leave=False)
    for epoch in epochs_bar:
        heads.train()
        sums = {layer: 0.0 for layer in layers}
        seen = 0
        t0 = time.perf_counter()
        if cached is not None:
            split = cached["train"]
            rows = split.rows[torch.randperm(len(split.rows), generator=gen).numpy()]
            for start in range(0, len(rows), cfg.batch_size):
                feats, labels = split.batch(rows[start: start + cfg.batch_size], layers)
                feats = {k: v.to(device) for k, v in feats.items()}
                with _cpu_threads(head_threads):
                    _train_step(heads, optim, feats, labels.to(device), sums)
                seen += len(labels)
        else:
            loader = _loader(train_ds, cfg.batch_size, cfg.workers, True, seed + epoch)
            for feats, labels, _ in _image_batches(loader, extractor, device, counter, 1,
                                                   f"epoch {epoch + 1}", cfg.progress):
                with _cpu_threads(head_threads):
                    _train_step(heads, optim, feats, labels, sums)
                seen += len(labels)
        timing["train"] += time.perf_counter() - t0
        if seen == 0:
            raise UserError(f"{root / 'train'}: no readable training images")
        history.append({"epoch": epoch + 1, "lr": optim.param_groups[0]["lr"],
                        "loss": {layer: s / max(seen, 1) for layer, s in sums.items()}})
        lr_steps.step()
    return history


@torch.no_grad()
def _evaluate_heads(heads: ProbeHeads, layers: Sequence[str], num_classes: int, views: int, cfg: ProbeConfig,
                    device: torch.device, cached: Mapping[str, Any] | None, val_ds: ImageFolderDataset,
                    extractor: PooledFeatures, counter: SkipCounter, head_threads: int | None) -> _Accuracy:
    """Top-1 / top-5 of ``heads`` on the validation split, images in the data set's order."""
    heads.eval()
    acc = _Accuracy(layers, num_classes, views)
    if cached is not None:
        split = cached["val"]
        rows = split.rows
        for start in range(0, len(rows), cfg.batch_size):
            feats, labels = split.batch(rows[start: start + cfg.batch_size], layers)
            with _cpu_threads(head_threads):
                acc.update(heads, {k: v.to(device) for k, v in feats.items()}, labels.to(device))
    else:
        loader = _loader(val_ds, max(1, cfg.batch_size // views), cfg.workers, False, cfg.seed)
        for feats, labels, _ in _image_batches(loader, extractor, device, counter, views, "evaluating",
                                               cfg.progress):
            with _cpu_threads(head_threads):
                acc.update(heads, feats, labels)
    return acc


def pack_hits(hits: np.ndarray) -> str:
    """Per-image hits as a hex string, one bit per image (``numpy.packbits``)."""
    return np.packbits(np.asarray(hits, dtype=bool)).tobytes().hex()


def unpack_hits(packed: str, images: int) -> np.ndarray:
    """The inverse of :func:`pack_hits` for ``images`` images."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8), count=images).astype(bool)


def top1_hits(result: Mapping[str, Any], layer: str) -> np.ndarray:
    """``seeds x images`` top-1 hits of ``layer`` from a probe result (its ``per_image`` record)."""
    rec = result["per_image"]
    return np.stack([unpack_hits(h, rec["images"]) for h in rec["top1_hits"][layer]])


def _git_commit() -> str | None:
    repo = Path(xchannel.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    return {"xchannel": xchannel.__version__, "git_commit": _git_commit(), "torch": torch.__version__}


def default_output(cfg: ProbeConfig, encoder_name: str) -> Path:
    return Path("results") / "probe" / f"{slug(encoder_name)}_{cfg.protocol}.json"


def build_encoder(cfg: ProbeConfig, data_root: Path | None = None,
                  train_samples: Callable[[], Sequence[tuple[str, int]]] | None = None) -> Encoder:
    """The config's encoder; a k-means encoder is initialised on ``kmeans_images`` training images, drawn from
    ``train_samples()`` (the probe's, already screened) or else from ``data_root/train`` (screened here)."""
    kind, _ = parse_spec(cfg.encoder)
    init_data: Callable[[], Iterator[torch.Tensor]] | None = None
    if kind == "kmeans":
        if data_root is None and train_samples is None:
            raise UserError("a kmeans encoder needs the probe's data (its training images initialise it)")
        crop = cfg.crop or 227

        def kmeans_data() -> Iterator[torch.Tensor]:
            samples = train_samples() if train_samples is not None else _open_split(data_root, "train", cfg).samples
            return _kmeans_init_data(samples, crop, cfg.resize, cfg.kmeans_images, cfg.seed, cfg.batch_size)

        init_data = kmeans_data
    return load_encoder(cfg.encoder, input_mode=cfg.input_mode, geometry=cfg.geometry, seed=cfg.seed,
                        init_data=init_data)


def fit_probe(cfg: ProbeConfig, encoder: Encoder | None = None) -> tuple[dict[str, Any], ProbeHeads]:
    """:func:`run_probe`, returning the trained heads (in eval mode) with the result."""
    cfg.validate()
    t_start = time.perf_counter()
    protocol = get_protocol(cfg.protocol)
    sched = _schedule(protocol, cfg)
    if not cfg.data:
        raise UserError("no data given: the probe needs DIR with DIR/train and DIR/val ImageFolder trees")
    root = Path(cfg.data)
    device = _device(cfg.device)

    # Each split is opened and screened once, before anything draws an order from it: here, or earlier when a
    # k-means encoder's initialisation needs the training images.
    counters = {"train": SkipCounter(), "val": SkipCounter()}
    splits: dict[str, ImageFolderDataset] = {}

    def open_split(split: str) -> ImageFolderDataset:
        if split not in splits:
            splits[split] = _open_split(root, split, cfg, counters[split])
        return splits[split]

    encoder = (encoder if encoder is not None else
               build_encoder(cfg, root, lambda: open_split("train").samples)).freeze()
    train_ds, val_ds = open_split("train"), open_split("val")
    train_counter, val_counter = counters["train"], counters["val"]
    if train_ds.classes != val_ds.classes:
        raise UserError(f"{root}: train/ and val/ have different classes ({len(train_ds.classes)} vs "
                        f"{len(val_ds.classes)}; first difference: "
                        f"{sorted(set(train_ds.classes) ^ set(val_ds.classes))[:3]})")
    num_classes = len(train_ds.classes)
    if num_classes < 2:
        raise UserError(f"{root}: a probe needs at least 2 classes, found {num_classes}")

    precision = runtime.precision_record(cfg.precision, device)
    if cfg.progress:
        print(f"probe: {runtime.describe_precision(precision)}", flush=True)
    crop = cfg.crop or encoder.default_crop
    resize = max(cfg.resize, crop)
    views = TEN_CROP_VIEWS if cfg.ten_crop else 1
    use_cache = cfg.cache is not None
    augment = cfg.augment and not use_cache
    train_ds.transform = RandomCropMirror(crop, resize=resize) if augment else ResizeCenterCrop(crop, resize)
    val_ds.transform = TenCrop(crop, resize) if cfg.ten_crop else ResizeCenterCrop(crop, resize)

    layers = resolve_layers(cfg.layers, encoder)
    shapes = layer_shapes(encoder, crop, layers)
    specs = pool_specs(protocol, shapes, cfg.rounding)
    encoder = encoder.to(device)
    if cfg.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    extractor = PooledFeatures(encoder, specs, precision["resolved"], cfg.channels_last).to(device)

    timing = {"features": 0.0, "train": 0.0, "eval": 0.0, "bootstrap": 0.0}
    cache_info: dict[str, Any] | None = None
    cached = {}
    if use_cache:
        cache = FeatureCache(cfg.cache, {
            "encoder": encoder.weights_fingerprint(), "input_mode": encoder.input_mode,
            "data": {split: {"path": str((root / split).resolve()),
                             "files": file_list_fingerprint(ds.samples, root / split), "classes": ds.classes}
                     for split, ds in (("train", train_ds), ("val", val_ds))},
            "crop": crop, "resize": resize, "bf16": precision["resolved"] == "bf16",
        })
        entries = {layer: cache_entry(layer, spec) for layer, spec in specs.items()}  # layer + its pooling
        cache_info = {"dir": str(cache.dir), "key": cache.key, "computed": {}}
        for split, ds, counter, split_views in (("train", train_ds, train_counter, 1),
                                                ("val", val_ds, val_counter, views)):
            split_name = split if split_views == 1 else f"{split}-10crop"
            missing = [layer for layer in layers if entries[layer] in
                       cache.missing_layers(split_name, list(entries.values()))]
            cache_info["computed"][split_name] = missing
            if missing:
                t0 = time.perf_counter()
                part = PooledFeatures(encoder, {layer: specs[layer] for layer in missing},
                                      precision["resolved"], cfg.channels_last)
                _fill_cache(cache, split_name, _loader(ds, cfg.batch_size, cfg.workers, False, cfg.seed), part,
                            entries, device, split_views, counter, cfg.progress)
                extractor.batches += part.batches
                timing["features"] += time.perf_counter() - t0
            loaded = cache.load(split_name, [entries[layer] for layer in layers])
            cached[split] = replace(loaded, features={layer: loaded.features[entries[layer]] for layer in layers},
                                    shapes={layer: specs[layer].out_shape for layer in layers},
                                    scales={layer: loaded.scales[entries[layer]] for layer in layers})

    head_threads = _head_threads(device, cfg.batch_size * views, [spec.dim for spec in specs.values()], num_classes)
    seeds = [cfg.seed + k for k in range(cfg.seeds_used())]
    runs = []
    for seed in seeds:
        heads = ProbeHeads({layer: spec.out_shape for layer, spec in specs.items()}, num_classes, seed).to(device)
        history = _train_heads(heads, sched, seed, cfg, device, cached if use_cache else None, train_ds, extractor,
                               train_counter, head_threads, timing, root)
        t0 = time.perf_counter()
        acc = _evaluate_heads(heads, layers, num_classes, views, cfg, device, cached if use_cache else None,
                              val_ds, extractor, val_counter, head_threads)
        timing["eval"] += time.perf_counter() - t0
        if acc.total == 0:
            raise UserError(f"{root / 'val'}: no readable validation images")
        runs.append((heads, history, acc))
    heads, history, acc = runs[0]
    t0 = time.perf_counter()
    scores = {layer: {metric: sum(r[2].result()[layer][metric] for r in runs) / len(runs)
                      for metric in ("top1", "top5")} for layer in layers}
    hits = {layer: np.stack([r[2].hits[layer] for r in runs]) for layer in layers}
    intervals = {layer: accuracy_interval(hits[layer], cfg.bootstrap) for layer in layers}
    timing["bootstrap"] = time.perf_counter() - t0

    data = _data_record(root, train_ds, val_ds, cfg.data_name)
    data["evaluated"] = acc.total
    data["skipped"] = {"train": train_counter.summary(), "val": val_counter.summary()}
    result: dict[str, Any] = {
        "kind": "linear_probe",
        "protocol": {**protocol.to_dict(), "rounding": cfg.rounding, "crop": crop, "resize": resize,
                     "eval_views": views, "augment": augment,
                     "schedule_used": {**sched.__dict__, "milestones": sched.milestone_epochs(sched.epochs)}},
        "config": to_dict(cfg),
        "precision": precision,
        "encoder": encoder.describe(),
        "data": data,
        "layer_order": layers,
        "layers": {layer: {**specs[layer].to_dict(), **scores[layer], "top1_ci": intervals[layer].to_dict(),
                           "final_train_loss": history[-1]["loss"][layer]} for layer in layers},
        "seeds": seeds,
        "chance": {**chance_accuracy(np.concatenate(acc.labels), num_classes),
                   "label": "top-1 % of guessing uniformly, and of always the majority class of val"},
        "per_image": {"images": acc.total, "order": "the validation images in the data set's order, unreadable "
                                                    "ones left out",
                      "encoding": "hex of numpy.packbits, one bit per image, one string per seed",
                      "top1_hits": {layer: [pack_hits(r[2].hits[layer]) for r in runs] for layer in layers}},
        "history": history,
        "cache": cache_info,
        "timing": {"seconds": time.perf_counter() - t_start, **{f"{k}_seconds": v for k, v in timing.items()},
                   "encoder_batches": extractor.batches},
        "code": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(cfg.out) if cfg.out else default_output(cfg, encoder.name)
    result["output"] = str(out)
    atomic_write_json(out, result)
    return result, heads


def run_probe(cfg: ProbeConfig, encoder: Encoder | None = None) -> dict[str, Any]:
    """Train and evaluate one linear head per requested layer (see the module docstring); returns the result and
    writes it to ``cfg.out`` (default ``results/probe/<encoder>_<protocol>.json``) atomically.

    ``encoder`` may be given directly (then ``cfg.encoder`` is only recorded). :func:`fit_probe` also returns the
    trained heads.
    """
    return fit_probe(cfg, encoder)[0]


def format_dims(dims: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per layer: activation shape -> pooled shape, dimension, pooling."""
    lines = [f"{'layer':<8} {'activation':<14} {'pooled':<12} {'dim':>6}  pooling"]
    for layer, d in dims.items():
        lines.append(f"{layer:<8} {'x'.join(map(str, d['in_shape'])):<14} {'x'.join(map(str, d['shape'])):<12} "
                     f"{d['dim']:>6}  {d['pool']}")
    return "\n".join(lines)


__all__ = ["ProbeConfig", "PooledFeatures", "TenCrop", "build_encoder", "code_version", "fit_probe", "format_dims",
           "layer_shapes", "pack_hits", "pool_specs", "probe_dims", "resolve_layers", "run_probe",
           "top1_hits", "unpack_hits"]

