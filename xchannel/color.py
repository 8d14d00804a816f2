"""The colour machinery of the paper (Sections 2.1-2.3): Lab conversion, the 313 ab bins, soft-encoded targets,
class rebalancing, the gray mask, and decoding a predicted distribution into ab.

Everything here works on batched torch tensors on any device and in float32 or float64; nothing loops over
pixels in Python. The other modules call exactly these functions.

Conventions
-----------
* RGB: ``N x 3 x H x W`` sRGB in [0, 1]. Lab: ``N x 3 x H x W`` CIE L*a*b* (D65, 2-degree observer), L in [0, 100].
* ab: ``N x 2 x H x W``. Distributions / logits over the bins: ``N x Q x H x W`` with Q = 313.

Facts used (with their sources)
-------------------------------
* Q = 313 in-gamut bins on a grid of 10 in ab (Sec. 2.1, Fig. 3a); the centres are the authors' release
  (``pts_in_hull.npy``), shipped as package data: deriving them from the gamut is fragile.
* Soft encoding: the k nearest bins weighted by a Gaussian of sigma = 5 (footnote 2: k = 5; the authors' released
  training code uses k = 10). Both are presets in :data:`SOFT_ENCODING_PRESETS`.
* Rebalancing: Eq. 3-4 with lambda = 1/2, sigma = 5 (Sec. 2.2). The released code uses the shipped ImageNet prior
  without further smoothing (sigma = 0).
* Annealed mean: Eq. 5 with T = 0.38 (Sec. 2.3).
* Gray mask: an image whose ab never exceeds 5 in absolute value contributes no loss (authors' release).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

Q = 313
GRID = 10.0
ANNEAL_T = 0.38

# sRGB primaries -> XYZ (the matrix of IEC 61966-2-1 as used by scikit-image) and the D65 white point.
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPS = 0.008856  # (6/29)^3: linear segment of f(t) below it
_KAPPA = 7.787  # slope of that segment (1/3 (29/6)^2)


def _mat(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.to(device=like.device, dtype=like.dtype)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _mat(m, x), x)


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected N x 3 x H x W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N x 3 x H x W) -> CIE Lab (D65). Agrees with ``skimage.color.rgb2lab``."""
    _check_image(rgb, "rgb_to_lab")
    lin = torch.where(rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _apply_matrix(_XYZ_FROM_RGB, lin) / _mat(_D65, rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1.0 / 3.0), _KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) -> sRGB in [0, 1]. Out-of-gamut colours are clipped to valid RGB, as ``skimage.color.lab2rgb``
    does (negative Z is clipped to 0 before the matrix; RGB is clipped to [0, 1] after the gamma)."""
    _check_image(lab, "lab_to_rgb")
    L, a, b = lab[:, 0:1], lab[:, 1:2], lab[:, 2:3]
    fy = (L + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0.0)
    f = torch.cat([fx, fy, fz], dim=1)
    t = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / _KAPPA)
    xyz = t * _mat(_D65, lab).view(1, 3, 1, 1)
    lin = _apply_matrix(_RGB_FROM_XYZ, xyz)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# The 313 bins and the ImageNet prior (package data)


@functools.lru_cache(maxsize=None)
def _resource(name: str) -> np.ndarray:
    with resources.files("xchannel.resources").joinpath(name).open("rb") as f:
        return np.load(f)


def ab_bins(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Q = 313 in-gamut ab bin centres (Q x 2), in the order of the authors' ``pts_in_hull.npy``.

    Sorted by (a, b); the neutral bin (0, 0) is index 120.
    """
    return torch.as_tensor(_resource("pts_in_hull.npy"), dtype=dtype, device=device)


