"""On-device augmentations of the patch and contrastive tasks, every draw from the step's generator.

Colour guards against chromatic aberration (a lens shifts the colour channels against each other towards the
image border, so a network can read a patch's position from its colour fringes: Doersch, Gupta, Efros,
ICCV 2015; Noroozi & Favaro, ECCV 2016):

* :func:`gray_images`: an image's a and b set to 0 (its gray version in Lab) with probability ``p``;
* :func:`drop_colour`: Doersch et al.'s *colour dropping* as their released sampler does it
  (``cdoersch/deepcontext/train.py``, ``prep_image``): one of R, G, B kept per patch, the other two replaced by
  uniform noise of +-0.5 grey levels (here about the kept channel's mean, so that the patch stays an RGB image);
* :func:`project_green_magenta`: Doersch et al.'s *projection*: every pixel times B = I - a a^T / (a^T a) with
  a = (-1, 2, -1), the green-magenta axis of RGB, which removes the colour component along which the aberration
  mostly lies.

Others: :func:`downsample` (Doersch et al.'s resolution augmentation: some patches down to as few as 10 x 10
pixels and back) and :func:`colour_jitter` (brightness, contrast and saturation as torchvision's
``ColorJitter``, which instance discrimination trains with; no hue).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: luma weights of torchvision's rgb_to_grayscale (ITU-R BT.601, R rounded as there), for contrast and saturation
LUMA = (0.2989, 0.587, 0.114)
GREEN_MAGENTA = (-1.0, 2.0, -1.0)


def _per_item(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def gray_images(lab: torch.Tensor, p: float, gen: torch.Generator | None, group: int = 1) -> torch.Tensor:
    """``lab`` (N x 3 x H x W, natural units) with a and b set to 0 in each consecutive run of ``group`` items
    (the patches of one image) with probability ``p``, one draw per run."""
    if p <= 0:
        return lab
    runs = lab.shape[0] // group
    gray = (_per_item(runs, gen, lab.device) < p).repeat_interleave(group)
    out = lab.clone()
    out[:, 1:] *= (~gray).to(lab.dtype).view(-1, 1, 1, 1)
    return out


def drop_colour(rgb: torch.Tensor, gen: torch.Generator | None, noise: float = 0.5 / 255) -> torch.Tensor:
    """Colour dropping: in each patch of ``rgb`` (N x 3 x H x W in [0, 1]) one channel, drawn uniformly, is kept;
    the other two become its mean plus noise uniform in [-noise, noise] (the released sampler's +-0.5 of 255)."""
    n = rgb.shape[0]
    keep = torch.randint(3, (n,), generator=gen, device=rgb.device)
    jitter = (torch.rand(rgb.shape, generator=gen, device=rgb.device) * 2 - 1) * noise
    kept = rgb.gather(1, keep.view(n, 1, 1, 1).expand(n, 1, *rgb.shape[2:]))
    filler = kept.mean(dim=(2, 3), keepdim=True) + jitter
    chosen = torch.arange(3, device=rgb.device).view(1, 3, 1, 1) == keep.view(n, 1, 1, 1)
    return torch.where(chosen, kept.expand_as(rgb), filler).clamp_(0.0, 1.0)


def project_green_magenta(rgb: torch.Tensor) -> torch.Tensor:
    """Every pixel of ``rgb`` (N x 3 x H x W in [0, 1]) times B = I - a a^T / (a^T a), a = (-1, 2, -1), clipped
    to [0, 1]: gray pixels are unchanged, the green-magenta component of every colour is removed."""
    a = torch.tensor(GREEN_MAGENTA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    along = (rgb * a).sum(1, keepdim=True) / a.pow(2).sum()
    return (rgb - along * a).clamp_(0.0, 1.0)


def downsample(rgb: torch.Tensor, p: float, gen: torch.Generator | None, min_side: int = 10) -> torch.Tensor:
    """Each patch of ``rgb`` (N x 3 x S x S, float) with probability ``p`` resized down to s x s pixels and back
    up (bilinear), s = floor(sqrt(u (S'^2 - m^2) + m^2)) for u uniform in [0, 1), S' = S - 1 and m = ``min_side``:
    as few as m^2 pixels, uniform in area (the released sampler: 1/3 of patches, 10 to 95 px for 96 px patches)."""
    if p <= 0:
        return rgb
    n, side = rgb.shape[0], rgb.shape[-1]
    chosen = _per_item(n, gen, rgb.device) < p
    area = _per_item(n, gen, rgb.device) * ((side - 1) ** 2 - min_side ** 2) + min_side ** 2
    out = rgb.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        s = max(1, int(math.sqrt(float(area[i]))))
        small = F.interpolate(rgb[i: i + 1], size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out[i: i + 1] = F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)
    return out


def colour_jitter(rgb: torch.Tensor, strength: float, gen: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation of each image of ``rgb`` (N x 3 x H x W in [0, 1]) scaled by factors
    drawn uniformly from [1 - strength, 1 + strength], in that order, as torchvision's ``ColorJitter`` defines
    them (contrast blends with the image's mean luma, saturation with the pixel's luma); clipped to [0, 1]."""
    if strength <= 0:
        return rgb
    n = rgb.shape[0]
    f = 1 + (torch.rand((3, n, 1, 1, 1), generator=gen, device=rgb.device) * 2 - 1) * strength
    weights = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device)
    x = (rgb * f[0]).clamp_(0.0, 1.0)  # one copy, then in place: these are whole-batch passes
    mean = torch.einsum("nchw,c->n", x, weights).view(n, 1, 1, 1) / (x.shape[2] * x.shape[3])
    x.mul_(f[1]).add_((1 - f[1]) * mean).clamp_(0.0, 1.0)
    luma = torch.einsum("nchw,c->nhw", x, weights).unsqueeze(1)
    return x.mul_(f[2]).add_((1 - f[2]) * luma).clamp_(0.0, 1.0)
