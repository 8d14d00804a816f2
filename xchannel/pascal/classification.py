"""PASCAL VOC2007 classification (Table 2, "Classification (% mAP)"): fine-tune fc8 only, fc6-fc8, or all layers.

The paper "test[s] the network on PASCAL VOC 2007 classification, following the protocol in [16]. The network is
trained by freezing the representation up to certain points, and fine-tuning the remainder" (Sec. 3.2). That
protocol is Krähenbühl et al.'s ``voc-classification`` code (``train_cls.py``), reproduced here:

* data: VOC2007 ``trainval`` for training, ``test`` for testing; 20 multi-label targets per image from the
  annotations, 1 present, -1 absent, 0 "difficult only" (ignored by the loss and by the AP);
* network: the encoder's conv1 ... fc7 (rescaled first, see :mod:`xchannel.pascal.prepare`), dropout 0.5 before fc7
  and before the new classifier fc8 (20 outputs; weights N(0, 0.01^2), biases 0.1 as the reference code draws
  them); ``layers`` chooses what trains: ``fc8`` (everything below frozen), ``fc6-8`` (conv1-conv5 frozen) or
  ``all``;
* loss: sigmoid cross-entropy summed over the non-ignored (image, class) entries, divided by the batch size;
* optimiser: SGD, momentum 0.9, batch 16, base lr 1e-3 halved every 10,000 iterations (Caffe's ``step`` policy,
  gamma 0.5), 80,000 iterations, weight decay 1e-6, gradients clipped to a global L2 norm of 10; every trained
  layer (conv1 ... fc7 and the new fc8 alike) at learning rate x1 and its biases at x2, weight decay x1 on both:
  ``train_cls.py`` calls ``setLR(t, 1, 2)`` and ``setDecay(t, 1, 1)`` for each layer it trains. Equal rates are
  what the rescaling before fine-tuning is for (every layer "learns" at the same rate); a larger rate for the fc
  layers would undo it. The result records every parameter group's multipliers (``protocol.param_groups``);
* augmentation (:class:`RandomScaleCrop`): a random square window of side ``227 s`` with ``s`` uniform in
  [0.5, 2] (capped so the window fits in the image), at a uniformly random position, resampled to 227 x 227,
  mirrored with probability 1/2;
* testing: 10 such random crops per test image, their fc8 outputs averaged.

Scores: the reference code's scikit-learn AP (difficult images removed, ties broken against the positives) — the
metric of Table 2 — and the VOC2007 devkit's 11-point AP (``VOCevalcls.m``), both from
:func:`xchannel.metrics.voc_cls_ap`, labelled in the result.

One difference from Caffe is kept deliberately: PyTorch's SGD folds the learning rate in after the momentum
buffer (Caffe before it); the two agree except for a transient at each of the lr halvings.

Encoders without fc6/fc7 (timm networks, the VGG colorizer) get fc8 on their globally averaged deepest map; for
them ``fc6-8`` does not exist.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xchannel.data.images import Skipped, SkipCounter, collate_skip
from xchannel.data.voc import VOC_CLASSES, VOCClassification
from xchannel.errors import UserError
from xchannel.metrics.uncertainty import BootstrapConfig, chance_map, classification_map_interval
from xchannel.metrics.voc import voc_cls_ap
from xchannel.pascal.config import (CaffeSolver, FinetuneConfig, add_clip_boxes_argument, add_common_arguments,
                                    add_preset_argument, config_from_args, preset_config)
from xchannel.pascal.prepare import PreparedEncoder, dataset_name, prepare_encoder
from xchannel.pascal.record import default_output, result_record, write_result
from xchannel.pascal.solver import (autocast, caffe_param_groups, check_finite, clip_gradients,
                                    describe_param_groups, endless_batches, freeze_groups, resolve_device,
                                    resolve_precision, set_lr,
                                    set_train_mode, step_lr, trainable_parameters)
from xchannel.pascal.trunk import Trunk
from xchannel.utils.io import atomic_torch_save, atomic_write

NAME = "cls"
HELP = "VOC2007 classification: fine-tune fc8, fc6-8 or all layers (Table 2, % mAP)"
LAYER_MODES = ("fc8", "fc6-8", "all")
FC8_INIT_STD = 0.01
FC8_INIT_BIAS = 0.1

METRIC_LABELS = {
    "sklearn": "scikit-learn AP over non-difficult images, ties against positives (Krähenbühl et al.'s "
               "voc-classification protocol; the metric of the paper's Table 2)",
    "voc07": "VOC2007 devkit 11-point interpolated AP (VOCevalcls.m), difficult images ignored",
}


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class AugmentConfig:
    """Crops: ``crop`` 0 takes the trunk's input size (227 for CaffeNet, 224 for torchvision's AlexNet)."""

    crop: int = 0
    min_scale: float = 0.5
    max_scale: float = 2.0
    mirror: bool = True
    test_crops: int = 10


def reference_solver() -> CaffeSolver:
    """Krähenbühl et al.'s ``voc-classification`` solver (``train_cls.py``): batch 16, lr 1e-3 halved every 10k
    iterations, 80k iterations, momentum 0.9, weight decay 1e-6, clipping 10; lr x1 / biases x2, decay x1 on both
    (``setLR(t, 1, 2)``, ``setDecay(t, 1, 1)``)."""
    return CaffeSolver(iterations=80_000, batch_size=16, lr=1e-3, lr_step=10_000, lr_gamma=0.5, momentum=0.9,
                       weight_decay=1e-6, bias_lr_mult=2.0, bias_decay_mult=1.0, clip_gradients=10.0)


@dataclass
class Config(FinetuneConfig):
    """One classification run (saved in its result JSON): the shared fields plus the VOC splits, the layers that
    train, the crops, ``clip_boxes`` (annotation boxes outside the image clipped instead of refused) and whether
    the test scores are saved."""

    optim: CaffeSolver = field(default_factory=reference_solver)
    year: str = "2007"
    train_split: str = "trainval"
    test_split: str = "test"
    layers: Literal["fc8", "fc6-8", "all"] = "all"
    data: AugmentConfig = field(default_factory=AugmentConfig)
    channels_last: bool = True
    clip_boxes: bool = False
    save_scores: bool = True

    def validate(self) -> None:
        d = self.data
        problems = []
        if not 0 < d.min_scale <= d.max_scale:
            problems.append(f"data.min_scale must be in (0, data.max_scale] (got {d.min_scale}, {d.max_scale})")
        if d.test_crops < 1:
            problems.append(f"data.test_crops must be >= 1 (got {d.test_crops})")
        if d.crop < 0:
            problems.append(f"data.crop must be >= 0 (got {d.crop})")
        if self.optim.iterations < 1:
            problems.append(f"optim.iterations must be >= 1 (got {self.optim.iterations})")
        if self.optim.iter_size != 1:
            problems.append(f"optim.iter_size must be 1: classification updates on every batch of optim.batch_size "
                            f"images (got {self.optim.iter_size})")
        self.check("classification", problems)


#: Named configurations (``--preset``), as overrides of the defaults. ``paper``: the protocol as published.
#: ``demo``: the embedded data set (800 trainval, 600 test images of ~160 px) in well under a minute of one CPU
#: core: 100 iterations of 16 images at lr 2e-3, x0.5 after 80, 2 test crops (testing 600 images costs as much as
#: training), 32 images for the rescaling (and a k-means initialisation). Measured on the embedded set (gray input,
#: seed 0, fp32, 95 % intervals over 600 test images; random scores 8.0 [7.4, 8.7]), all layers / fc8: the demo's
#: supervised encoder 29.7 [28.6, 32.8] / 29.4, its colorization encoder 14.4 [14.0, 16.7] / 15.7, the Gaussian
#: network 8.9 [8.8, 10.5] / 9.5. At lr 5e-3 all layers of the colorization encoder fell to 9.1 (its rescaled conv
#: layers lose their features before the head learns); at the reference 1e-3 fc8 barely moves in 100 iterations
#: (12.4 all layers); 2e-2 diverges on fc7 features of norm ~30.
PRESETS: dict[str, list[str]] = {
    "paper": [],
    "demo": ["optim.iterations=100", "optim.batch_size=16", "optim.lr=0.002", "optim.lr_step=80", "data.test_crops=2",
             "rescale.images=32", "log_every=20"],
}


def config(preset: str = "paper", overrides: tuple[str, ...] | list[str] = (), **fields: Any) -> Config:
    """The configuration of ``preset`` with ``key=value`` overrides and top-level fields, e.g.
    ``config("demo", voc=..., encoder=..., input_mode="color", layers="fc6-8", out=...)``."""
    return preset_config(Config, PRESETS, preset, overrides, **fields)


# --------------------------------------------------------------------------------------------------------------
# Data and augmentation


class VOCLabelledImages(VOCClassification):
    """:class:`~xchannel.data.voc.VOCClassification` items reduced to what the task uses: ``{"image" (the
    transform's output), "labels" (20 labels in {1, 0, -1}), "index"}``, or a :class:`Skipped` record for a bad
    image. (The per-image colour check of the parent class is not needed here and would cost more than the
    crop.)"""

    def __getitem__(self, index: int) -> dict | Skipped:
        img = self.load_image(index)
        if isinstance(img, Skipped):
            return img
        return {"image": self.transform(img), "labels": torch.from_numpy(self.labels[index].copy()), "index": index}



class RandomScaleCrop:
    """Krähenbühl et al.'s training (and test) transform: a random scaled, translated, mirrored square crop.

    For an image of W x H pixels and output side ``c``: ``s_max = min(max_scale, W / c, H / c)``,
    ``s ~ U[min(min_scale, s_max), s_max]``; the window of side ``c s`` (inside the image) has its top-left
    corner uniform in ``[0, W - c s] x [0, H - c s]``; it is resampled to ``c x c`` (bilinear) and mirrored with
    probability 1/2. ``s > 1`` zooms out (the window covers more than ``c`` pixels), ``s < 1`` zooms in. Uses
    torch's global RNG (seeded by the task; DataLoader workers get their own seeds). Returns a uint8 tensor.
    """

    def __init__(self, crop: int = 227, min_scale: float = 0.5, max_scale: float = 2.0, mirror: bool = True):
        if crop < 1 or not 0 < min_scale <= max_scale:
            raise ValueError(f"need crop >= 1 and 0 < min_scale <= max_scale, got {crop}, {min_scale}, {max_scale}")
        self.crop, self.min_scale, self.max_scale, self.mirror = int(crop), float(min_scale), float(max_scale), mirror

    def window(self, width: int, height: int) -> tuple[float, float, float]:
        """A random window (left, top, side) in the image's pixel coordinates."""
        s_max = min(self.max_scale, width / self.crop, height / self.crop)
        s_min = min(self.min_scale, s_max)
        u = torch.rand(3, dtype=torch.float64).tolist()
        side = self.crop * (s_min + (s_max - s_min) * u[0])
        return (width - side) * u[1], (height - side) * u[2], side

    def __call__(self, img: Image.Image) -> torch.Tensor:
        left, top, side = self.window(*img.size)
        out = img.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        if self.mirror and bool(torch.rand(()) < 0.5):
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return (f"RandomScaleCrop(crop={self.crop}, min_scale={self.min_scale}, max_scale={self.max_scale}, "
                f"mirror={self.mirror})")


class MultiView:
    """``views`` independent draws of ``transform`` stacked: views x 3 x H x W (the 10 random test crops)."""

    def __init__(self, transform: Any, views: int) -> None:
        self.transform, self.views = transform, int(views)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(img) for _ in range(self.views)])


