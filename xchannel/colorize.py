"""Colorize photographs with a trained colorizer (Sec. 3.3, Fig. 8): legacy black-and-white photos, or colour
photos made gray.

The network sees the photo's L resized to ``size`` x ``size`` (the released pipeline's 256, PIL bicubic); the
predicted ab (annealed mean, T = 0.38 by default) is upsampled bilinearly to the photo's full resolution and joined
with the photo's own L, so the output's L equals the input's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from xchannel import color as C
from xchannel.color import ANNEAL_T

AB_SCALE = 110.0


def _rgb_tensor(img: Image.Image, device: torch.device) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(device)


@torch.no_grad()
def predict_ab(model: nn.Module, L: torch.Tensor, T: float = ANNEAL_T, loss_kind: str = "classification") -> torch.Tensor:
    """ab at the input's resolution from L (N x 1 x H x W in [0, 100])."""
    if loss_kind == "l2":
        return C.upsample_ab(model(L).float() * AB_SCALE, tuple(L.shape[-2:]))
    return model.predict_ab(L, T)


@torch.no_grad()
def colorize_image(model: nn.Module, img: Image.Image, size: int = 256, T: float = ANNEAL_T,
                   loss_kind: str = "classification", device: torch.device | str = "cpu") -> Image.Image:
    """A colour version of ``img`` (any size, any mode): network at ``size`` px, ab upsampled, original L kept."""
    device = torch.device(device)
    full = _rgb_tensor(img, device)
    L_full = C.rgb_to_lab(full)[:, :1]
    small = _rgb_tensor(img.convert("RGB").resize((size, size), Image.BICUBIC), device)
    L_small = C.rgb_to_lab(small)[:, :1]
    ab = predict_ab(model, L_small, T, loss_kind)
    ab = C.upsample_ab(ab, tuple(L_full.shape[-2:]))
    rgb = C.lab_to_rgb(torch.cat([L_full, ab.to(L_full.dtype)], dim=1))
    out = (rgb[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(out)


def output_path(src: Path, out_dir: Path, root: Path | None) -> Path:
    rel = src.relative_to(root) if root is not None else Path(src.name)
    return (out_dir / rel).with_suffix(".png")
