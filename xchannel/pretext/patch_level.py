"""What the patch tasks share (jigsaw, context prediction): one AlexNet trunk applied to every patch, a head that
classifies groups of patches (a puzzle's 9 tiles, a pair of neighbours), cross-entropy, and validation by the
head's accuracy beside the chance level.

**Trunk.** Our AlexNet in the ``pretext`` geometry (conv1 11 x 11 at stride 4 with its padding, as colorization
trains it) up to conv5, shared by all patches, so the benchmarks read conv1 ... conv5 as trained. The papers' own
trunks differ (jigsaw: conv1 at stride 2 on 64 px tiles; context: LRN and BatchNorm without scale); keeping ours
keeps every task of the suite on one network, and the padded geometry keeps small patches usable (a 64 px patch
gives a 4 x 4 conv5 map, 96 px a 6 x 6 one).

**Head** (:class:`PatchHead`, task-only, not exported). Per patch: conv5 max-pooled to 3 x 3 cells (the pool5 map
of Noroozi & Favaro's 64 px tiles; adaptive, so any patch size gives it), a fully connected layer (BatchNorm,
ReLU); the patch features of one example concatenated in the example's order; hidden fully connected layers
(dropout, BatchNorm, ReLU); dropout and the classifier. Which patches form an example, in which order, is data
(:attr:`PatchExamples.groups`), so the trunk runs once per patch however many examples share it (a
re-indexing of features, as the released context code's ``BatchReindex`` layers; the trunk treats patches one by
one, so this equals shuffling the patches themselves). Widths scale with ``model.width`` as the AlexNet's fc
layers do.

**Export.** conv1 ... conv5 in a registered AlexNet (:meth:`PatchTask.backbone`) whose fc6 and fc7 are seeded
Gaussian placeholders; ``pretrained_stages`` is conv1 ... conv5, so the benchmarks re-draw fc6 and fc7 as
Table 2's "*" rows were (Krähenbühl et al.'s k-means on their images). The head goes into ``heads``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.errors import UserError
from xchannel.models.alexnet import AlexNet
from xchannel.pretext.base import ClassificationTask, HeldOut, unwrap
from xchannel.pretext.image_level import INPUTS

#: the 3 x 3 map each patch's conv5 is max-pooled to before the head
POOL = 3
#: the trunk's stages that the patch tasks train (and transfer)
TRUNK_STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")


@dataclass
class PatchExamples:
    """A batch on the device: the patches (P x C x S x S, L or Lab in natural units, each normalised), the
    examples (G x k: the indices of each example's patches, in order) and their classes (G,)."""

    patches: torch.Tensor
    groups: torch.Tensor
    y: torch.Tensor


class PatchHead(nn.Module):
    """Per-patch fc, concatenation of each example's patches, hidden fc layers, classifier (module docstring)."""

    def __init__(self, channels: int, per_patch: int, k: int, hidden: Sequence[int], classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.patch = nn.Sequential(OrderedDict(fc=nn.Linear(channels * POOL * POOL, per_patch),
                                               bn=nn.BatchNorm1d(per_patch), relu=nn.ReLU(inplace=True)))
        layers: list[tuple[str, nn.Module]] = []
        width = k * per_patch
        for i, h in enumerate(hidden):
            layers += [(f"drop{i}", nn.Dropout(dropout)), (f"fc{i}", nn.Linear(width, h)),
                       (f"bn{i}", nn.BatchNorm1d(h)), (f"relu{i}", nn.ReLU(inplace=True))]
            width = h
        layers += [("drop", nn.Dropout(dropout)), ("classifier", nn.Linear(width, classes))]
        self.mlp = nn.Sequential(OrderedDict(layers))

    def forward(self, conv5: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        per_patch = self.patch(F.adaptive_max_pool2d(conv5, POOL).flatten(1))
        return self.mlp(per_patch[groups].flatten(1))


class PatchNet(nn.Module):
    """The trunk (an :class:`AlexNet` cut after conv5: its fc6 and fc7 are removed, as nothing trains them) and the
    head; ``forward(patches, groups)`` -> logits G x classes."""

    def __init__(self, trunk: AlexNet, head: PatchHead) -> None:
        super().__init__()
        del trunk.fc6, trunk.fc7
        trunk.stage_names = trunk.stage_names[: trunk.stage_names.index(TRUNK_STAGES[-1]) + 1]
        self.trunk, self.head = trunk, head

    def forward(self, patches: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(patches), groups)


class PatchTask(ClassificationTask):
    """Base of the patch tasks. ``self.opt`` has ``input`` (gray / color) and ``dropout``; a task sets the head's
    widths at model width 1 (:attr:`per_patch`, :attr:`hidden`), the patches per example (:attr:`group`), and
    implements :meth:`num_classes` and :meth:`examples`."""

    per_patch: ClassVar[int]
    hidden: ClassVar[tuple[int, ...]]
    group: ClassVar[int]

    def examples(self, batch: Mapping[str, Any], gen: torch.Generator | None) -> PatchExamples:
        """The patches of the batch's images, the examples made of them and their classes; all randomness from
        ``gen``."""
        raise NotImplementedError

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from xchannel.models.init import gaussian_init_

        self.require_alexnet()
        width = self.cfg.model.width
        trunk = AlexNet(in_channels=INPUTS[self.opt.input], width=width, geometry="pretext", zero_init_ab=False,
                        fc8_outputs=0)

        def scaled(c: int) -> int:
            return max(1, int(round(c * width)))

        head = PatchHead(trunk.conv5.conv.out_channels, scaled(self.per_patch), self.group,
                         [scaled(h) for h in self.hidden], self.num_classes(), self.opt.dropout)
        gaussian_init_(head)  # the suite's fillers (std 0.005 for fc layers), from the run's seeded generator
        return PatchNet(trunk, head)

    def backbone(self, model: nn.Module) -> nn.Module:
        """The trunk as a registered AlexNet: conv1 ... conv5 as trained, fc6 and fc7 seeded placeholders."""
        trunk = unwrap(model).trunk
        net = AlexNet(**trunk.hparams, seed=0, zero_init_ab=False).to(trunk.conv1.conv.weight.device)
        missing, unexpected = net.load_state_dict(trunk.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("fc6.", "fc7.")) for k in missing):
            raise RuntimeError(f"{self.name}: the trunk does not fit the AlexNet backbone ({missing}, {unexpected})")
        return net.train(trunk.training)

    def pretrained_stages(self, model: nn.Module) -> list[str]:
        return list(TRUNK_STAGES)

    def heads(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        return {"head": dict(unwrap(model).head.state_dict())}

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's input for uint8 RGB ``images``: their patches (drawn with a fixed generator)."""
        return self.examples({"image": images}, torch.Generator(device=self.device).manual_seed(0)).patches

    def kmeans_init(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        """Krähenbühl et al.'s initialisation of the trunk on patches; the head keeps its Gaussian draw."""
        from xchannel.models.init import kmeans_init_

        kmeans_init_(unwrap(model).trunk, [self.init_inputs(b) for b in images])

    # -- data and objective --------------------------------------------------------------------------------------
    def square_images(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's uint8 RGB crops on the device; they must be square."""
        images = batch["image"].to(self.device, non_blocking=True)
        if images.shape[-1] != images.shape[-2]:
            raise UserError(f"task {self.name}: needs square crops, got {images.shape[-2]}x{images.shape[-1]}")
        return images

    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> PatchExamples:
        e = self.examples(batch, gen)
        return PatchExamples(self.memory_format(e.patches), e.groups, e.y)

    def loss(self, model: nn.Module, batch: PatchExamples) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(model(batch.patches, batch.groups).float(), batch.y)}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        """Top-1 accuracy over the examples of the held-out images and the chance level 1 / classes."""
        right = total = 0
        gen = torch.Generator(device=self.device).manual_seed(0)  # the same draws at every validation
        held_out = HeldOut(model, batches, max_images)
        for batch in held_out:
            b = self.prepare(batch, gen)
            right += int((model(b.patches, b.groups).argmax(1) == b.y).sum())
            total += int(b.y.numel())
        if total == 0:
            return {}
        return {"accuracy": right / total, "chance": self.chance, "val_images": held_out.seen,
                "val_examples": total}
