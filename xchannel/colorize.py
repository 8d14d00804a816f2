"""Colorize photographs with a trained colorizer (Sec. 3.3, Fig. 8): legacy black-and-white photos, or colour
photos made gray.

The network sees the photo's L resized to ``size`` x ``size`` (the released pipeline's 256, PIL bicubic); the
predicted ab (annealed mean, T = 0.38 by default) is upsampled bilinearly to the photo's full resolution and joined
with the photo's own L, so the output's L equals the input's.
"""

from __future__ import annotations

from contextlib import nullcontext
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
def colorize_rgb(model: nn.Module, img: Image.Image, size: int = 256, T: float = ANNEAL_T,
                 loss_kind: str = "classification", device: torch.device | str = "cpu") -> torch.Tensor:
    """The colour version of ``img`` as a 1 x 3 x H x W float tensor in [0, 1] (before 8-bit quantisation).

    Only the lightness of the photo and of its ``size`` x ``size`` resize is computed (the network sees L alone);
    a photo already at ``size`` x ``size`` is not resized (PIL would return a copy).
    """
    device = torch.device(device)
    rgb = img.convert("RGB")
    # the colour conversions of a photo up to ~1 Mpx are chains of small kernels: one CPU thread (see
    # xchannel.color.one_cpu_thread); the network keeps every thread
    few_pixels = rgb.size[0] * rgb.size[1] <= 1 << 20
    with C.one_cpu_thread(device) if few_pixels else nullcontext():
        full = _rgb_tensor(rgb, device)
        L_full = C.rgb_to_lightness(full)
        if rgb.size == (size, size):
            L_small = L_full
        else:
            L_small = C.rgb_to_lightness(_rgb_tensor(rgb.resize((size, size), Image.BICUBIC), device))
    ab = predict_ab(model, L_small, T, loss_kind)
    with C.one_cpu_thread(device) if few_pixels else nullcontext():
        ab = C.upsample_ab(ab, tuple(L_full.shape[-2:]))
        return C.lab_to_rgb(torch.cat([L_full, ab.to(L_full.dtype)], dim=1))


def to_image(rgb: torch.Tensor) -> Image.Image:
    """1 x 3 x H x W float in [0, 1] -> 8-bit RGB image (rounded to the nearest level)."""
    out = rgb[0].mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out)


def colorize_image(model: nn.Module, img: Image.Image, size: int = 256, T: float = ANNEAL_T,
                   loss_kind: str = "classification", device: torch.device | str = "cpu") -> Image.Image:
    """A colour version of ``img`` (any size, any mode): network at ``size`` px, ab upsampled, original L kept."""
    return to_image(colorize_rgb(model, img, size, T, loss_kind, device))


def output_path(src: Path, out_dir: Path, root: Path | None) -> Path:
    rel = src.relative_to(root) if root is not None else Path(src.name)
    return (out_dir / rel).with_suffix(".png")
