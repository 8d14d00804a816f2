"""Linear-probe protocols: how each layer's activations are pooled, and how the classifiers are trained.

Fig. 7 of the paper freezes a network and trains one linear classifier per layer on ImageNet. The paper's text
says "Features are average-pooled, with equal kernel and stride sizes, until feature dimensionality is below 10k";
the numbers behind the figure (printed in the split-brain paper's Table 2, which ``xchannel/reports/published/
figure7.json`` holds) come from the authors' released probe, which resizes the maps instead. The rules give
different numbers, so each is a named preset:

``zhang16-release`` (the default: the protocol of the published numbers)
    The authors' released linear probe (``feature_learning_tests/linear/train_val.prototxt`` of
    ``richzhang/colorization``): Caffe ``Resize`` layers bring conv1 ... conv5 to 10x10, 6x6, 5x5, 5x5 and 6x6
    (96x10x10 = 9600, 256x6x6 = 9216, 384x5x5 = 9600, 384x5x5 = 9600, 256x6x6 = 9216 for the full-width
    CaffeNet). Here: bilinear resizing (``align_corners=False``, no anti-aliasing); the interpolation rule of the
    authors' Caffe ``Resize`` layer could not be checked, so this is the one remaining deviation. Layers of other
    networks (which the released probe does not define) get the paper's equal-kernel rule below.
``zhang16`` (the paper's sentence)
    Average pooling with kernel = stride = k, for the smallest k >= 1 that brings C x H' x W' below 10,000, with
    Caffe's rounding H' = ceil(H / k) (the last window may be partial and averages the pixels it covers; a
    ``floor`` option drops partial windows, H' = floor(H / k)). For the full-width CaffeNet at 227 px:
    conv1 96x55x55 -> k 6 -> 96x10x10 = 9600; conv2 256x27x27 -> k 5 -> 256x6x6 = 9216; conv3, conv4 384x13x13 ->
    k 3 -> 384x5x5 = 9600; conv5 256x13x13 -> k 3 -> 256x5x5 = 6400; pool5 256x6x6 = 9216 and fc6/fc7 (4096)
    are kept as they are. Not what produced the published numbers (conv5 differs most).
``goyal19``
    Overlapping average pools (kernel/stride) 19/4, 12/3, 9/1, 9/1, 8/1 for conv1-conv5 (floor rounding), as in the
    large-scale self-supervision benchmark of Goyal, Mahajan, Gupta, Misra (ICCV 2019) and VISSL's AlexNet
    ImageNet-1k linear benchmark: 96x10x10 = 9600, 256x6x6 = 9216, 384x5x5 = 9600, 384x5x5 = 9600,
    256x6x6 = 9216. Schedule as there: 28 epochs, SGD momentum 0.9 (Nesterov), weight decay 5e-4 on the weights
    (not biases), lr 0.01 divided by 10 after epochs 8, 16 and 24.

Every preset puts a BatchNorm without affine parameters (per channel, batch statistics in training, running
statistics at test) in front of its linear layer, as VISSL's ``eval_mlp`` head ("Zhang et al. style BN -> FC"), and
trains with SGD, momentum 0.9, weight decay 5e-4, lr 0.01 and x0.1 steps. The paper gives no schedule; the
zhang16-release and zhang16 presets use goyal19's, with the steps at the same fractions (8/28, 16/28, 24/28) of
however many epochs are run. Vector features (fc6, fc7, or any N x D tap) are never pooled, nor are maps a preset
does not list that are already below 10,000 dimensions (pool5: 256x6x6 = 9216).

A new protocol is one :class:`Protocol` in :data:`PROTOCOLS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.errors import UserError

DIM_LIMIT = 10_000
ROUNDINGS = ("ceil", "floor")


@dataclass(frozen=True)
class Schedule:
    """SGD for the linear heads: lr steps x ``gamma`` after the given fractions of the epochs."""

    epochs: int = 28
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (8 / 28, 16 / 28, 24 / 28)
    gamma: float = 0.1

    def milestone_epochs(self, epochs: int) -> list[int]:
        """The epochs after which the lr drops, for a run of ``epochs`` epochs (distinct, within the run)."""
        return sorted({e for e in (int(round(f * epochs)) for f in self.milestones) if 0 < e < epochs})


@dataclass(frozen=True)
class PoolSpec:
    """How one layer is reduced: ``kind`` is "identity", "avg" (kernel/stride/padding, ceil or floor rounding)
    or "bilinear" (output ``size``); ``in_shape`` and ``out_shape`` are per-image (C, H, W) or (D,)."""

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    ceil: bool = False
    size: int = 0

    @property
    def dim(self) -> int:
        return math.prod(self.out_shape)

    def describe(self) -> str:
        if self.kind == "avg":
            return f"avg k{self.kernel} s{self.stride}" + (f" p{self.padding}" if self.padding else "") + \
                (" ceil" if self.ceil else " floor")
        if self.kind == "bilinear":
            return f"bilinear {self.size}x{self.size}"
        return "none"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.out_shape), "dim": self.dim, "in_shape": list(self.in_shape),
                "pool": self.describe()}


class Pool(nn.Module):
    """The pooling of a :class:`PoolSpec` (N x C x H x W -> N x C x H' x W'; N x D passes through)."""

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.kind == "avg":
            return F.avg_pool2d(x, s.kernel, s.stride, s.padding, ceil_mode=s.ceil, count_include_pad=False)
        if s.kind == "bilinear":
            return F.interpolate(x, size=(s.size, s.size), mode="bilinear", align_corners=False)
        return x


def _avg_out(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Output length of a pool (PyTorch's rule, which with ceil rounding equals Caffe's for these cases: the last
    window must start inside the input or its left padding)."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def equal_kernel(shape: tuple[int, int, int], limit: int = DIM_LIMIT, ceil: bool = True) -> int:
    """The smallest k with C * out(H, k) * out(W, k) < ``limit``, out = ceil(n / k) (or floor(n / k))."""
    c, h, w = shape
    for k in range(1, max(h, w) + 1):
        oh, ow = (-(-h // k), -(-w // k)) if ceil else (h // k, w // k)
        if oh >= 1 and ow >= 1 and c * oh * ow < limit:
            return k
    raise UserError(f"zhang16 pooling: a {c}x{h}x{w} map cannot be average-pooled below {limit} dimensions "
                    f"({c} channels alone)")


@dataclass(frozen=True)
class Protocol:
    """A named pooling rule plus the classifier's schedule (see the module docstring)."""

    name: str
    description: str
    source: str
    pooling: str  # "equal" (zhang16), "fixed" (per-layer avg pools), "bilinear" (per-layer sizes)
    per_layer: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    limit: int = DIM_LIMIT
    schedule: Schedule = Schedule()
    equal_elsewhere: bool = False  # layers ``per_layer`` does not list get the equal-kernel rule (zhang16's)

    def pool_spec(self, layer: str, shape: tuple[int, ...], rounding: str = "ceil") -> PoolSpec:
        """The pooling of ``layer`` whose per-image activation has ``shape`` ((C, H, W) or (D,))."""
        shape = tuple(int(s) for s in shape)
        if rounding not in ROUNDINGS:
            raise UserError(f"pool rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if len(shape) == 1:
            return PoolSpec("identity", shape, shape)
        if len(shape) != 3:
            raise UserError(f"protocol {self.name}: layer {layer!r} has activations of shape {shape}; "
                            f"expected C x H x W or a vector")
        c, h, w = shape
        if self.pooling == "equal" or (self.equal_elsewhere and layer not in self.per_layer):
            ceil = rounding == "ceil"
            k = equal_kernel(shape, self.limit, ceil)
            if k == 1:
                return PoolSpec("identity", shape, shape)
            out = (c, _avg_out(h, k, k, 0, ceil), _avg_out(w, k, k, 0, ceil))
            return PoolSpec("avg", shape, out, kernel=k, stride=k, ceil=ceil)
        if layer not in self.per_layer:
            if c * h * w < self.limit:  # e.g. pool5 (256x6x6 = 9216): already below the limit, kept as it is
                return PoolSpec("identity", shape, shape)
            raise UserError(f"protocol {self.name} defines pooling for {', '.join(self.per_layer)} only, not for "
                            f"layer {layer!r}; use --protocol zhang16 for other layers")
        if self.pooling == "fixed":
            k, s, p = self.per_layer[layer]
            oh, ow = _avg_out(h, k, s, p, False), _avg_out(w, k, s, p, False)
            if oh < 1 or ow < 1 or k > max(h, w) + 2 * p:
                raise UserError(f"protocol {self.name}: layer {layer} is {h}x{w}, smaller than its {k}x{k} pool; "
                                f"the preset is defined for AlexNet at 227 px")
            return PoolSpec("avg", shape, (c, oh, ow), kernel=k, stride=s, padding=p, ceil=False)
        if self.pooling == "bilinear":
            (size,) = self.per_layer[layer]
            return PoolSpec("bilinear", shape, (c, size, size), size=size)
        raise ValueError(f"unknown pooling kind {self.pooling!r}")

    def pooler(self, layer: str, shape: tuple[int, ...], rounding: str = "ceil") -> Pool:
        return Pool(self.pool_spec(layer, shape, rounding))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source,
                "pooling": self.pooling, "per_layer": {k: list(v) for k, v in self.per_layer.items()},
                "limit": self.limit, "schedule": {**self.schedule.__dict__,
                                                  "milestones": list(self.schedule.milestones)}}


