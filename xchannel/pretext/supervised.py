"""Supervised class labels: the "ImageNet labels" baseline of Fig. 7 and Table 2 (Krizhevsky, Sutskever, Hinton,
NIPS 2012), trained in the harness from the class folders of the training data, so the ceiling needs no downloaded
weights.

The CaffeNet (227 px, transfer geometry, dropout 0.5 before fc7 and fc8) is trained with cross-entropy over the
folder's classes. ``input: gray`` trains it on L alone: Fig. 7's dotted "gray" line is a network *trained* on gray
images, not a colour network fed gray ones. Every layer conv1 ... fc7 is trained and transfers. Validation reports
top-1 accuracy on the held-out folder (chance 1 / classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from xchannel.errors import UserError
from xchannel.pretext.image_level import ImageClassificationTask, Labelled, lab_input


@dataclass
class SupervisedConfig:
    input: Literal["gray", "color"] = "color"  # trained on L (Fig. 7's gray line) or Lab
    classes: int = 0  # number of classes; 0: the class folders of data.train
    dropout: float = 0.5  # before fc7 and fc8 (CaffeNet)


class SupervisedTask(ImageClassificationTask):
    name = "supervised"
    description = "the data's class labels (the 'ImageNet labels' ceiling), colour or gray input"
    paper = "Krizhevsky, Sutskever, Hinton, ImageNet Classification with Deep CNNs, NIPS 2012"
    Config = SupervisedConfig

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        self._classes = self.opt.classes if self.opt.classes > 0 else self._count_classes()

    def num_classes(self) -> int:
        return self._classes

    def _count_classes(self) -> int:
        root = Path(self.cfg.data.train)
        if not root.is_dir():
            raise UserError(f"task supervised: data.train must be a folder of class folders (or set "
                            f"pretext.classes), got {root}")
        found = sorted(p for p in root.iterdir() if p.is_dir())
        if len(found) < 2:
            raise UserError(f"task supervised: {root} holds {len(found)} class folder(s); it needs at least 2")
        return len(found)

    def inputs_and_labels(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> Labelled:
        y = batch["label"].to(self.device, non_blocking=True).long()
        if bool((y < 0).any()) or bool((y >= self.num_classes()).any()):
            raise UserError(f"task supervised: labels must lie in 0..{self.num_classes() - 1}; an image list has "
                            f"no class labels: use a folder of class folders")
        return Labelled(lab_input(batch["image"], self.opt.input, self.device), y)
