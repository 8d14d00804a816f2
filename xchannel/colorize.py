"""Colorize photographs with a trained colorizer (Sec. 3.3, Fig. 8): legacy black-and-white photos, or colour
photos made gray.

The network sees the photo's L resized to ``size`` x ``size`` (the released pipeline's 256, PIL bicubic); the
predicted ab (annealed mean, T = 0.38 by default) is upsampled bilinearly to the photo's full resolution and joined
with the photo's own L, so the output's L equals the input's.

:func:`inference_network` prepares a network once for colorizing many photos: on CPU its wide 3 x 3 stride-1
convolutions become Winograd F(4 x 4, 3 x 3) convolutions (:mod:`xchannel.models.winograd`: a quarter of the
multiplications, the same function up to float32 rounding); ``exact_conv=True`` (the CLI's ``--exact-conv``) keeps
the direct convolutions. On CUDA the network keeps cuDNN's convolutions.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from xchannel import color as C
from xchannel.color import ANNEAL_T

AB_SCALE = 110.0


def inference_network(model: nn.Module, device: torch.device | str = "cpu", exact_conv: bool = False) -> nn.Module:
    """The network to colorize with on ``device``: an eval-mode copy of ``model`` (which is left untouched).

    On CPU, unless ``exact_conv``, every eligible convolution (3 x 3, stride 1, groups 1, at least 128 channels;
    :func:`xchannel.models.winograd.is_eligible`) runs as Winograd F(4 x 4, 3 x 3): the filters are transformed
    here, once (about a second for the full-width VGG colorizer), so build it once and reuse it for every photo.
    Its output differs from the direct convolutions' by float32 rounding (README, Performance). Elsewhere (CUDA)
    the convolutions stay the library's (cuDNN).
    """
    from xchannel.models.winograd import winograd_inference

    device = torch.device(device)
    if device.type == "cpu" and not exact_conv:
        return winograd_inference(model).to(device)
    return copy.deepcopy(model).to(device).eval()


def _rgb_tensor(img: Image.Image, device: torch.device) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(device)


@torch.no_grad()
def predict_ab(model: nn.Module, L: torch.Tensor, T: float = ANNEAL_T, loss_kind: str = "classification") -> torch.Tensor:
    """ab at the input's resolution from L (N x 1 x H x W in [0, 100])."""
    if loss_kind == "l2":
        return C.upsample_ab(model(L).float() * AB_SCALE, tuple(L.shape[-2:]))
    return model.predict_ab(L, T)


def _conversion_threads(device: torch.device, pixels: int) -> ContextManager[None]:
    """The colour conversions of a photo up to ~1 Mpx are chains of small kernels: they run on one CPU thread (see
    xchannel.color.one_cpu_thread); the network keeps every thread."""
    return C.one_cpu_thread(device) if pixels <= 1 << 20 else nullcontext()


@torch.no_grad()
def lightness(img: Image.Image, size: int = 256,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(L of the photo, 1 x 1 x H x W; L of its ``size`` x ``size`` resize, the network's input), L in [0, 100].

    Only the lightness is computed (the network sees L alone); a photo already at ``size`` x ``size`` is not
    resized (PIL would return a copy).
    """
    device = torch.device(device)
    rgb = img.convert("RGB")
    with _conversion_threads(device, rgb.size[0] * rgb.size[1]):
        L_full = C.rgb_to_lightness(_rgb_tensor(rgb, device))
        if rgb.size == (size, size):
            return L_full, L_full
        return L_full, C.rgb_to_lightness(_rgb_tensor(rgb.resize((size, size), Image.BICUBIC), device))


@torch.no_grad()
def colorize_rgb(model: nn.Module, img: Image.Image, size: int = 256, T: float = ANNEAL_T,
                 loss_kind: str = "classification", device: torch.device | str = "cpu") -> torch.Tensor:
    """The colour version of ``img`` as a 1 x 3 x H x W float tensor in [0, 1] (before 8-bit quantisation).

    ``model`` runs as given: to colorize photos on CPU, build :func:`inference_network`'s network once and pass it.
    """
    device = torch.device(device)
    L_full, L_small = lightness(img, size, device)
    ab = predict_ab(model, L_small, T, loss_kind)
    with _conversion_threads(device, L_full.shape[-2] * L_full.shape[-1]):
        ab = C.upsample_ab(ab, tuple(L_full.shape[-2:]))
        return C.lab_to_rgb(torch.cat([L_full, ab.to(L_full.dtype)], dim=1))


def to_image(rgb: torch.Tensor) -> Image.Image:
    """1 x 3 x H x W float in [0, 1] -> 8-bit RGB image (rounded to the nearest level)."""
    with _conversion_threads(rgb.device, rgb.shape[-2] * rgb.shape[-1]):
        out = rgb[0].mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out)


def colorize_image(model: nn.Module, img: Image.Image, size: int = 256, T: float = ANNEAL_T,
                   loss_kind: str = "classification", device: torch.device | str = "cpu") -> Image.Image:
    """A colour version of ``img`` (any size, any mode): network at ``size`` px, ab upsampled, original L kept."""
    return to_image(colorize_rgb(model, img, size, T, loss_kind, device))


def output_path(src: Path, out_dir: Path, root: Path | None) -> Path:
    rel = src.relative_to(root) if root is not None else Path(src.name)
    return (out_dir / rel).with_suffix(".png")
