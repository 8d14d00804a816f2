"""The trunk: the pretrained part of an encoder that a PASCAL head is put on, as plain stages.

:class:`Trunk` holds the input normalisation, the convolutional stages (conv1 ... pool5) and, for the AlexNet family,
the fully connected fc6 and fc7 the tasks reuse; :class:`SplitInputConv` is conv1 over Lab split into an L and a
separate ab convolution. How an encoder is cut into a trunk is :func:`xchannel.pascal.encoder_cut.build_trunk`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from xchannel.errors import UserError
from xchannel.features.encoders import Encoder


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


__all__ = ["SplitInputConv", "Trunk"]
