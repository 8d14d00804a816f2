"""Lab -> Lab autoencoders: the plain and the denoising baselines of the split-brain paper's Table 2
(Zhang, Isola, Efros, "Split-brain autoencoders", CVPR 2017: "Lab -> Lab" and "Lab(drop50) -> Lab").

The full-width fully convolutional AlexNet (``pretext`` geometry, ~180 px crops) reads Lab and regresses it,
normalised as the network normalises its input ((L - 50) / 100, a / 110, b / 110), at its head cells (stride 16,
the pixels the colorization targets are taken at), with an L2 loss: the mean over cells of the squared error
summed over the three channels. With ``denoise: p`` each input pixel is dropped (set to L = 50, a = b = 0, i.e. 0
after normalisation) with probability p, the draws coming from the step's generator; the target stays the clean
image. ``loss_on: dropped`` (a project option, not the paper's) counts only the cells whose input pixel was
dropped, so that copying the input cannot lower the loss. Every layer conv1 ... fc7 is trained and transfers.

Validation reports the L2 error on the held-out images beside the error of predicting the normalised mean
(all zeros), the regression's chance level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.models.alexnet import AB_SCALE, L_CENTER, L_SCALE
from xchannel.pretext.base import HeldOut, PretextTask, unwrap
from xchannel.pretext.dense import at_head


@dataclass
class AutoencoderConfig:
    denoise: float = 0.0  # probability that an input pixel is dropped (0.5: Lab(drop50) -> Lab)
    loss_on: Literal["all", "dropped"] = "all"  # which head cells count


@dataclass
class Reconstruction:
    """The network input (Lab, natural units, dropped pixels at L = 50, ab = 0), the normalised clean Lab it
    must reproduce, and the kept-pixel mask (N x 1 x H x W, True where the input pixel is kept)."""

    x: torch.Tensor
    target: torch.Tensor
    kept: torch.Tensor


def normalised_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab in natural units -> ((L - 50) / 100, a / 110, b / 110), the network's own input scaling."""
    return torch.cat([(lab[:, :1] - L_CENTER) / L_SCALE, lab[:, 1:] / AB_SCALE], dim=1)


def drop_pixels(lab: torch.Tensor, p: float, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each pixel of ``lab`` (all three channels) with probability ``p``: dropped pixels become L = 50,
    a = b = 0. Returns (the dropped input, the kept mask N x 1 x H x W)."""
    n, _, h, w = lab.shape
    kept = torch.rand((n, 1, h, w), generator=gen, device=lab.device) >= p
    neutral = torch.tensor([L_CENTER, 0.0, 0.0], device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    return torch.where(kept, lab, neutral), kept


class AutoencoderTask(PretextTask):
    name = "autoencoder"
    description = "Lab -> Lab L2 reconstruction; denoise: 0.5 gives Lab(drop50) -> Lab"
    paper = "Zhang, Isola, Efros, Split-Brain Autoencoders, CVPR 2017 (Table 2 baselines)"
    Config = AutoencoderConfig

    def __init__(self, cfg: Any, device: torch.device) -> None:
        super().__init__(cfg, device)
        if not 0.0 <= self.opt.denoise < 1.0:
            raise UserError(f"pretext.denoise must be in [0, 1), got {self.opt.denoise}")
        if self.opt.loss_on == "dropped" and self.opt.denoise == 0.0:
            raise UserError("pretext.loss_on: dropped needs pretext.denoise > 0")

    def build_model(self) -> nn.Module:
        from xchannel.models import build_model

        if self.cfg.model.name != "alexnet":
            raise UserError(f"task autoencoder: trains the AlexNet backbone (model.name: alexnet), "
                            f"got {self.cfg.model.name!r}")
        return build_model("alexnet", in_channels=3, width=self.cfg.model.width, geometry="pretext",
                           zero_init_ab=False, fc8_outputs=3)

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return C.rgb_to_lab(images.to(self.device))

    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> Reconstruction:
        lab = self.init_inputs(batch["image"])
        if self.opt.denoise > 0:
            x, kept = drop_pixels(lab, self.opt.denoise, gen)
        else:
            x, kept = lab, torch.ones_like(lab[:, :1], dtype=torch.bool)
        return Reconstruction(self.memory_format(x), normalised_lab(lab), kept)

    def errors(self, model: nn.Module, batch: Reconstruction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction's squared error, the zero prediction's, the counted-cell weights), per head cell."""
        out = model(batch.x).float()
        hw = tuple(out.shape[-2:])
        target = at_head(unwrap(model), batch.target, hw)
        counted = torch.ones_like(target[:, :1])
        if self.opt.loss_on == "dropped":
            counted = (~at_head(unwrap(model), batch.kept, hw)).to(target.dtype)
        return (out - target).pow(2).sum(1, keepdim=True), target.pow(2).sum(1, keepdim=True), counted

    def loss(self, model: nn.Module, batch: Reconstruction) -> dict[str, torch.Tensor]:
        err, _, counted = self.errors(model, batch)
        return {"l2": (err * counted).sum() / counted.sum().clamp_min(1)}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        gen = torch.Generator(device=self.device).manual_seed(0)  # the same drops at every validation
        sums = torch.zeros(3, dtype=torch.float64)
        held_out = HeldOut(model, batches, max_images)
        for batch in held_out:
            err, zero, counted = self.errors(model, self.prepare(batch, gen))
            sums += torch.stack([(err * counted).sum(), (zero * counted).sum(), counted.sum()]).double().cpu()
        if held_out.seen == 0:
            return {}
        return {"l2": float(sums[0] / sums[2]), "chance_l2": float(sums[1] / sums[2]), "val_images": held_out.seen}
