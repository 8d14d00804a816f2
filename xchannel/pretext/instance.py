"""Instance discrimination with a memory bank: every training image is its own class (Wu, Xiong, Yu, Lin,
"Unsupervised feature learning via non-parametric instance discrimination", CVPR 2018: NPID), and its
multiview form on the L and ab channels (Tian, Krishnan, Isola, "Contrastive multiview coding", 2019: CMC).

``views: image`` (NPID). The CaffeNet (227 px, ``transfer`` geometry) reads the augmented image (L or Lab) and its
fc8 gives a 128-d embedding, L2-normalised; the loss discriminates the image's own row of the memory bank from the
others (:mod:`~xchannel.pretext.memory`: NCE with K = 4096 uniform noise rows, or the softmax over the bank or over
K sampled rows), temperature 0.07; after each step the image's row moves towards its embedding (momentum 0.5).
Augmentation as the released code's: the random-resized crop and mirror of the loader (``data.scale``), colour
jitter (brightness, contrast, saturation 0.4; the released code's hue jitter is left out) and gray images (0.2)
drawn on the device from the step's generator.

``views: lab-halves`` (CMC). Two half-width AlexNets (split-brain's towers: 48-128-192-192-128, fc 2048, no
grouping within a half), one reading L and one ab of the same crop, each with a 128-d embedding and a bank of its
own; the L embedding is contrasted with the ab bank and the ab embedding with the L bank (the two losses summed),
and each bank follows its own view's embeddings. No colour augmentation (colour is a view here). The export is the
merged Lab AlexNet whose L half never sees ab (:func:`~xchannel.pretext.lab_halves.merge_halves`).

The bank (one row per training image, addressed by ``batch["index"]``), the NCE constant Z (estimated on the first
batch) and the training labels the validation votes with are the task's state: written into every checkpoint
(``task_state``) and read back on resume, so a resumed run ends on the very weights and bank of an uninterrupted
one. Under DistributedDataParallel every process updates its copy of the bank with the embeddings of all
processes, so the copies stay equal. Every layer conv1 ... fc7 is trained and transfers; fc8 (the embedding) is
the task's head. Validation: the paper's weighted kNN (k = 200, weights exp(s / 0.07)) of the held-out images
against the bank's rows and the training labels, beside the share of the most frequent training class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.models.alexnet import AlexNet
from xchannel.pretext import memory as M
from xchannel.pretext.augment import colour_jitter, gray_images
from xchannel.pretext.base import HeldOut, PretextTask, unwrap
from xchannel.pretext.image_level import INPUTS
from xchannel.pretext.lab_halves import check_halvable, merge_halves
from xchannel.train.distributed import all_gather_rows, mean_over_processes

VIEWS = {"L": 1, "ab": 2}  # lab-halves: view -> input channels
OTHER = {"L": "ab", "ab": "L"}  # the bank each view's embedding is contrasted with


@dataclass
class InstanceConfig:
    views: Literal["image", "lab-halves"] = "image"  # NPID on the image, or CMC on its L and ab
    input: Literal["gray", "color"] = "color"  # views: image: L or Lab
    dim: int = 128  # embedding size
    temperature: float = 0.07
    momentum: float = 0.5  # of the bank's update
    loss: Literal["nce", "softmax"] = "nce"
    negatives: int = 4096  # K noise / negative rows per image; softmax: 0 = every row of the bank
    jitter: float = 0.4  # colour jitter strength (views: image)
    gray: float = 0.2  # probability of a gray image (views: image, input: color)
    knn: int = 200  # neighbours of the validation's weighted kNN
    dropout: float = 0.0  # before fc7 and fc8


@dataclass
class Views:
    """A batch on the device: the network input (a tensor, or ``{"L", "ab"}``), the images' bank rows (B,), the
    sampled negative rows (B x K, or None: the whole bank) and, once :meth:`InstanceTask.loss` ran, the
    embeddings it computed (unit rows, by view)."""

    x: torch.Tensor | dict[str, torch.Tensor]
    index: torch.Tensor
    negatives: torch.Tensor | None
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)


class ViewEncoders(nn.Module):
    """One network per view (``towers``: ModuleDict of :class:`AlexNet`); ``forward({view: x})`` ->
    ``{view: embedding}`` (not normalised)."""

    def __init__(self, towers: dict[str, AlexNet]) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(towers)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: net(x[name]).flatten(1) for name, net in self.towers.items()}


class InstanceTask(PretextTask):
    name = "instance"
    description = "instance discrimination against a memory bank (NPID); views: lab-halves contrasts L with ab (CMC)"
    paper = ("Wu, Xiong, Yu, Lin, Unsupervised Feature Learning via Non-Parametric Instance Discrimination, "
             "CVPR 2018; Tian, Krishnan, Isola, Contrastive Multiview Coding, 2019")
    Config = InstanceConfig

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        o = self.opt
        if o.dim < 1 or o.temperature <= 0 or not 0.0 <= o.momentum < 1.0 or o.knn < 1:
            raise UserError(f"task instance: needs dim >= 1, temperature > 0, momentum in [0, 1) and knn >= 1, got "
                            f"dim={o.dim}, temperature={o.temperature}, momentum={o.momentum}, knn={o.knn}")
        if o.negatives < 0 or (o.loss == "nce" and o.negatives == 0):
            raise UserError(f"task instance: pretext.negatives must be > 0 for NCE (>= 0 for softmax, 0: the whole "
                            f"bank), got {o.negatives}")
        if not (0.0 <= o.gray <= 1.0 and o.jitter >= 0):
            raise UserError(f"task instance: pretext.gray must be in [0, 1] and pretext.jitter >= 0, got "
                            f"{o.gray}, {o.jitter}")
        self.names = list(VIEWS) if o.views == "lab-halves" else ["image"]
        self.banks: dict[str, M.MemoryBank] = {}
        self.labels: torch.Tensor | None = None

    # -- training data and state ---------------------------------------------------------------------------------
    def set_training_data(self, size: int, labels: Sequence[int]) -> None:
        """One bank row per training image, drawn from the run's seed (the same on every process)."""
        if size < 1:
            raise UserError("task instance: the training data holds no image")
        seeds = np.random.SeedSequence([int(self.cfg.seed), 0xBA4C]).generate_state(len(self.names))
        self.banks = {name: M.MemoryBank(size, self.opt.dim, int(s), self.device)
                      for name, s in zip(self.names, seeds)}
        self.labels = torch.as_tensor(list(labels), dtype=torch.long, device=self.device)

    @property
    def size(self) -> int:
        if not self.banks:
            raise RuntimeError("task instance: set_training_data() was not called: the bank's size is unknown")
        return self.banks[self.names[0]].size

    def state_dict(self) -> dict[str, Any]:
        return {f"{part}.{name}": value for name, bank in self.banks.items()
                for part, value in bank.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, bank in self.banks.items():
            try:
                bank.load_state_dict({part: state[f"{part}.{name}"] for part in ("weight", "z")},
                                     "task instance")
            except KeyError as err:
                raise UserError(f"task instance: the checkpoint holds no memory bank {name!r} "
                                f"(task_state: {sorted(state)})") from err
            except ValueError as err:
                raise UserError(str(err)) from err

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.cfg.model.name != "alexnet":
            raise UserError(f"task instance: trains the AlexNet backbone (model.name: alexnet), "
                            f"got {self.cfg.model.name!r}")
        width, o = self.cfg.model.width, self.opt
        if o.views == "image":
            return AlexNet(in_channels=INPUTS[o.input], width=width, geometry="transfer", dropout=o.dropout,
                           zero_init_ab=False, fc8_outputs=o.dim)
        check_halvable(width, self.name)
        return ViewEncoders({name: AlexNet(in_channels=c, width=width / 2, geometry="transfer", dropout=o.dropout,
                                           zero_init_ab=False, fc8_outputs=o.dim, groups=1)
                             for name, c in VIEWS.items()})

    def backbone(self, model: nn.Module) -> nn.Module:
        net = unwrap(model)
        return merge_halves(net.towers["L"], net.towers["ab"]) if isinstance(net, ViewEncoders) else net

    def heads(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]] | None:
        """Each tower's embedding layer (fc8), by view (lab-halves); the AlexNet's own fc8 otherwise."""
        net = unwrap(model)
        if not isinstance(net, ViewEncoders):
            return None
        return {f"{name}.fc8": {k[len("fc8."):]: v for k, v in tower.state_dict().items() if k.startswith("fc8.")}
                for name, tower in net.towers.items()}

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        lab = C.rgb_to_lab(images.to(self.device))
        if self.opt.views == "lab-halves":
            return {"L": lab[:, :1], "ab": lab[:, 1:]}
        return lab[:, : INPUTS[self.opt.input]]

    def kmeans_init(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        """Krähenbühl et al.'s initialisation of the network, or of each tower on its own view."""
        from xchannel.models.init import kmeans_init_

        net = unwrap(model)
        if not isinstance(net, ViewEncoders):
            return super().kmeans_init(model, images)
        inputs = [self.init_inputs(b) for b in images]
        for name, tower in net.towers.items():
            kmeans_init_(tower, [x[name] for x in inputs])

    # -- data and objective --------------------------------------------------------------------------------------
    def inputs(self, images: torch.Tensor, gen: torch.Generator | None,
               augment: bool) -> torch.Tensor | dict[str, torch.Tensor]:
        """The network input for uint8 RGB ``images``: NPID's colour augmentation first (``augment``)."""
        if self.opt.views == "lab-halves" or not augment:
            return self.init_inputs(images)
        rgb = colour_jitter(images.to(self.device).float() / 255.0, self.opt.jitter, gen)
        if self.opt.input == "gray":
            return C.rgb_to_lightness(rgb)
        return gray_images(C.rgb_to_lab(rgb), self.opt.gray, gen)

    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> Views:
        x = self.inputs(batch["image"], gen, augment=True)
        x = {k: self.memory_format(v) for k, v in x.items()} if isinstance(x, dict) else self.memory_format(x)
        index = batch["index"].to(self.device, non_blocking=True).long()
        if bool((index < 0).any()) or bool((index >= self.size).any()):
            raise UserError(f"task instance: image indices must lie in 0 ... {self.size - 1} (the training set)")
        k = self.opt.negatives
        negatives = torch.randint(self.size, (index.shape[0], k), generator=gen, device=index.device) if k else None
        return Views(x, index, negatives)

    def embed(self, model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unit embeddings (float32) by view."""
        out = model(x)
        out = out if isinstance(out, dict) else {"image": out.flatten(1)}
        return {name: F.normalize(v.float(), dim=1) for name, v in out.items()}

    def loss(self, model: nn.Module, batch: Views) -> dict[str, torch.Tensor]:
        emb = self.embed(model, batch.x)
        batch.embeddings = {name: v.detach() for name, v in emb.items()}
        losses = {}
        with torch.autocast(self.device.type, enabled=False):  # exp(s / 0.07) needs float32
            for name, f in emb.items():
                bank = self.banks[OTHER.get(name, name)]
                logits = M.contrast(f, bank, batch.index, batch.negatives, self.opt.temperature)
                key = self.opt.loss if name == "image" else f"{self.opt.loss}_{name}"
                if self.opt.loss == "softmax":
                    losses[key] = M.softmax_loss(logits, batch.index, sampled=batch.negatives is not None)
                    continue
                if bank.z is None:  # estimated once, on the first batch, the same on every process
                    bank.z = mean_over_processes(M.nce_constant(logits.detach(), bank.size), self.device)
                losses[key] = M.nce_loss(logits, bank.z, bank.size)
        return losses

    def after_step(self, batch: Views) -> None:
        """Each view's bank rows move towards the step's embeddings (of every process)."""
        index = all_gather_rows(batch.index)
        for name, f in batch.embeddings.items():
            self.banks[name].update(index, all_gather_rows(f), self.opt.momentum)

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        """Weighted kNN accuracy of the held-out images on the bank (lab-halves: the mean of the two views'
        similarities, each view against its own bank) beside the share of the most frequent training class."""
        if self.labels is None or not bool((self.labels >= 0).any()):
            return {}
        classes = int(self.labels.max()) + 1
        right = total = 0
        held_out = HeldOut(model, batches, max_images)
        for batch in held_out:
            emb = self.embed(model, self.inputs(batch["image"], None, augment=False))
            sim = sum(f @ self.banks[name].weight.T for name, f in emb.items()) / len(emb)
            pred = M.weighted_knn(sim, self.labels, self.opt.knn, self.opt.temperature, classes)
            y = batch["label"].to(self.device).long()
            right += int(((pred == y) & (y >= 0)).sum())
            total += int((y >= 0).sum())
        if total == 0:
            return {}
        return {"knn_accuracy": right / total, "chance": M.majority_share(self.labels.cpu()),
                "val_images": held_out.seen, "knn": min(self.opt.knn, self.size)}
