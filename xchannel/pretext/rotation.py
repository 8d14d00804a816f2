"""Rotation prediction (RotNet; Gidaris, Singh, Komodakis, "Unsupervised representation learning by predicting
image rotations", ICLR 2018).

Every image of the batch is shown in all four rotations by multiples of 90 degrees (``torch.rot90``: exact, no
interpolation, no padding, so no border cue), and the network's 4-way fc8 on fc7 predicts which:
(1/4) sum_r CE(F(rot_r(x)), r). The crops are square (227 px, the transfer geometry), so a rotated crop is the
same size. ``all_four: false`` instead rotates each image once, by a quarter-turn count drawn from the step's
generator. Every layer conv1 ... fc7 is trained and transfers. Validation reports the rotation accuracy (chance
1/4) on the held-out images in all four rotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from xchannel.pretext.image_level import ImageClassificationTask, Labelled, lab_input

ROTATIONS = 4


@dataclass
class RotationConfig:
    input: Literal["gray", "color"] = "color"  # L or Lab (RotNet sees RGB, which Lab carries equally)
    all_four: bool = True  # the four rotations of every image in each batch (RotNet); false: one drawn per image
    dropout: float = 0.0  # before fc7 and fc8


def rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Each image ``x[i]`` (N x C x H x H) turned counter-clockwise by ``quarter_turns[i]`` x 90 degrees."""
    out = torch.empty_like(x)
    for k in range(ROTATIONS):
        sel = quarter_turns == k
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    return out


class RotationTask(ImageClassificationTask):
    name = "rotation"
    description = "which of 4 rotations (0, 90, 180, 270 degrees) an image shows; 4-way fc8 on fc7"
    paper = "Gidaris, Singh, Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018"
    Config = RotationConfig

    def num_classes(self) -> int:
        return ROTATIONS

    def inputs_and_labels(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> Labelled:
        """Inputs and their labels: label = the number of counter-clockwise quarter turns of that input."""
        x = lab_input(batch["image"], self.opt.input, self.device)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation needs square crops, got {x.shape[-2]}x{x.shape[-1]}")
        n = x.shape[0]
        if self.opt.all_four:
            y = torch.arange(ROTATIONS, device=x.device).repeat_interleave(n)
            return Labelled(torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)]), y)
        y = torch.randint(ROTATIONS, (n,), generator=gen, device=x.device)
        return Labelled(rotate(x, y), y)
