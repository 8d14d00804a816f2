"""The split-brain autoencoder (Zhang, Isola, Efros, "Split-brain autoencoders: unsupervised learning by
cross-channel prediction", CVPR 2017).

The network is split along its channels into two half-width AlexNets (48-128-192-192-128 channels, fc 2048, at
width 1; no grouping inside a half: the halves are CaffeNet's two groups), each predicting one part of Lab from
the other, at the head cells of the fully convolutional ``pretext`` geometry:

* F1: L -> ab, cross-entropy over the 313 in-gamut ab bins of the colorization paper, against the 1-hot
  nearest bin ("we do not use class-rebalancing ... we use a 1-hot encoding");
* F2: ab -> L, cross-entropy over L quantised into 50 bins of width 2 on [0, 100] (:func:`lightness_bins`).

The loss is the sum of the two ((cl,cl)); images without colour (the gray mask: the loader's flag and the
released |a|, |b| rule) are masked from both, since ab -> L is degenerate on them. Ablations of the paper's
Table 2 are options: ``loss: reg`` ((reg,reg): L2 regression of ab / 110 and of (L - 50) / 100 instead);
``halves: L_to_ab`` or ``ab_to_L`` (one network at full width). The paper gives no solver for it; the configs use
the colorization network's.

Export (:meth:`SplitBrainTask.backbone`): the two halves merged into one Lab AlexNet whose layers are exactly
block-diagonal (:func:`merge_halves`): conv1's first half of filters reads L only, the second ab only; conv2,
conv4 and conv5 are the two groups of CaffeNet's grouped convolutions; conv3, fc6 and fc7 hold exact zeros off
the diagonal. So the benchmarks read a native colour network (as the released ``deploy_lab`` net) whose L half
never sees ab. A single ab -> L network is exported as a Lab network with zero L weights in conv1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.models.alexnet import AB_SCALE, L_CENTER, L_SCALE, AlexNet
from xchannel.pretext.base import HeldOut, PretextTask, unwrap
from xchannel.pretext.dense import at_head
from xchannel.pretext.lab_halves import ab_as_lab, check_halvable, merge_halves  # noqa: F401 (re-exported)
from xchannel.pretext.losses import l2_regression

L_BINS, L_BIN_WIDTH = 50, 2.0
HALVES = {"L_to_ab": ("L", "ab"), "ab_to_L": ("ab", "L")}  # half -> (input, predicted)


@dataclass
class SplitBrainConfig:
    loss: Literal["cl", "reg"] = "cl"  # (cl,cl): classification of both halves; (reg,reg): L2 regression
    halves: Literal["both", "L_to_ab", "ab_to_L"] = "both"  # both (split-brain) or one network at full width
    gray_threshold: float = 5.0  # images whose |a|, |b| never exceed this carry no colour and no loss


def lightness_bins(L: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> its bin among 50 of width 2: floor(L / 2), with L = 100 in the last bin (int64)."""
    return torch.div(L, L_BIN_WIDTH, rounding_mode="floor").long().clamp_(0, L_BINS - 1)


@dataclass
class LabParts:
    """A batch on the device: L (N x 1 x H x W), ab (N x 2 x H x W) in natural units and the colour mask (N,)."""

    L: torch.Tensor
    ab: torch.Tensor
    has_color: torch.Tensor


class SplitBrainNet(nn.Module):
    """The trained networks: ``L_to_ab`` and / or ``ab_to_L`` (ModuleDict), each an :class:`AlexNet`."""

    def __init__(self, halves: dict[str, AlexNet]) -> None:
        super().__init__()
        self.halves = nn.ModuleDict(halves)

    def forward(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: net(parts[HALVES[name][0]]) for name, net in self.halves.items()}