# --------------------------------------------------------------------------------------------------------------
# The network


class VOCClassifier(nn.Module):
    """trunk (conv1 ... fc7) -> dropout -> fc8 (``num_classes`` logits).

    For a trunk without fc layers the deepest map is averaged over space first. fc8's weights are drawn from a
    generator seeded with ``seed`` (N(0, 0.01^2)) and its biases set to 0.1, as the reference code initialises
    the layers it adds.
    """

    def __init__(self, trunk: Trunk, num_classes: int = len(VOC_CLASSES), dropout: float = 0.5, seed: int = 0):
        super().__init__()
        self.trunk = trunk
        width = trunk.fc_dim if trunk.has_fc else trunk.conv_dim
        if not width:
            raise UserError("classification: cannot tell the width of the encoder's features")
        self.drop = nn.Dropout(dropout)
        self.fc8 = nn.Linear(int(width), num_classes)
        param = next(trunk.parameters())
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.fc8.weight.copy_(torch.randn(self.fc8.weight.shape, generator=gen) * FC8_INIT_STD)
            self.fc8.bias.fill_(FC8_INIT_BIAS)
        self.fc8.to(param.device, param.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        if f.ndim == 4:
            f = f.mean(dim=(2, 3))
        return self.fc8(self.drop(f.flatten(1)))


def trainable_groups(trunk: Trunk, layers: str) -> list[str]:
    """The trunk groups a ``layers`` mode trains: none (``fc8``), fc6 and fc7 (``fc6-8``), all (``all``)."""
    if layers not in LAYER_MODES:
        raise UserError(f"layers must be one of {', '.join(LAYER_MODES)}, got {layers!r}")
    if layers == "fc8":
        return []
    if layers == "fc6-8":
        if not trunk.has_fc:
            raise UserError(f"layers=fc6-8: this encoder ({trunk.kind}) has no fc6/fc7; use fc8 or all")
        return trunk.fc_group_names()
    return list(trunk.groups())


def build_optimizer(model: VOCClassifier, cfg: CaffeSolver) -> torch.optim.SGD:
    """SGD over the trainable groups with the reference multipliers (module docstring): every group, fc8 included,
    at lr x1 (a split conv1 ab branch at ``ab_lr_mult``), biases at ``bias_lr_mult``, decay x
    ``bias_decay_mult``."""
    mods = [(name, module, cfg.ab_lr_mult if name == "conv1_ab" else 1.0)
            for name, module in model.trunk.groups().items()]
    mods.append(("fc8", model.fc8, 1.0))
    groups = caffe_param_groups(mods, cfg.weight_decay, bias_lr_mult=cfg.bias_lr_mult,
                                bias_decay_mult=cfg.bias_decay_mult)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy with VOC labels (1 present, -1 absent, 0 ignored): the sum over non-ignored entries
    divided by the batch size (the reference's ``SigmoidCrossEntropyLoss(ignore_label)``)."""
    target = (labels > 0).to(logits.dtype)
    mask = (labels != 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (loss * mask).sum() / logits.shape[0]


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model: VOCClassifier, prepare: Any, dataset: VOCLabelledImages, views: int, device: torch.device,
            precision: str = "fp32", batch_images: int = 4, workers: int = 0, progress: bool = False,
            counter: SkipCounter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every readable image: the mean over its ``views`` crops of the fc8 outputs (N x 20), with the
    images' dataset indices. ``dataset``'s transform must return views x 3 x H x W (:class:`MultiView`)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_images, shuffle=False, num_workers=workers,
                        collate_fn=collate_skip)
    counter = counter if counter is not None else SkipCounter()
    scores, indices = [], []
    for batch in tqdm(loader, desc="testing", disable=not progress, leave=False):
        if counter.update(batch) == 0:
            continue
        img = batch["image"].to(device)  # B x V x 3 x H x W
        b, v = img.shape[:2]
        x = prepare(img.flatten(0, 1))
        with autocast(device, precision):
            logits = model(x).float()
        scores.append(logits.reshape(b, v, -1).mean(1).cpu())
        indices.append(batch["index"].cpu())
    if not scores:
        raise UserError("classification: none of the test images could be read")
    return torch.cat(scores).numpy().astype(np.float64), torch.cat(indices).numpy()


def score(scores: np.ndarray, labels: np.ndarray, bootstrap: BootstrapConfig | None = None) -> dict[str, Any]:
    """Both AP metrics (in percent), per class and their mean over the 20 classes, labelled.

    A class without positive test images has AP 0 (as the devkit and scikit-learn report it); such classes are
    listed, and ``map_present`` averages the other classes only. With ``bootstrap``, the headline metric
    (scikit-learn AP) gets its intervals over test images (``map_ci``, and ``ap_ci``: class -> [lo, hi];
    :func:`xchannel.metrics.uncertainty.classification_map_interval`) and ``chance`` the mAP of random scores on
    the same labels (:func:`xchannel.metrics.uncertainty.chance_map`).
    """
    out: dict[str, Any] = {}
    absent = [VOC_CLASSES[c] for c in range(labels.shape[1]) if not (labels[:, c] > 0).any()]
    for metric in ("sklearn", "voc07"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            ap = voc_cls_ap(scores, labels, metric=metric) * 100.0
        present = [i for i, c in enumerate(VOC_CLASSES) if c not in absent]
        out[metric] = {"label": METRIC_LABELS[metric], "map": float(ap.mean()),
                       "map_present": float(ap[present].mean()) if present else float("nan"),
                       "ap": {c: float(a) for c, a in zip(VOC_CLASSES, ap)}}
    if bootstrap is not None:
        interval, per_class = classification_map_interval(scores, labels, bootstrap)
        out["sklearn"]["map_ci"] = interval.to_dict()
        out["sklearn"]["ap_ci"] = {c: [iv.lo, iv.hi] for c, iv in zip(VOC_CLASSES, per_class)}
        out["chance"] = chance_map(labels, bootstrap.resamples, bootstrap.seed)
    out["classes_without_positives"] = absent
    out["units"] = "percent"
    return out


# --------------------------------------------------------------------------------------------------------------
# The task


def run_task(cfg: Config, prepared: PreparedEncoder | None = None) -> dict[str, Any]:
    """Fine-tune and test (module docstring); write the result JSON to ``cfg.out`` (default
    ``results/pascal/cls-<layers>_<encoder>_<input mode>.json``) and return it.

    ``prepared`` may hand in an already prepared encoder (it is trained in place); otherwise
    :func:`~xchannel.pascal.prepare.prepare_encoder` builds it from the config.
    """
    cfg.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg, precision = resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    name = dataset_name(cfg.voc)
    train_ds = VOCLabelledImages(cfg.voc, cfg.year, cfg.train_split, clip_boxes=cfg.clip_boxes)  # transforms below
    test_ds = VOCLabelledImages(cfg.voc, cfg.year, cfg.test_split, clip_boxes=cfg.clip_boxes)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise UserError(f"{cfg.voc}: VOC{cfg.year} {cfg.train_split} has {len(train_ds)} and {cfg.test_split} "
                        f"{len(test_ds)} images; both must be non-empty")

    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=cfg.year,
                                   split=cfg.train_split, rescale=cfg.rescale, seed=cfg.seed,
                                   ab_branch=cfg.ab_branch, dropout=cfg.dropout, device=device)
    t_prepare = time.perf_counter() - t0
    encoder, trunk = prepared.encoder, prepared.trunk
    # the training stream (head init, crops, dropout) must not depend on how the encoder was built (loading
    # and converting networks may draw from the global RNG)
    torch.manual_seed(cfg.seed)
    crop = cfg.data.crop or trunk.crop
    if trunk.has_fc and crop != trunk.crop:
        raise UserError(f"data.crop={crop}: this encoder's fc6 needs {trunk.crop} px inputs")
    aug = RandomScaleCrop(crop, cfg.data.min_scale, cfg.data.max_scale, cfg.data.mirror)
    train_ds.transform = aug
    test_ds.transform = MultiView(aug, cfg.data.test_crops)

    model = VOCClassifier(trunk, len(VOC_CLASSES), cfg.dropout, seed=cfg.seed).to(device)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    frozen = freeze_groups(trunk, trainable_groups(trunk, cfg.layers))
    optimizer = build_optimizer(model, cfg.optim)
    params = trainable_parameters(model)

    o = cfg.optim
    train_counter, test_counter = SkipCounter(), SkipCounter()
    batches = endless_batches(train_ds, o.batch_size, cfg.seed, cfg.workers, counter=train_counter)
    history: list[dict[str, Any]] = []
    window = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
    images_seen = 0
    t0 = time.perf_counter()
    bar = tqdm(range(o.iterations), desc=f"cls {cfg.layers}", disable=not cfg.progress, leave=False)
    for it in bar:
        lr = step_lr(o.lr, it, o.lr_step, o.lr_gamma)
        set_lr(optimizer, lr)
        set_train_mode(model)
        batch = next(batches)
        x = encoder.prepare(batch["image"].to(device, non_blocking=True)).contiguous(memory_format=memory)
        labels = batch["labels"].to(device)
        with autocast(device, cfg.precision):
            logits = model(x)
        loss = multilabel_loss(logits, labels)
        check_finite(loss, it, "classification")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(params, o.clip_gradients)
        optimizer.step()
        images_seen += len(labels)
        window["loss"] += float(loss.detach())
        window["grad_norm"] += norm
        window["n"] += 1
        if (it + 1) % max(1, cfg.log_every) == 0 or it + 1 == o.iterations:
            n = window["n"]
            history.append({"iteration": it + 1, "lr": lr, "loss": window["loss"] / n,
                            "grad_norm": window["grad_norm"] / n,
                            "seconds": round(time.perf_counter() - t0, 2)})
            bar.set_postfix(loss=f"{window['loss'] / n:.4f}")
            window = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores, idx = predict(model, lambda rgb: encoder.prepare(rgb).contiguous(memory_format=memory), test_ds,
                          cfg.data.test_crops, device, cfg.precision, workers=cfg.workers,
                          progress=cfg.progress, counter=test_counter)
    labels = test_ds.labels[idx]
    metrics = score(scores, labels, cfg.bootstrap)
    t_test = time.perf_counter() - t0

    column = {"fc8": "cls_fc8", "fc6-8": "cls_fc6-8", "all": "cls_all"}[cfg.layers]
    protocol = {
        "name": "VOC2007 classification (Krähenbühl et al. voc-classification; the paper's Table 2)",
        "train": f"VOC{cfg.year} {cfg.train_split}", "test": f"VOC{cfg.year} {cfg.test_split}",
        "fine_tuned": cfg.layers, "frozen_groups": frozen,
        "loss": "sigmoid cross-entropy, difficult (0) labels ignored, sum / batch size",
        "solver": o.describe(),
        "param_groups": describe_param_groups(optimizer),
        "multiplier_source": "Krähenbühl et al., voc-classification src/train_cls.py: setLR(t, 1, 2) and "
                             "setDecay(t, 1, 1) for every trained layer",
        "augmentation": repr(aug), "test_views": cfg.data.test_crops, "test_view_reduction": "mean of fc8 outputs",
        "fc8_init": {"std": FC8_INIT_STD, "bias": FC8_INIT_BIAS}, "dropout": cfg.dropout,
        "input_mode": encoder.input_mode, "precision": precision, "channels_last": cfg.channels_last,
        "paper_reference_map": {"Ours (gray)": {"fc8": 52.4, "fc6-8": 61.5, "all": 65.9},
                                "Ours (color)": {"fc8": 52.4, "fc6-8": 61.5, "all": 65.6}},
    }
    data = {"name": name, "voc": str(cfg.voc), "year": str(cfg.year),
            "train": {"split": cfg.train_split, "images": len(train_ds), "skipped": train_counter.summary()},
            "test": {"split": cfg.test_split, "images": len(test_ds), "evaluated": int(len(idx)),
                     "skipped": test_counter.summary()}}
    result = result_record(
        task="classification", column=column, cfg=cfg, prepared=prepared, protocol=protocol, metrics=metrics,
        headline={"metric": "sklearn", "value": metrics["sklearn"]["map"],
                  "uncertainty": metrics["sklearn"]["map_ci"], "chance": metrics["chance"],
                  "label": f"VOC07 classification mAP ({cfg.layers}), % (scikit-learn AP)"},
        data=data, history=history,
        timing={"seconds": round(time.perf_counter() - t_start, 2), "prepare_seconds": round(t_prepare, 2),
                "train_seconds": round(t_train, 2), "test_seconds": round(t_test, 2),
                "train_images_per_s": round(images_seen / max(t_train, 1e-9), 2)})
    out = cfg.out or str(default_output(f"cls-{cfg.layers}", prepared.record.get("name", "encoder"),
                                        encoder.input_mode))
    stem = out[:-5] if out.endswith(".json") else out
    if cfg.save_scores:
        result["scores_file"] = save_scores(stem + ".scores.npz", [test_ds.ids[i] for i in idx], scores, labels)
    if cfg.save_model:
        atomic_torch_save({"state_dict": model.state_dict(), "config": result["config"]}, stem + ".pt")
        result["model"] = stem + ".pt"
    write_result(out, result)
    return result


def save_scores(path: str | Path, ids: list[str], scores: np.ndarray, labels: np.ndarray) -> str:
    """The test scores (N x 20, mean fc8 outputs), image ids and VOC labels as an ``.npz`` file (atomically), so
    that a run can be re-scored with any metric (e.g. ``voc_cls_ap(..., metric="voc12")``)."""
    with atomic_write(path, "wb") as f:
        np.savez(f, ids=np.array(ids), scores=scores.astype(np.float32), labels=labels.astype(np.int8),
                 classes=np.array(VOC_CLASSES))
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# Command line (``xchannel pascal cls``)

DESCRIPTION = f"""\
Fine-tune an encoder on VOC2007 trainval and test on VOC2007 test (20-way multi-label), as Table 2 of the paper:
fc8 only, fc6-8, or all layers. Protocol of Krähenbühl et al.: SGD momentum 0.9, batch 16, lr 1e-3 halved every
10k iterations, 80k iterations, weight decay 1e-6, gradient clipping 10, every trained layer at lr x1 (biases
x2), random rescale 0.5-2 + 227 px crops +
mirroring, 10 random test crops averaged; the encoder is rescaled first (Krähenbühl et al. 2016).

  xchannel pascal cls runs/alexnet/ckpt_00450000.pt --voc VOCdevkit --layers fc6-8 --input-mode color
  xchannel pascal cls kmeans --voc VOCdevkit --layers all --set optim.iterations=20000

Reports mAP (scikit-learn AP, the paper's) and the VOC2007 devkit's 11-point mAP.
Layer modes: {', '.join(LAYER_MODES)}. --preset demo: the embedded data set in under a minute."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    add_preset_argument(p, PRESETS)
    p.add_argument("--layers", choices=list(LAYER_MODES), help="what to fine-tune (default all)")
    add_clip_boxes_argument(p)
    p.add_argument("--ab-branch", action="store_true", default=None,
                   help="color input: conv1's ab weights as a separate branch")


def config_from(args: argparse.Namespace) -> Config:
    return config_from_args(Config, args, {"layers": "layers", "ab_branch": "ab_branch",
                                           "clip_boxes": "clip_boxes"}, PRESETS)


def run(args: argparse.Namespace) -> int:
    result = run_task(config_from(args))
    m = result["metrics"]
    print(f"VOC{result['config']['year']} classification ({result['config']['layers']}, "
          f"{result['encoder']['input_mode']}): mAP {m['sklearn']['map']:.1f} (scikit-learn AP), "
          f"{m['voc07']['map']:.1f} (VOC07 11-point); 95 % interval over test images "
          f"[{m['sklearn']['map_ci']['ci95'][0]:.1f}, {m['sklearn']['map_ci']['ci95'][1]:.1f}]; random scores "
          f"{m['chance']['mean']:.1f} [{m['chance']['range95'][0]:.1f}, {m['chance']['range95'][1]:.1f}]")
    if m["classes_without_positives"]:
        print(f"  classes without positive test images (AP 0): {', '.join(m['classes_without_positives'])}")
    print(f"result: {result['output']}")
    return 0


__all__ = ["AugmentConfig", "Config", "LAYER_MODES", "MultiView", "PRESETS", "RandomScaleCrop",
           "VOCClassifier", "VOCLabelledImages", "add_arguments", "build_optimizer", "config", "multilabel_loss",
           "predict", "reference_solver", "run", "run_task", "save_scores", "score", "trainable_groups"]
