"""What the image-level classification tasks share (rotation, supervised labels): a CaffeNet in the 227 px
``transfer`` geometry whose fc8 classifies the whole image, on L or Lab input, trained with cross-entropy and
validated by its accuracy beside the chance level. Every layer conv1 ... fc7 is trained and transfers.

A task built on it (:class:`ImageClassificationTask`) says how many classes it has and how a batch becomes
inputs and labels (:meth:`~ImageClassificationTask.inputs_and_labels`).
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
from xchannel.pretext.base import ClassificationTask, HeldOut

INPUTS = {"gray": 1, "color": 3}  # input option -> AlexNet in_channels (L or Lab)


@dataclass
class Labelled:
    """A batch on the device: network inputs N x C x 227 x 227 (L or Lab) and their class labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor


def lab_input(images: torch.Tensor, space: Literal["gray", "color"], device: torch.device) -> torch.Tensor:
    """uint8 (or [0, 1] float) RGB N x 3 x H x W -> L (``gray``) or Lab (``color``) in natural units, on
    ``device``."""
    x = images.to(device, non_blocking=True)
    x = x if x.dtype == torch.uint8 else x.float()
    return C.rgb_to_lightness(x) if space == "gray" else C.rgb_to_lab(x)


class ImageClassificationTask(ClassificationTask):
    """Base of the image-level tasks; ``self.opt`` must have ``input`` (gray / color) and ``dropout``."""

    def inputs_and_labels(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> Labelled:
        raise NotImplementedError

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from xchannel.models import build_model

        self.require_alexnet()
        return build_model("alexnet", in_channels=INPUTS[self.opt.input], width=self.cfg.model.width,
                           geometry="transfer", dropout=self.opt.dropout, zero_init_ab=False,
                           fc8_outputs=self.num_classes())

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return lab_input(images, self.opt.input, self.device)

    # -- data and objective --------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> Labelled:
        b = self.inputs_and_labels(batch, gen)
        return Labelled(self.memory_format(b.x), b.y)

    def loss(self, model: nn.Module, batch: Labelled) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(model(batch.x).flatten(1).float(), batch.y)}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        """Top-1 accuracy on the held-out images (every input :meth:`prepare` makes of them) and the chance
        level."""
        right = total = 0
        gen = torch.Generator(device=self.device).manual_seed(0)  # the same draws at every validation
        held_out = HeldOut(model, batches, max_images)
        for batch in held_out:
            b = self.prepare(batch, gen)
            right += int((model(b.x).flatten(1).argmax(1) == b.y).sum())
            total += int(b.y.numel())
        if total == 0:
            return {}
        return {"accuracy": right / total, "chance": self.chance, "val_images": held_out.seen, "val_inputs": total}