def reference_prior(device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The authors' empirical ImageNet distribution over the 313 bins (sums to 1; largest at (0, 0): 0.2012)."""
    return torch.as_tensor(_resource("prior_probs.npy"), dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------------
# Nearest-bin search that exploits the regular grid
#
# The plane is cut into cells of _CELL ab units. For every cell, a look-up table lists the only bins that can be
# among the k nearest of ANY point in that cell: bin q is a candidate iff its distance to the cell is at most
# (k-th nearest distance from the cell centre) + (half the cell diagonal), by the triangle inequality. A query then
# compares each pixel with M << 313 candidates (M ~ 12-25) instead of all bins: exact, and O(M) per pixel.

_CELL = 2.0
_LO = -128.0  # the LUT covers [-128, 128)^2; Lab ab of any sRGB colour lies well inside (|a|, |b| < 110)
_NCELL = int(256 / _CELL)


@functools.lru_cache(maxsize=None)
def _candidate_table(k: int) -> torch.Tensor:
    bins = ab_bins(dtype=torch.float64)
    centres_1d = _LO + _CELL * (torch.arange(_NCELL, dtype=torch.float64) + 0.5)
    ca, cb = torch.meshgrid(centres_1d, centres_1d, indexing="ij")
    centres = torch.stack([ca.reshape(-1), cb.reshape(-1)], dim=1)  # C x 2
    d = torch.cdist(centres, bins)  # C x Q
    dk = d.topk(k, dim=1, largest=False).values[:, -1:]  # C x 1
    # distance from each bin to the cell (a square of side _CELL around the centre)
    gap = ((centres[:, None, :] - bins[None, :, :]).abs() - _CELL / 2).clamp_min(0.0)
    d_cell = gap.norm(dim=2)
    cand = d_cell <= dk + _CELL / np.sqrt(2.0) + 1e-9
    m = int(cand.sum(1).max())
    # order candidates by distance from the cell centre; pad with the nearest one (duplicates are harmless:
    # the top-k below is taken over distinct indices by masking repeated entries)
    order = torch.where(cand, d, torch.full_like(d, float("inf"))).argsort(dim=1)[:, :m]
    count = cand.sum(1, keepdim=True)
    pad = order[:, :1].expand(-1, m)
    table = torch.where(torch.arange(m)[None, :] < count, order, pad)
    return table.to(torch.int64)  # C x M


def nearest_bins(ab: torch.Tensor, k: int = 1, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bins of every pixel, nearest first.

    ab: N x 2 x H x W. Returns (indices int64 N x k x H x W, squared distances N x k x H x W). Points outside
    [-128, 128)^2 (impossible for sRGB colours) use the candidates of the nearest border cell.
    """
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"expected ab as N x 2 x H x W, got {tuple(ab.shape)}")
    n, _, h, w = ab.shape
    table = _candidate_table(k).to(ab.device)
    bins = ab_bins(ab.device, ab.dtype)
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    idx_out = torch.empty(pts.shape[0], k, dtype=torch.int64, device=ab.device)
    d2_out = torch.empty(pts.shape[0], k, dtype=ab.dtype, device=ab.device)
    for s in range(0, pts.shape[0], chunk):  # bounded memory for large batches
        p = pts[s : s + chunk]
        cell = ((p - _LO) / _CELL).floor().long().clamp(0, _NCELL - 1)
        cand = table[cell[:, 0] * _NCELL + cell[:, 1]]  # P x M
        d2 = (p[:, None, :] - bins[cand]).pow(2).sum(-1)  # P x M
        # padded duplicates repeat the first candidate: push them out of the top-k
        dup = torch.zeros_like(cand, dtype=torch.bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :1]
        d2 = d2.masked_fill(dup, float("inf"))
        val, pos = d2.topk(k, dim=1, largest=False)
        idx_out[s : s + chunk] = cand.gather(1, pos)
        d2_out[s : s + chunk] = val
    to_map = lambda t: t.reshape(n, h, w, k).permute(0, 3, 1, 2)  # noqa: E731
    return to_map(idx_out), to_map(d2_out)


# --------------------------------------------------------------------------------------------------------------
# Soft encoding (Sec. 2.1, footnote 2)


@dataclass(frozen=True)
class SoftEncoding:
    neighbours: int = 5
    sigma: float = 5.0


SOFT_ENCODING_PRESETS: dict[str, SoftEncoding] = {
    "paper": SoftEncoding(neighbours=5, sigma=5.0),  # footnote 2 of the paper
    "released": SoftEncoding(neighbours=10, sigma=5.0),  # the authors' released training code (NNEncLayer)
}


def soft_encode_sparse(ab: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets in sparse form: (bin indices N x k x H x W, weights N x k x H x W summing to 1 over k).

    Weights are exp(-d^2 / 2 sigma^2) over the k nearest bins, normalised. Index 0 along k is the nearest bin
    (the argmax of the target, used by Eq. 3). The loss uses this form directly; :func:`soft_encode` scatters it.
    """
    idx, d2 = nearest_bins(ab, neighbours)
    # subtract the nearest distance before exponentiating: same normalised weights, no underflow far from bins
    logits = -(d2 - d2[:, :1]) / (2.0 * sigma * sigma)
    return idx, torch.softmax(logits, dim=1)


def soft_encode(ab: torch.Tensor, neighbours: int = 5, sigma: float = 5.0, preset: str | None = None) -> torch.Tensor:
    """N x 2 x H x W ab -> N x 313 x H x W soft targets (k nearest bins, Gaussian weights, sum 1, rest 0).

    ``preset="paper"`` (k = 5) or ``"released"`` (k = 10) overrides ``neighbours`` and ``sigma``.
    """
    if preset is not None:
        p = SOFT_ENCODING_PRESETS[preset]
        neighbours, sigma = p.neighbours, p.sigma
    idx, wts = soft_encode_sparse(ab, neighbours, sigma)
    out = torch.zeros(ab.shape[0], Q, ab.shape[2], ab.shape[3], dtype=ab.dtype, device=ab.device)
    return out.scatter_(1, idx, wts)


# --------------------------------------------------------------------------------------------------------------
# Priors and class rebalancing (Sec. 2.2)


def smooth_prior(prior: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Convolve a distribution over the bins with a Gaussian of ``sigma`` over their ab positions; sums to 1.

    ``sigma = 0`` returns the prior unchanged (normalised).
    """
    p = prior.to(torch.float64)
    if sigma > 0:
        bins = ab_bins(p.device, torch.float64)
        kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / (2.0 * sigma * sigma))
        p = kernel @ p
    return p / p.sum()


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5, sigma: float = 5.0) -> torch.Tensor:
    """Eq. 4: w proportional to ((1 - lam) p~ + lam / Q)^-1, normalised so that sum_q p~_q w_q = 1.

    p~ is ``prior`` smoothed with a Gaussian of ``sigma`` (0: none, as the released code does with the shipped
    prior). ``lam = 1`` gives uniform weights (no rebalancing, Table 1's "Ours (class)"); ``lam = 0`` weights
    inversely to the class probability (the rebalanced AuC metric).
    """
    if prior.shape != (Q,):
        raise ValueError(f"prior must have shape ({Q},), got {tuple(prior.shape)}")
    p = smooth_prior(prior, sigma)
    w = 1.0 / ((1.0 - lam) * p + lam / Q)
    return w / (p * w).sum()


def pixel_weights(ab: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 3: each pixel's weight is w at its nearest bin (the argmax of its soft target). -> N x 1 x H x W."""
    idx, _ = nearest_bins(ab, 1)
    return weights.to(ab.device, ab.dtype)[idx]


def has_color(ab: torch.Tensor, threshold: float = 5.0) -> torch.Tensor:
    """The gray mask of the released code: True for images with some |a| or |b| above ``threshold``. -> (N,) bool.

    Images that are False carry no colour and contribute no loss.
    """
    return (ab.abs() > threshold).flatten(1).any(dim=1)


def empirical_prior(ab_batches: Iterable[torch.Tensor], skip_gray: bool = True) -> torch.Tensor:
    """Bin frequencies (hard nearest-bin counts) over a stream of N x 2 x H x W ab batches; sums to 1.

    Images without colour (:func:`has_color`) are skipped by default, as they are in training.
    """
    counts = torch.zeros(Q, dtype=torch.float64)
    for ab in ab_batches:
        if skip_gray:
            ab = ab[has_color(ab)]
            if ab.shape[0] == 0:
                continue
        idx, _ = nearest_bins(ab, 1)
        counts += torch.bincount(idx.flatten().cpu(), minlength=Q).to(torch.float64)
    total = counts.sum()
    if total == 0:
        raise ValueError("empirical_prior: no coloured pixels in the data")
    return counts / total


# --------------------------------------------------------------------------------------------------------------
# Decoding H (Sec. 2.3, Eq. 5)


def _project(probs: torch.Tensor, bins: torch.Tensor | None) -> torch.Tensor:
    b = ab_bins(probs.device, probs.dtype) if bins is None else bins.to(probs.device, probs.dtype)
    return torch.einsum("nqhw,qc->nchw", probs, b)


def annealed_mean(logits: torch.Tensor, T: float = ANNEAL_T, bins: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: the mean of f_T(z) with f_T(z) proportional to exp(log z / T), for z = softmax(logits).

    Since log z = logits - logsumexp(logits), f_T(z) = softmax(logits / T). T = 1 is the mean, T -> 0 the mode
    (T = 0 returns :func:`decode_mode`). ``bins`` (Q x 2) defaults to :func:`ab_bins`. -> N x 2 x H x W.
    """
    if T < 0:
        raise ValueError(f"temperature must be >= 0, got {T}")
    if T == 0:
        return decode_mode(logits, bins)
    return _project(torch.softmax(logits / T, dim=1), bins)


def decode_mean(logits: torch.Tensor, bins: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the predicted distribution (T = 1): spatially consistent but desaturated (Fig. 4, left)."""
    return annealed_mean(logits, 1.0, bins)


def decode_mode(logits: torch.Tensor, bins: torch.Tensor | None = None) -> torch.Tensor:
    """The mode of the predicted distribution (T -> 0): vibrant but spatially inconsistent (Fig. 4, right)."""
    b = ab_bins(logits.device, logits.dtype) if bins is None else bins.to(logits.device, logits.dtype)
    return b[logits.argmax(dim=1)].permute(0, 3, 1, 2)


def upsample_ab(ab: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of predicted ab to the image size (align_corners=False, as the released pipeline)."""
    if tuple(ab.shape[-2:]) == tuple(size):
        return ab
    return F.interpolate(ab, size=size, mode="bilinear", align_corners=False)
