"""What the PASCAL fine-tuning tasks share: the encoder cut for fine-tuning, rescaling, input modes, the
Caffe-style learning-rate policy and freezing, data iteration, the command line and the result record.

Encoder preparation (:func:`prepare_encoder`)
---------------------------------------------
1. :func:`xchannel.features.load_encoder` builds the encoder of the spec (any spec ``xchannel-probe`` accepts) in
   the requested input mode: ``gray`` (L), ``color`` (Lab; for a gray-trained network conv1 gets ab weights
   initialised to zero, the paper's "Ours (color)") or ``rgb``. A ``kmeans`` spec is initialised with
   Krähenbühl et al.'s k-means scheme on training images of the task (the k-means rows of Table 2).
2. :func:`build_trunk` cuts it into a :class:`Trunk`: the input normalisation, the convolutional stages
   (conv1 ... pool5) and, for the AlexNet family, the fully connected fc6 and fc7 that the tasks reuse. Our
   AlexNet's BatchNorm is folded into the layers (:func:`xchannel.convert.fold_batchnorm`, exact in eval mode):
   the paper's PASCAL nets are plain CaffeNets, and the rescaling below is defined for networks without it.
3. :func:`rescale_trunk` applies the data-dependent between-layer rescaling of Krähenbühl, Doersch, Donahue,
   Darrell (ICLR 2016; the paper's ref. [36]): Sec. 3.2, "We use the method from [36], which rescales the layers
   so they 'learn' at the same rate" (:func:`xchannel.models.init.rescale_`). The Gaussian baseline first gets
   their within-layer initialisation (``rescale.within_layer``, :func:`xchannel.models.init.normalise_layers_`),
   without which its activations vanish (fc7 ~1e-7) and it cannot learn. For the color variant of a gray
   network (conv1's ab weights exactly zero) the gray network is rescaled, so that "Ours (color)" starts from the
   same rescaled weights as "Ours (gray)".
4. With ``ab_branch`` (color input only) conv1 is split into the L convolution and a separate, bias-free ab
   convolution (:class:`SplitInputConv`), as in the authors' color-input segmentation nets: it computes the same
   function as the single Lab convolution but its parameters form their own group.

Fine-tuning policy
------------------
Learning rates follow Caffe's ``step`` policy, ``lr(it) = base_lr * gamma ** floor(it / stepsize)``
(:func:`step_lr`), with per-group multipliers (``lr_mult``; biases at ``bias_lr_mult`` times their layer's, Caffe's
usual 2x) set on every step (:func:`set_lr`). Frozen groups get ``requires_grad = False`` and their BatchNorm
layers (if any) keep their statistics (:func:`set_train_mode`); dropout runs in training mode everywhere, as in
Caffe, where a layer with ``lr_mult: 0`` still runs its train-phase dropout.

Result record (:func:`result_record`)
-------------------------------------
Every task writes one JSON (atomically): ``kind: "pascal"``, ``task``, ``table2_column`` (one of
:data:`TABLE2_COLUMNS`), ``headline`` (the Table 2 number in percent, with its metric's name), ``row`` (what a
Table 2 row groups by: encoder name, spec, input mode, data set name), ``protocol``, ``config``, ``encoder``
(its description plus the preparation steps applied), ``data``, ``metrics``, ``history``, ``timing``, ``code``
and ``created``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from xchannel.errors import UserError
from xchannel.features.encoders import Encoder, load_encoder, parse_spec
from xchannel.utils.config import add_config_arguments, build_config, from_dict, merge, to_dict
from xchannel.utils.io import atomic_write_json

T = TypeVar("T")

#: Table 2's columns: key -> (task, heading). Result records name theirs in ``table2_column``.
TABLE2_COLUMNS: dict[str, tuple[str, str]] = {
    "cls_fc8": ("classification", "Classification fc8 (% mAP)"),
    "cls_fc6-8": ("classification", "Classification fc6-8 (% mAP)"),
    "cls_all": ("classification", "Classification all (% mAP)"),
    "det": ("detection", "Detection (% mAP)"),
    "seg": ("segmentation", "Segmentation (% mIU)"),
}

INPUT_MODES = ("gray", "color", "rgb")


# --------------------------------------------------------------------------------------------------------------
# Configuration pieces shared by the tasks


#: ``rescale.within_layer`` values: ``auto`` normalises the layers of randomly initialised encoders whose
#: initialisation does not (the ``gaussian`` spec); ``always`` / ``never`` force it on / off.
WITHIN_LAYER = ("auto", "always", "never")


@dataclass
class RescaleConfig:
    """Krähenbühl et al.'s data-dependent rescaling before fine-tuning (the paper's Table 2 numbers use it).

    ``images`` training images (one center crop each at the trunk's input size) are the data of the rescaling
    and, for a ``kmeans`` encoder, of its k-means initialisation. ``iterations``, ``alpha`` and ``tol`` are those
    of the between-layer scale adjustment :func:`xchannel.models.init.rescale_` (with ``alpha = 1`` one step
    equalises an exactly homogeneous net). ``within_layer`` (one of :data:`WITHIN_LAYER`) first applies their
    within-layer initialisation (:func:`xchannel.models.init.normalise_layers_`: every channel's pre-activation
    to mean 0, variance 1 on the images), which the random Gaussian baseline needs: the between-layer step alone
    keeps the network's output scale, ~1e-7 for Gaussian weights through seven layers. ``enabled=false`` skips
    both steps.
    """

    enabled: bool = True
    images: int = 64
    iterations: int = 10
    alpha: float = 1.0
    tol: float = 0.01
    seed: int = 0
    within_layer: Literal["auto", "always", "never"] = "auto"

    def validate(self, where: str = "rescale") -> None:
        if self.within_layer not in WITHIN_LAYER:
            raise UserError(f"{where}.within_layer must be one of {', '.join(WITHIN_LAYER)} "
                            f"(got {self.within_layer!r})")
        if self.images < 1:
            raise UserError(f"{where}.images must be >= 1 (got {self.images})")
        if self.iterations < 0:
            raise UserError(f"{where}.iterations must be >= 0 (got {self.iterations})")
        if not 0 < self.alpha <= 1:
            raise UserError(f"{where}.alpha must be in (0, 1] (got {self.alpha})")


# --------------------------------------------------------------------------------------------------------------
# Data helpers


def dataset_name(voc_root: str | Path) -> str:
    """``"embedded"`` for a VOCdevkit written by :func:`xchannel.data.synthetic.make_dataset` (its
    ``manifest.json`` sits next to ``VOCdevkit``), else ``"PASCAL VOC"``. Table 2 labels our rows with it."""
    root = Path(voc_root)
    for cand in (root, root.parent, root.parent.parent):
        manifest = cand / "manifest.json"
        if manifest.is_file():
            try:
                gen = json.loads(manifest.read_text()).get("generator", "")
            except (OSError, ValueError):
                continue
            if str(gen).startswith("xchannel.data.synthetic"):
                return "embedded"
    return "PASCAL VOC"


def load_init_images(voc_root: str | Path, year: str | int, split: str, count: int, size: int,
                     seed: int = 0, image_set: str = "Main") -> tuple[torch.Tensor, dict]:
    """``count`` images of ``ImageSets/<image_set>/<split>.txt`` (a seeded random choice), each resized so that its
    shorter side is ``size`` and center-cropped to ``size`` x ``size``: float RGB in [0, 1], N x 3 x size x size.

    The data of the rescaling and of the k-means initialisation. Unreadable images are skipped and counted.
    Returns the batch and ``{"split", "requested", "used", "ids", "skipped"}``.
    """
    from xchannel.data.images import BadImageError, ResizeCenterCrop, SkipCounter, load_rgb
    from xchannel.data.voc import read_image_set, resolve_root

    ids = read_image_set(voc_root, year, split, image_set)
    if not ids:
        raise UserError(f"{resolve_root(voc_root, year) / 'ImageSets' / image_set / f'{split}.txt'}: no images")
    order = np.random.default_rng([seed, 7]).permutation(len(ids))
    transform = ResizeCenterCrop(size, resize=size, dtype=torch.float32)
    folder = resolve_root(voc_root, year) / "JPEGImages"
    counter = SkipCounter()
    images, used = [], []
    for i in order:
        if len(images) == count:
            break
        try:
            images.append(transform(load_rgb(folder / f"{ids[i]}.jpg")))
            used.append(ids[i])
        except BadImageError as err:
            counter.add(err.path, err.reason)
    if not images:
        raise UserError(f"{folder}: none of the {split} images could be read")
    return torch.stack(images), {"split": f"VOC{year} {image_set}/{split}", "requested": count, "used": len(images),
                                 "ids": used, **counter.summary()}


def endless_batches(dataset: Dataset, batch_size: int, seed: int, workers: int = 0,
                    collate: Callable | None = None, counter: Any = None) -> Iterator[dict]:
    """Batches drawn forever, epoch after epoch, each epoch a permutation seeded by (seed, epoch), as Caffe's data
    layers wrap around. Whole batches only (when the set holds at least one). Batches of nothing but bad images
    are skipped; ``counter`` (a :class:`~xchannel.data.images.SkipCounter`) records every bad image."""
    from xchannel.data.images import batch_size as good_samples, collate_skip

    if len(dataset) == 0:
        raise UserError("the training set is empty")
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers,
                            collate_fn=collate or collate_skip, drop_last=len(dataset) >= batch_size)
        for batch in loader:
            n = counter.update(batch) if counter is not None else good_samples(batch)
            if n:
                yield batch
        epoch += 1


# --------------------------------------------------------------------------------------------------------------
# Input handling


class SplitInputConv(nn.Module):
    """conv1 on Lab as two convolutions: ``l_conv(L) + ab_conv(ab)`` (the ab branch has no bias).

    Made from a Lab convolution ``conv`` by splitting its weights along the input channels, so it computes
    exactly the same function: the color model's ab weights (zero for the paper's "Ours (color)") move to the
    separate branch, which the tasks can train at its own rate.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.in_channels != 3 or conv.groups != 1:
            raise ValueError("SplitInputConv needs an ungrouped convolution over Lab (3 input channels)")
        kw = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        self.l_conv = nn.Conv2d(1, conv.out_channels, bias=conv.bias is not None, **kw)
        self.ab_conv = nn.Conv2d(2, conv.out_channels, bias=False, **kw)
        with torch.no_grad():
            self.l_conv.weight.copy_(conv.weight[:, :1])
            if conv.bias is not None:
                self.l_conv.bias.copy_(conv.bias)
            self.ab_conv.weight.copy_(conv.weight[:, 1:])
        self.to(conv.weight.device, conv.weight.dtype)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.l_conv.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.l_conv.stride

    @property
    def padding(self) -> Any:
        return self.l_conv.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.l_conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l_conv(x[:, :1]) + self.ab_conv(x[:, 1:])


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision == "bf16"`` (Lab conversion should stay outside it)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------------
# The trunk: an encoder cut for fine-tuning