#: The protocol of the published numbers, and so the default of the probes and of Fig. 7.
DEFAULT_PROTOCOL = "zhang16-release"

PROTOCOLS: dict[str, Protocol] = {
    "zhang16-release": Protocol(
        name="zhang16-release",
        description="resize of conv1-conv5 to 10x10, 6x6, 5x5, 5x5, 6x6 (bilinear here; the authors' Caffe Resize "
                    "layer's interpolation unverified); BatchNorm (no affine) + linear",
        source="Zhang, Isola, Efros: the released linear probe of Colorful Image Colorization "
               "(richzhang/colorization, feature_learning_tests/linear/train_val.prototxt), which produced the "
               "published Fig. 7 numbers (split-brain autoencoders, CVPR 2017, Table 2)",
        pooling="bilinear",
        per_layer={"conv1": (10,), "conv2": (6,), "conv3": (5,), "conv4": (5,), "conv5": (6,)},
        equal_elsewhere=True,
    ),
    "zhang16": Protocol(
        name="zhang16",
        description="average pooling, kernel = stride, the smallest that brings each layer below 10,000 "
                    "dimensions (Caffe ceil rounding); BatchNorm (no affine) + linear",
        source="Zhang, Isola, Efros, Colorful Image Colorization, ECCV 2016, Sec. 3.2 / Fig. 7 caption (the text's "
               "rule, not the released probe)",
        pooling="equal",
    ),
    "goyal19": Protocol(
        name="goyal19",
        description="overlapping average pools k19/s4, k12/s3, k9/s1, k9/s1, k8/s1 on conv1-conv5; "
                    "BatchNorm (no affine) + linear",
        source="Goyal, Mahajan, Gupta, Misra, Scaling and Benchmarking Self-Supervised Visual Representation "
               "Learning, ICCV 2019; VISSL eval_alexnet_8gpu_transfer_in1k_linear",
        pooling="fixed",
        per_layer={"conv1": (19, 4, 0), "conv2": (12, 3, 0), "conv3": (9, 1, 0), "conv4": (9, 1, 0),
                   "conv5": (8, 1, 0)},
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"unknown probe protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["DEFAULT_PROTOCOL", "DIM_LIMIT", "PROTOCOLS", "Pool", "PoolSpec", "Protocol", "Schedule", "equal_kernel",
           "get_protocol"]