class SplitBrainTask(PretextTask):
    name = "splitbrain"
    description = "two half-width AlexNets, L -> ab (313 bins) and ab -> L (50 bins); exported as one Lab net"
    paper = "Zhang, Isola, Efros, Split-Brain Autoencoders, CVPR 2017"
    Config = SplitBrainConfig

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.cfg.model.name != "alexnet":
            raise UserError(f"task splitbrain: trains the AlexNet backbone (model.name: alexnet), "
                            f"got {self.cfg.model.name!r}")
        both = self.opt.halves == "both"
        width = self.cfg.model.width
        if both:
            check_halvable(width, self.name)
        outputs = {"L_to_ab": C.Q, "ab_to_L": L_BINS} if self.opt.loss == "cl" else {"L_to_ab": 2, "ab_to_L": 1}
        names = list(HALVES) if both else [self.opt.halves]
        return SplitBrainNet({name: AlexNet(in_channels=1 if name == "L_to_ab" else 2,
                                            width=width / 2 if both else width, geometry="pretext",
                                            zero_init_ab=False, fc8_outputs=outputs[name], groups=1 if both else 2)
                              for name in names})

    def backbone(self, model: nn.Module) -> nn.Module:
        halves = unwrap(model).halves
        if self.opt.halves == "both":
            return merge_halves(halves["L_to_ab"], halves["ab_to_L"])
        if self.opt.halves == "ab_to_L":
            return ab_as_lab(halves["ab_to_L"])
        return halves["L_to_ab"]

    def heads(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """Each half's classifier (fc8), by half."""
        return {f"{name}.fc8": {k[len("fc8."):]: v for k, v in net.state_dict().items() if k.startswith("fc8.")}
                for name, net in unwrap(model).halves.items()}

    def init_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        lab = C.rgb_to_lab(images.to(self.device))
        return {"L": lab[:, :1], "ab": lab[:, 1:]}

    def kmeans_init(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        """Krähenbühl et al.'s initialisation of each half on its own input."""
        from xchannel.models.init import kmeans_init_

        inputs = [self.init_inputs(b) for b in images]
        for name, net in unwrap(model).halves.items():
            kmeans_init_(net, [x[HALVES[name][0]] for x in inputs])

    # -- data and objective --------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> LabParts:
        parts = self.init_inputs(batch["image"])
        mask = C.has_color(parts["ab"], self.opt.gray_threshold)
        if batch.get("has_color") is not None:
            mask &= batch["has_color"].to(mask.device).bool()
        return LabParts(self.memory_format(parts["L"]), self.memory_format(parts["ab"]), mask)

    def outputs_and_targets(self, model: nn.Module, batch: LabParts) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """half -> (its output, its target at the head cells): bin indices (cl) or natural-unit values (reg)."""
        outs = model({"L": batch.L, "ab": batch.ab})
        result = {}
        for name, out in outs.items():
            truth = at_head(unwrap(model).halves[name], getattr(batch, HALVES[name][1]), tuple(out.shape[-2:]))
            if self.opt.loss == "cl":
                with C.one_cpu_thread(truth.device):
                    target = C.nearest_bins(truth)[0][:, 0] if name == "L_to_ab" else lightness_bins(truth[:, 0])
            else:
                target = truth
            result[name] = (out, target)
        return result

    def loss(self, model: nn.Module, batch: LabParts) -> dict[str, torch.Tensor]:
        losses = {}
        keep = batch.has_color
        for name, (out, target) in self.outputs_and_targets(model, batch).items():
            if self.opt.loss == "cl":
                ce = F.cross_entropy(out.float(), target, reduction="none")  # N x h x w
                count = keep.sum().clamp_min(1) * ce.shape[1] * ce.shape[2]
                losses[f"ce_{name}"] = (ce * keep.view(-1, 1, 1).to(ce.dtype)).sum() / count
            elif name == "L_to_ab":
                losses["l2_L_to_ab"] = l2_regression(out.float() * AB_SCALE, target, keep)
            else:
                losses["l2_ab_to_L"] = l2_regression(out.float() * L_SCALE + L_CENTER, target, keep)
        return losses

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        """Per half: top-1 accuracy of the bin (cl) against the chance of always answering the most frequent bin
        of the same cells, or the L2 error (reg) against predicting the mean of the same cells."""
        right: dict[str, float] = {}
        counts: dict[str, torch.Tensor] = {}
        err: dict[str, float] = {}
        truths: dict[str, list[torch.Tensor]] = {}
        cells = 0
        held_out = HeldOut(model, batches, max_images)
        for batch in held_out:
            b = self.prepare(batch)
            keep = b.has_color
            for name, (out, target) in self.outputs_and_targets(model, b).items():
                if self.opt.loss == "cl":
                    t = target[keep]
                    right[name] = right.get(name, 0.0) + float((out.argmax(1)[keep] == t).sum())
                    n = C.Q if name == "L_to_ab" else L_BINS
                    counts[name] = counts.get(name, torch.zeros(n)) + torch.bincount(t.flatten().cpu(), minlength=n)
                else:
                    scale, shift = (AB_SCALE, 0.0) if name == "L_to_ab" else (L_SCALE, L_CENTER)
                    pred = out.float() * scale + shift
                    err[name] = err.get(name, 0.0) + float((pred - target).pow(2).sum(1)[keep].sum())
                    truths.setdefault(name, []).append(target[keep])
            cells += int(keep.sum()) * out.shape[-1] * out.shape[-2]
        if cells == 0:
            return {}
        result: dict[str, Any] = {"val_images": held_out.seen, "val_cells": cells}
        for name in unwrap(model).halves:
            if self.opt.loss == "cl":
                result[f"{name}_accuracy"] = right[name] / cells
                result[f"{name}_chance"] = float(counts[name].max()) / cells
            else:
                t = torch.cat(truths[name])
                result[f"{name}_l2"] = err[name] / cells
                result[f"{name}_chance_l2"] = float((t - t.mean((0, 2, 3), keepdim=True)).pow(2).sum(1).sum()) / cells
        return result