class _TapStage(nn.Module):
    """The deepest tap of an encoder without fc6/fc7 (timm networks, the VGG colorizer) as one stage."""

    def __init__(self, encoder: Encoder, layer: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.taps(x, [self.layer])[self.layer]


class Trunk(nn.Module):
    """The pretrained part of an encoder that a PASCAL head is put on, as plain stages.

    ``forward(x)`` takes the encoder's prepared input (:meth:`Encoder.prepare`: L or Lab in natural units, or
    normalised RGB) and runs ``normalize`` (our AlexNet's fixed input scaling), the convolutional stages
    :attr:`conv` and the fully connected stages :attr:`fc` (fc6, fc7; empty for networks without them).
    The stages are the encoder's own modules (shared, not copied), registered in forward order, so
    :func:`xchannel.models.init.rescale_` applies to the trunk directly.

    Attributes: ``kind`` ("alexnet", "torchvision_alexnet" or "generic"), ``crop`` (the input side the fc
    stages need: 227 for CaffeNet, 224 for torchvision's AlexNet), ``fc_dim`` (fc7's width, or None),
    ``conv_dim`` (channels of the last convolutional map), ``stride`` (generic trunks: input pixels per cell of
    that map, from timm's ``feature_info`` or measured on a 256 px input; the AlexNet kinds' geometry comes from
    :meth:`spatial_layers`).
    """

    def __init__(self, kind: str, conv: "OrderedDict[str, nn.Module]", fc: "OrderedDict[str, nn.Module]",
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None, crop: int) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Sequential(conv)
        self.fc = nn.Sequential(fc)
        self._normalize = normalize
        self.crop = int(crop)
        self.fc_dim: int | None = None
        self.conv_dim: int | None = None
        self.stride: int | None = None  # input pixels per cell of the last map (generic trunks; measured)

    @property
    def has_fc(self) -> bool:
        return len(self.fc) > 0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._normalize is None else self._normalize(x)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared input -> the last convolutional map (pool5 for the AlexNet family)."""
        return self.conv(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv_features(x))

    def groups(self) -> "OrderedDict[str, nn.Module]":
        """Named parameter groups, shallow to deep: ``conv1`` ... ``conv5`` (our AlexNet; ``conv1_ab`` after it
        for a split Lab conv1), ``conv`` (torchvision's AlexNet), ``trunk`` (other encoders), then ``fc6``,
        ``fc7``."""
        out: OrderedDict[str, nn.Module] = OrderedDict()
        if self.kind == "alexnet":
            for name, module in self.conv.named_children():
                if not name.startswith("conv"):
                    continue
                conv = getattr(module, "conv", None)
                if name == "conv1" and isinstance(conv, SplitInputConv):
                    out["conv1"] = nn.ModuleList([conv.l_conv, *[m for n, m in module.named_children()
                                                                 if n != "conv"]])
                    out["conv1_ab"] = conv.ab_conv
                else:
                    out[name] = module
        elif self.kind == "torchvision_alexnet":
            out["conv"] = self.conv
        else:
            out["trunk"] = self.conv
        for name, module in self.fc.named_children():
            out[name] = module
        return out

    def dense_stages(self) -> nn.Sequential:
        """The convolutional stages that keep the spatial layout (all of :attr:`conv` but adaptive pools, e.g.
        torchvision's 6x6 ``avgpool``, which only fix the map size for the fc layers at the classification
        input size): FCN runs them on images of any size."""
        return nn.Sequential(OrderedDict((n, m) for n, m in self.conv.named_children()
                                         if not isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))))

    def fc_group_names(self) -> list[str]:
        return [n for n, _ in self.fc.named_children()]

    def conv_group_names(self) -> list[str]:
        return [n for n in self.groups() if n not in self.fc_group_names()]

    def input_conv(self) -> nn.Module:
        """The convolution that sees the input (conv1)."""
        for m in self.conv.modules():
            if isinstance(m, (nn.Conv2d, SplitInputConv)):
                return m
        raise UserError(f"trunk ({self.kind}): no input convolution found")

    def spatial_layers(self) -> list[nn.Module]:
        """The convolutions and pools of :attr:`conv` in forward order (their geometry places FCN outputs)."""
        if self.kind == "generic":
            raise UserError("the geometry of a generic encoder's layers is unknown")
        out = []
        skip: set[int] = set()
        for m in self.conv.modules():
            if id(m) in skip:
                continue
            if isinstance(m, SplitInputConv):
                skip.update(id(c) for c in (m.l_conv, m.ab_conv))
                out.append(m)
            elif isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                out.append(m)
        return out

    def fc_as_convolutions(self) -> "OrderedDict[str, nn.Sequential]":
        """fc6 and fc7 as convolutions over the conv map (FCN's "convolutionalization"): fc6's ``Linear(C*6*6,
        F)`` becomes a 6x6 ``Conv2d(C, F)`` (weights reshaped in C, H, W order, as ``nn.Flatten`` lays out
        pool5), fc7's ``Linear(F, F)`` a 1x1 convolution. Each keeps its ReLU and dropout, in their order. On a
        map of the classification size the result equals fc7's output at the single cell. New modules (copies
        of the weights) are returned."""
        if not self.has_fc:
            raise UserError(f"encoder ({self.kind}) has no fc6/fc7 to convert into convolutions")
        side = int(round(math.sqrt(self._pool_cells())))
        out: OrderedDict[str, nn.Sequential] = OrderedDict()
        for name, stage in self.fc.named_children():
            layers: list[tuple[str, nn.Module]] = []
            for child_name, m in stage.named_children():
                if isinstance(m, nn.Flatten):
                    continue
                if isinstance(m, nn.Linear):
                    k = side if name == self.fc_group_names()[0] else 1
                    conv = nn.Conv2d(m.in_features // (k * k), m.out_features, k)
                    with torch.no_grad():
                        conv.weight.copy_(m.weight.reshape(conv.weight.shape))
                        conv.bias.copy_(m.bias)
                    layers.append((child_name, conv.to(m.weight.device, m.weight.dtype)))
                elif isinstance(m, _BatchNorm):
                    raise UserError("fc layers with BatchNorm cannot be convolutionalised; fold it first")
                elif isinstance(m, (nn.ReLU, nn.Dropout, nn.Identity)):
                    layers.append((child_name, type(m)(**({"p": m.p} if isinstance(m, nn.Dropout) else {}))))
                else:
                    raise UserError(f"fc stage {name}: cannot convolutionalise a {type(m).__name__}")
            out[name] = nn.Sequential(OrderedDict(layers))
        return out

    def _pool_cells(self) -> int:
        first = next(m for m in self.fc.modules() if isinstance(m, nn.Linear))
        if self.conv_dim is None or first.in_features % self.conv_dim:
            raise UserError(f"trunk ({self.kind}): fc6 takes {first.in_features} inputs, not a multiple of the "
                            f"{self.conv_dim} conv channels")
        return first.in_features // self.conv_dim


def build_trunk(encoder: Encoder, dropout: float = 0.5) -> Trunk:
    """Cut ``encoder`` into a :class:`Trunk` (see the module docstring).

    The encoder makes the cut (:meth:`~xchannel.features.encoders.Encoder.trunk_cut`: our AlexNet gives conv1 ...
    conv5, fc6, fc7 with BatchNorm folded and drop6 at ``dropout``; torchvision's AlexNet its ``features`` and
    its classifier's fc6, fc7). An encoder without a cut (timm networks, the VGG colorizer) gives its deepest tap
    as one ``trunk`` stage, no fc stages (classification puts its classifier on the globally averaged map).
    """
    cut = encoder.trunk_cut(dropout)
    if cut is not None:
        trunk = Trunk(cut.kind, cut.conv, cut.fc, cut.normalize, cut.crop)
        trunk.conv_dim, trunk.fc_dim = cut.conv_dim, cut.fc_dim
        return trunk
    layer = encoder.layer_names[-1]
    trunk = Trunk("generic", OrderedDict(trunk=_TapStage(encoder, layer)), OrderedDict(), None,
                  encoder.default_crop)
    side = 256  # a multiple of the usual strides (8 ... 64)
    with torch.no_grad():
        probe = trunk(encoder.prepare(torch.full((1, 3, side, side), 0.5)))
    trunk.conv_dim = int(probe.shape[1])
    info = encoder.info.get("feature_info") or []
    if info and info[-1].get("reduction"):
        trunk.stride = int(info[-1]["reduction"])
    elif probe.ndim == 4 and side % probe.shape[-1] == 0:
        trunk.stride = side // int(probe.shape[-1])
    return trunk


def add_ab_branch(trunk: Trunk) -> None:
    """Split conv1 of a Lab AlexNet trunk into an L convolution and a separate ab branch (:class:`SplitInputConv`).
    The function is unchanged; the ab branch becomes the ``conv1_ab`` group."""
    if trunk.kind != "alexnet":
        raise UserError("the separate ab branch applies to xchannel AlexNets with color (Lab) input")
    conv1 = trunk.conv.conv1
    if not isinstance(conv1.conv, nn.Conv2d) or conv1.conv.in_channels != 3:
        raise UserError("the separate ab branch needs color (Lab) input: use input_mode=color")
    conv1.conv = SplitInputConv(conv1.conv)


def _ab_weights_zero(trunk: Trunk) -> bool:
    conv = trunk.input_conv()
    return isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and bool((conv.weight[:, 1:] == 0).all())


def within_layer_applies(spec_kind: str, cfg: RescaleConfig) -> bool:
    """Whether :func:`rescale_trunk` runs the within-layer initialisation for an encoder of kind ``spec_kind``
    (the part of the spec before ``:``): ``always``; or ``auto`` and a Gaussian random initialisation (k-means
    normalises its layers itself; a trained network's scales are part of what it learned)."""
    return cfg.within_layer == "always" or (cfg.within_layer == "auto" and spec_kind == "gaussian")


def rescale_trunk(trunk: Trunk, x: torch.Tensor, cfg: RescaleConfig, within_layer: bool = False) -> dict:
    """Krähenbühl et al.'s data-dependent rescaling of the trunk's affine layers (conv1 ... fc7), in place, on the
    prepared input ``x``.

    1. With ``within_layer``, their within-layer initialisation (:func:`xchannel.models.init.normalise_layers_`):
       layer by layer, every output channel's pre-activation gets mean 0 and variance 1 on ``x``.
    2. Their between-layer scale adjustment (:func:`xchannel.models.init.rescale_`): the rate of layer k,
       C_k = E[||grad W_k||^2] / ||W_k||^2 for the loss eta . fc7(x) with a fixed random direction eta, is made
       equal for all layers; fc7's output is unchanged.

    For a Lab conv1 whose ab weights are all zero (a gray network given color input) the L-only network is
    rescaled, on the L channel of ``x``, and the ab weights stay zero: the color variant starts from exactly the
    rescaled gray network. Returns the report of ``rescale_`` plus ``{"on": "gray network" | "as loaded"}`` and,
    with ``within_layer``, ``"within_layer"`` (the median channel std of each layer's output before it was
    normalised).
    """
    from xchannel.models.init import normalise_layers_, rescale_

    if trunk.kind not in ("alexnet", "torchvision_alexnet"):
        raise UserError("the data-dependent rescaling applies to AlexNet-family encoders without BatchNorm "
                        "(xchannel AlexNets, gaussian, kmeans, torchvision-alexnet); for this encoder use --no-rescale "
                        "(rescale.enabled=false)")

    def adjust(model: nn.Module, data: torch.Tensor) -> dict:
        within = normalise_layers_(model, data) if within_layer else None
        report = rescale_(model, data, iters=cfg.iterations, alpha=cfg.alpha, tol=cfg.tol, seed=cfg.seed)
        if within is not None:
            report["within_layer"] = {"method": "Krähenbühl et al. 2016, within-layer initialisation (mean 0, "
                                                "variance 1 per channel)", "std_before": within["std_before"]}
        return report

    conv1 = trunk.conv.conv1 if trunk.kind == "alexnet" else None
    if conv1 is not None and _ab_weights_zero(trunk):
        lab = conv1.conv
        gray = nn.Conv2d(1, lab.out_channels, lab.kernel_size, stride=lab.stride, padding=lab.padding,
                         groups=lab.groups).to(lab.weight.device, lab.weight.dtype)
        with torch.no_grad():
            gray.weight.copy_(lab.weight[:, :1])
            gray.bias.copy_(lab.bias)
        conv1.conv = gray
        normalize = trunk._normalize
        trunk._normalize = lambda t: normalize(t)[:, :1]  # the gray network sees the normalised L channel
        try:
            report = adjust(trunk, x)
        finally:
            conv1.conv = lab
            trunk._normalize = normalize
        with torch.no_grad():
            lab.weight[:, :1].copy_(gray.weight)
            lab.bias.copy_(gray.bias)
        report["on"] = "gray network (conv1's ab weights are zero and stay zero)"
    else:
        report = adjust(trunk, x)
        report["on"] = "as loaded"
    return report


@dataclass
class PreparedEncoder:
    """What :func:`prepare_encoder` returns: the encoder (for ``prepare`` and identity), its trunk, and the
    record of what was done to it (``encoder`` in the result JSON)."""

    encoder: Encoder
    trunk: Trunk
    record: dict[str, Any] = field(default_factory=dict)


def prepare_encoder(spec: str, input_mode: str | None, *, voc_root: str | Path, year: str | int, split: str,
                    rescale: RescaleConfig, seed: int = 0, ab_branch: bool = False, dropout: float = 0.5,
                    device: torch.device | str = "cpu", image_set: str = "Main") -> PreparedEncoder:
    """Load, cut, (k-means initialise,) rescale and (ab-branch) an encoder for fine-tuning (module docstring).

    ``voc_root``/``year``/``image_set``/``split`` name the training images used for the k-means initialisation
    and the rescaling (``rescale.images`` of them, center crops at the trunk's input size).
    """
    if input_mode is not None and input_mode not in INPUT_MODES:
        raise UserError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
    if ab_branch and input_mode != "color":
        raise UserError("ab_branch=true needs input_mode=color (the ab branch sees the ab channels)")
    rescale.validate()
    kind, _ = parse_spec(spec)
    cache: dict[int, tuple[torch.Tensor, dict]] = {}

    def images(size: int) -> tuple[torch.Tensor, dict]:
        if size not in cache:
            cache[size] = load_init_images(voc_root, year, split, rescale.images, size, seed=rescale.seed,
                                           image_set=image_set)
        return cache[size]

    init_info = None
    if kind == "kmeans":
        from xchannel.models.alexnet import TRANSFER_INPUT

        x0, init_info = images(TRANSFER_INPUT)
        encoder = load_encoder(spec, input_mode=input_mode, geometry="transfer", seed=seed, init_data=x0)
    else:
        encoder = load_encoder(spec, input_mode=input_mode, geometry="transfer", seed=seed)
    record = encoder.describe()
    steps: list[dict[str, Any]] = []
    if init_info is not None:
        steps.append({"step": "kmeans_init", "images": {k: v for k, v in init_info.items() if k != "ids"}})
    trunk = build_trunk(encoder, dropout=dropout)
    if trunk.kind == "alexnet" and record.get("hparams", {}).get("batchnorm"):
        steps.append({"step": "fold_batchnorm"})
    trunk = trunk.to(device)
    if rescale.enabled:
        x, info = images(trunk.crop)
        with torch.no_grad():
            prepared = encoder.prepare(x.to(device))
        within = within_layer_applies(kind, rescale)
        report = rescale_trunk(trunk, prepared, rescale, within_layer=within)
        method = "Krähenbühl et al. 2016, " + ("within-layer initialisation, then " if within else "")
        steps.append({"step": "rescale", "method": method + "between-layer scale adjustment",
                      **report, "images": {k: v for k, v in info.items() if k != "ids"}})
    if ab_branch:
        add_ab_branch(trunk)
        steps.append({"step": "ab_branch", "note": "conv1 split into L and a separate bias-free ab branch"})
    record["preparation"] = steps
    record["trunk"] = {"kind": trunk.kind, "crop": trunk.crop, "groups": list(trunk.groups()),
                       "conv_dim": trunk.conv_dim, "fc_dim": trunk.fc_dim}
    return PreparedEncoder(encoder=encoder.to(device), trunk=trunk, record=record)


# --------------------------------------------------------------------------------------------------------------
# Fine-tuning policy: freezing, learning rates, gradient clipping


def freeze_groups(trunk: Trunk, trainable: Sequence[str]) -> list[str]:
    """Freeze every group of the trunk not named in ``trainable`` (``requires_grad = False``); returns the frozen
    names. Unknown names are an error listing the groups."""
    groups = trunk.groups()
    unknown = [n for n in trainable if n not in groups]
    if unknown:
        raise UserError(f"unknown layer group(s) {unknown}; this encoder's groups: {', '.join(groups)}")
    frozen = []
    for name, module in groups.items():
        on = name in trainable
        for p in module.parameters():
            p.requires_grad_(on)
        if not on:
            frozen.append(name)
    return frozen


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen, which stay in eval mode (their
    running statistics are part of the frozen representation)."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def caffe_param_groups(modules: Sequence[tuple[nn.Module, float]], weight_decay: float,
                       bias_lr_mult: float = 2.0, bias_decay_mult: float = 1.0) -> list[dict]:
    """SGD parameter groups as Caffe's ``param { lr_mult decay_mult }``: for each (module, lr_mult), its weights
    at ``lr_mult`` and its biases (1-D parameters) at ``lr_mult * bias_lr_mult``; weight decay times
    ``bias_decay_mult`` for biases. Frozen parameters and parameters listed twice are left out. Use with
    :func:`set_lr`."""
    seen: set[int] = set()
    groups: list[dict] = []
    for module, mult in modules:
        weights, biases = [], []
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (biases if p.ndim == 1 else weights).append(p)
        if weights:
            groups.append({"params": weights, "lr_mult": float(mult), "weight_decay": weight_decay})
        if biases:
            groups.append({"params": biases, "lr_mult": float(mult) * bias_lr_mult,
                           "weight_decay": weight_decay * bias_decay_mult})
    return groups


def step_lr(base_lr: float, iteration: int, stepsize: int, gamma: float) -> float:
    """Caffe's ``step`` policy: ``base_lr * gamma ** floor(iteration / stepsize)`` (``stepsize <= 0``: fixed)."""
    if stepsize <= 0:
        return base_lr
    return base_lr * gamma ** (iteration // stepsize)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group["lr_mult"]``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Caffe's ``clip_gradients``: scale all gradients by ``max_norm / ||g||`` when their global L2 norm exceeds
    ``max_norm`` (``max_norm <= 0``: no clipping). Returns the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm <= 0:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def check_finite(loss: torch.Tensor, iteration: int, task: str) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"{task}: the loss became {float(loss)} at iteration {iteration}; lower the learning rate "
                        f"(optim.lr) or check the data")


# --------------------------------------------------------------------------------------------------------------
# Results


def code_version() -> dict[str, Any]:
    """The xchannel version and git commit (shared with the probe's results)."""
    from xchannel.probe.run import code_version as _code_version

    return _code_version()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "encoder"


def default_output(task: str, encoder_name: str, input_mode: str, suffix: str = "") -> Path:
    """``results/pascal/<task>_<encoder>_<input mode>[_<suffix>].json``."""
    parts = [task, slug(encoder_name), input_mode] + ([suffix] if suffix else [])
    return Path("results") / "pascal" / ("_".join(parts) + ".json")


def result_record(*, task: str, column: str, cfg: Any, prepared: PreparedEncoder, protocol: Mapping[str, Any],
                  metrics: Mapping[str, Any], headline: Mapping[str, Any], data: Mapping[str, Any],
                  history: Sequence[Mapping[str, Any]] = (), timing: Mapping[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The JSON record of one PASCAL run (see the module docstring for the keys). ``headline`` is
    ``{"metric": name, "value": percent, "label": human-readable}``, the number Table 2 shows."""
    if column not in TABLE2_COLUMNS:
        raise ValueError(f"unknown Table 2 column {column!r}; known: {', '.join(TABLE2_COLUMNS)}")
    enc = prepared.record
    return {
        "kind": "pascal",
        "task": task,
        "table2_column": column,
        "headline": dict(headline),
        "row": {"encoder": enc.get("name"), "spec": enc.get("spec"), "input_mode": enc.get("input_mode"),
                "weights_fingerprint": enc.get("weights_fingerprint"), "dataset": data.get("name"),
                "rescaled": any(s.get("step") == "rescale" for s in enc.get("preparation", []))},
        "protocol": dict(protocol),
        "config": to_dict(cfg),
        "encoder": enc,
        "data": dict(data),
        "metrics": dict(metrics),
        "history": list(history),
        "timing": dict(timing or {}),
        **extra,
        "code": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON atomically; returns the path (also stored in ``record["output"]``)."""
    path = Path(path)
    record["output"] = str(path)
    atomic_write_json(path, record)
    return path


# --------------------------------------------------------------------------------------------------------------
# Command line


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments every ``xchannel pascal TASK`` takes; flags override the ``--config`` YAML, ``--set`` overrides
    everything."""
    from xchannel.features.encoders import SPEC_HELP

    p.add_argument("encoder", nargs="?", help=f"encoder spec: {SPEC_HELP}")
    p.add_argument("--voc", help="VOCdevkit folder (or its parent)")
    p.add_argument("--input-mode", choices=list(INPUT_MODES),
                   help="gray (L), color (Lab; a gray network gets zero-initialised ab weights) or rgb "
                        "(default: the encoder's own)")
    p.add_argument("--iterations", type=int, help="training iterations")
    p.add_argument("--no-rescale", action="store_true", help="skip the data-dependent rescaling")
    p.add_argument("--within-layer", choices=list(WITHIN_LAYER),
                   help="before the rescaling, normalise every channel to mean 0, variance 1 (Krähenbühl et al.'s "
                        "within-layer initialisation); auto (default): for the gaussian spec only")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", "-o", help="result JSON (default results/pascal/<task>_<encoder>_<mode>.json)")
    add_config_arguments(p, "task Config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def add_preset_argument(p: argparse.ArgumentParser, presets: Mapping[str, Sequence[str]]) -> None:
    """``--preset NAME``: a named configuration (``paper``: the published protocol; ``demo``: the embedded data
    set in minutes), applied under ``--config``, the flags and ``--set``."""
    p.add_argument("--preset", choices=sorted(presets), default="paper",
                   help="paper (default): the published protocol; demo: small scales and few iterations for the "
                        "embedded data set")


def preset_config(cls: type[T], presets: Mapping[str, Sequence[str]], name: str, overrides: Sequence[str] = (),
                  **fields: Any) -> T:
    """Config ``cls`` of preset ``name`` (a list of ``key=value`` overrides of the defaults), then ``overrides``,
    then top-level ``fields`` (e.g. ``voc=..., encoder=..., out=...``)."""
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    cfg = build_config(cls, None, list(overrides), base=build_config(cls, None, list(presets[name])))
    data = to_dict(cfg)
    for key, value in fields.items():
        if key not in data:
            raise UserError(f"{cls.__module__}.{cls.__name__} has no field {key!r}")
        data[key] = value
    return from_dict(cls, data)


def config_from_args(cls: type[T], args: argparse.Namespace, flags: Mapping[str, str],
                     preset: Sequence[str] = ()) -> T:
    """Defaults <- ``preset`` (``key=value`` overrides, e.g. a task's ``PRESETS[args.preset]``) <- ``--config``
    YAML <- flags (``flags`` maps argparse attribute -> dotted config key; flags left unset are ignored) <-
    ``--set`` overrides. The common flags map onto ``encoder``, ``voc``, ``input_mode``, ``optim.iterations``,
    ``rescale.enabled``, ``rescale.within_layer``, ``seed``, ``device``, ``out`` and ``progress``."""
    common = {"encoder": "encoder", "voc": "voc", "input_mode": "input_mode", "iterations": "optim.iterations",
              "within_layer": "rescale.within_layer", "seed": "seed", "device": "device", "out": "out"}
    base = build_config(cls, None, list(preset))
    data = to_dict(build_config(cls, getattr(args, "config", None), base=base))
    for attr, key in {**common, **flags}.items():
        value = getattr(args, attr, None)
        if value is not None:
            data = merge(data, _nest(key, value))
    if getattr(args, "no_rescale", False):
        data = merge(data, _nest("rescale.enabled", False))
    if getattr(args, "no_progress", False):
        data = merge(data, {"progress": False})
    cfg = from_dict(cls, data)
    return build_config(cls, None, getattr(args, "overrides", []) or [], base=cfg)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    from xchannel.train.engine import resolve_device as _resolve

    try:
        return _resolve(name)
    except RuntimeError as err:
        raise UserError(f"device {name!r}: {err}") from None


__all__ = ["INPUT_MODES", "PreparedEncoder", "RescaleConfig", "SplitInputConv", "TABLE2_COLUMNS", "Trunk",
           "WITHIN_LAYER", "add_ab_branch", "add_common_arguments", "add_preset_argument", "autocast", "build_trunk",
           "caffe_param_groups", "check_finite", "clip_gradients", "code_version", "config_from_args",
           "dataset_name", "default_output", "endless_batches", "freeze_groups", "load_init_images",
           "prepare_encoder", "preset_config", "rescale_trunk", "resolve_device", "result_record", "set_lr",
           "set_train_mode", "slug", "step_lr", "trainable_parameters", "within_layer_applies", "write_result"]
