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

import contextlib
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Iterator

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


# The matrix rows divided by the white point's X, Y, Z: X/Xn, Y/Yn, Z/Zn from linear RGB.
_XYZN_ROWS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(float(v) for v in row) for row in (_XYZ_FROM_RGB / _D65[:, None])
)


def _mat(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.to(device=like.device, dtype=like.dtype)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _mat(m, x), x)


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected N x 3 x H x W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


# The forward conversion is written as a few in-place elementwise passes (no einsum, no concatenation): it runs
# on every training batch, and each pixel's result depends on that pixel alone, so converting a subset of the
# pixels (the loss's targets) gives the values of converting the whole image (to float rounding).


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse sRGB transfer function (IEC 61966-2-1): ((c + 0.055) / 1.055)^2.4 above 0.04045, else c / 12.92."""
    hi = rgb.clamp_min(0.04045).add_(0.055).div_(1.055).pow_(2.4)
    return torch.where(rgb > 0.04045, hi, rgb / 12.92, out=hi)


def _xyz_component(lin: torch.Tensor, row: tuple[float, float, float]) -> torch.Tensor:
    """One of X/Xn, Y/Yn, Z/Zn (N x 1 x H x W) from linear RGB: the matrix row ``row`` applied per pixel."""
    out = lin[:, 0:1] * row[0]
    return out.add_(lin[:, 1:2], alpha=row[1]).add_(lin[:, 2:3], alpha=row[2])


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE f(t) = t^(1/3) above (6/29)^3, else the linear segment t / (3 (6/29)^2) + 4/29."""
    hi = t.clamp_min(_EPS).pow_(1.0 / 3.0)
    return torch.where(t > _EPS, hi, _KAPPA * t + 16.0 / 116.0, out=hi)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N x 3 x H x W) -> CIE Lab (D65). Agrees with ``skimage.color.rgb2lab``."""
    _check_image(rgb, "rgb_to_lab")
    lin = _srgb_to_linear(rgb)
    fx, fy, fz = (_lab_f(_xyz_component(lin, row)) for row in _XYZN_ROWS)
    out = torch.empty_like(rgb, memory_format=torch.contiguous_format)
    torch.mul(fy, 116.0, out=out[:, 0:1]).sub_(16.0)
    torch.sub(fx, fy, out=out[:, 1:2]).mul_(500.0)
    torch.sub(fy, fz, out=out[:, 2:3]).mul_(200.0)
    return out


def rgb_to_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """L* alone (N x 1 x H x W): ``rgb_to_lab(rgb)[:, :1]``, computed without X and Z (a third of the work)."""
    _check_image(rgb, "rgb_to_lightness")
    fy = _lab_f(_xyz_component(_srgb_to_linear(rgb), _XYZN_ROWS[1]))
    return fy.mul_(116.0).sub_(16.0)


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
# compares each pixel with its cell's candidates (at most 12 for k = 5, 16 for k = 10; 6.4 and 11.6 on average over
# the pixels of real photos) instead of all 313 bins: exact, and O(M k) per pixel.
#
# The search is vectorised over pixels and runs candidate slot by candidate slot (no per-pixel loop, and no
# per-row sort, which is slow on rows this short): a candidate's squared distance and its slot number are packed
# into one int64 key whose order is (distance, slot), and a compare-exchange cascade (torch.minimum /
# torch.maximum) keeps the k smallest keys of every pixel in ascending order. A non-negative float64 orders like
# its bit pattern, and float32 distances widened to float64 leave the lowest 29 mantissa bits free for the slot,
# so the keys order exactly as the distances do (float64 inputs: the lowest 8 mantissa bits are overwritten, a
# relative resolution of 6e-14). A cell lists its candidates in increasing bin index, so equal distances rank the
# lower bin index first. Most pixels' cells have at most k + 2 candidates; the few others run their remaining
# slots as a second, smaller batch.

_CELL = 1.0
_LO = -128.0  # the LUT covers [-128, 128)^2; Lab ab of any sRGB colour lies well inside (|a|, |b| < 110)
_NCELL = int(256 / _CELL)
_SLOT_BITS = 8  # slot numbers (< 256) live in the low bits of a key
_PAD = float("inf")  # coordinates of an unused slot: its distance is +inf, so it is never among the k nearest


@contextlib.contextmanager
def one_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """Run a chain of small CPU kernels on one intra-op thread (a no-op on other devices; not thread-safe, as
    torch's thread count is per process). Kernels of ~1e5 elements gain little from a second thread, and on a
    busy machine every parallel region waits for a descheduled thread: on a loaded 2-core machine the targets of
    one batch (40 x 44 x 44 pixels) took 0.3-2.6 s with two threads instead of 20 ms with one."""
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Candidates:
    """The look-up table for one k: per slot m and cell c, the candidate's bin index and coordinates."""

    index: torch.Tensor  # M x C int64; an unused slot repeats the cell's first candidate (a valid bin)
    a: torch.Tensor  # M x C, +inf where unused
    b: torch.Tensor  # M x C
    count: torch.Tensor  # C int64: candidates of each cell
    first_pass: int  # slots every pixel runs; cells with more candidates run the rest as a second batch


@functools.lru_cache(maxsize=None)
def _candidate_table(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M x C int64 candidate bins, C candidate counts) for cells of side _CELL covering [-128, 128)^2; slot m of
    a cell is its m-th candidate in increasing bin index, -1 where unused.

    Squared distances separate into an a part and a b part, so they are built from per-row and per-column tables.
    They are computed in float32 with a margin of 1e-3 ab units on the bound: a margin can only add candidates,
    never drop a true neighbour, so the search stays exact.
    """
    bins = ab_bins(dtype=torch.float32)
    centres = _LO + _CELL * (torch.arange(_NCELL, dtype=torch.float32) + 0.5)
    da2 = (centres[:, None] - bins[None, :, 0]).square()  # n x Q: squared a-distance, cell row to bin
    db2 = (centres[:, None] - bins[None, :, 1]).square()
    ga2 = ((centres[:, None] - bins[None, :, 0]).abs() - _CELL / 2).clamp_min(0.0).square()  # to the cell's edge
    gb2 = ((centres[:, None] - bins[None, :, 1]).abs() - _CELL / 2).clamp_min(0.0).square()
    ranks = torch.arange(Q, dtype=torch.float32)
    lists, counts = [], []
    rows = 32
    for i in range(0, _NCELL, rows):  # blocks of cell rows: bounded memory
        d2 = (da2[i : i + rows, None, :] + db2[None]).flatten(0, 1)  # (rows n) x Q, from each cell centre
        dk = d2.topk(k, dim=1, largest=False).values[:, -1:].sqrt()
        cand = (ga2[i : i + rows, None, :] + gb2[None]).flatten(0, 1) <= (dk + _CELL / np.sqrt(2.0) + 1e-3).square()
        count = cand.sum(1)
        ranked = torch.where(cand, ranks, float(Q))
        lists.append(ranked.topk(int(count.max()), dim=1, largest=False, sorted=True).indices)
        counts.append(count)
    count = torch.cat(counts)
    m = int(count.max())
    order = torch.cat([torch.nn.functional.pad(o, (0, m - o.shape[1])) for o in lists])
    table = torch.where(torch.arange(m)[None, :] < count[:, None], order, torch.full_like(order, -1))
    return table.t().contiguous(), count


@functools.lru_cache(maxsize=None)
def _candidates(k: int, device: torch.device, dtype: torch.dtype) -> _Candidates:
    with one_cpu_thread("cpu"):  # built once per k, on the CPU
        table, count = _candidate_table(k)
    used = table >= 0
    index = torch.where(used, table, table[:1].expand_as(table))
    bins = ab_bins(dtype=torch.float64)
    a = torch.where(used, bins[index, 0], torch.full(index.shape, _PAD, dtype=torch.float64))
    b = torch.where(used, bins[index, 1], torch.full(index.shape, _PAD, dtype=torch.float64))
    if table.shape[0] >= 1 << _SLOT_BITS:
        raise ValueError(f"nearest_bins: k = {k} needs {table.shape[0]} candidate slots, more than {1 << _SLOT_BITS}")
    first = min(table.shape[0], k + 2)
    return _Candidates(index.to(device), a.to(device, dtype), b.to(device, dtype), count.to(device), first)


def _insert(top: list[torch.Tensor], key: torch.Tensor, k: int) -> None:
    """Insert ``key`` (consumed) into the ascending list ``top`` (at most k keys per pixel) by compare-exchange."""
    spare = torch.empty_like(key)
    for j in range(len(top)):
        if j < k - 1 or len(top) < k:
            torch.maximum(top[j], key, out=spare)
            torch.minimum(top[j], key, out=top[j])
            key, spare = spare, key
        else:  # the largest of k + 1 keys is dropped
            torch.minimum(top[j], key, out=top[j])
    if len(top) < k:
        top.append(key)


def _run_slots(cands: _Candidates, slots: range, pa: torch.Tensor, pb: torch.Tensor, cell: torch.Tensor,
               top: list[torch.Tensor], k: int) -> None:
    for m in slots:
        d2 = pa - cands.a[m].index_select(0, cell)
        db = pb - cands.b[m].index_select(0, cell)
        d2.mul_(d2).add_(db.mul_(db))
        key = d2.to(torch.float64).view(torch.int64)
        if d2.dtype == torch.float64:
            key = key.bitwise_and(-(1 << _SLOT_BITS))
        _insert(top, key.bitwise_or_(m), k)


def nearest_bins(ab: torch.Tensor, k: int = 1, chunk: int = 1 << 17) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bins of every pixel, nearest first (equal distances: the lower bin index first).

    ab: N x 2 x H x W. Returns (indices int64 N x k x H x W, squared distances N x k x H x W in ab's dtype;
    float16 / bfloat16 inputs are searched in float32). Points outside [-128, 128)^2 (impossible for sRGB
    colours) use the candidates of the nearest border cell.
    """
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"expected ab as N x 2 x H x W, got {tuple(ab.shape)}")
    if not 1 <= k <= Q:
        raise ValueError(f"k must be in 1..{Q}, got {k}")
    n, _, h, w = ab.shape
    work = torch.float64 if ab.dtype == torch.float64 else torch.float32
    cands = _candidates(k, ab.device, work)
    with one_cpu_thread(ab.device):  # a long chain of small kernels
        pa_all = ab[:, 0].reshape(-1).to(work)
        pb_all = ab[:, 1].reshape(-1).to(work)
        idx_out = torch.empty(k, pa_all.shape[0], dtype=torch.int64, device=ab.device)
        d2_out = torch.empty(k, pa_all.shape[0], dtype=work, device=ab.device)
        for s in range(0, pa_all.shape[0], chunk):  # bounded memory
            _search_chunk(cands, pa_all[s : s + chunk], pb_all[s : s + chunk], k, idx_out[:, s : s + chunk],
                          d2_out[:, s : s + chunk])
        to_map = lambda t: t.view(k, n, h, w).permute(1, 0, 2, 3).contiguous()  # noqa: E731
        return to_map(idx_out), to_map(d2_out).to(ab.dtype)


def _search_chunk(cands: _Candidates, pa: torch.Tensor, pb: torch.Tensor, k: int, idx_out: torch.Tensor,
                  d2_out: torch.Tensor) -> None:
    """:func:`nearest_bins` for one chunk of pixels (a, b as vectors), written into k x P outputs."""
    ia = ((pa - _LO) / _CELL).floor_().long().clamp_(0, _NCELL - 1)
    cell = ia.mul_(_NCELL).add_(((pb - _LO) / _CELL).floor_().long().clamp_(0, _NCELL - 1))
    top: list[torch.Tensor] = []
    _run_slots(cands, range(cands.first_pass), pa, pb, cell, top, k)
    more = (cands.count.index_select(0, cell) > cands.first_pass).nonzero().squeeze(1)
    if more.numel() > 0:  # the pixels whose cells list more candidates: the remaining slots
        sub = [t.index_select(0, more) for t in top]
        _run_slots(cands, range(cands.first_pass, cands.index.shape[0]), pa.index_select(0, more),
                   pb.index_select(0, more), cell.index_select(0, more), sub, k)
        for t, u in zip(top, sub):
            t.index_copy_(0, more, u)
    keys = torch.stack(top)  # k x P, ascending along k
    flat = keys.bitwise_and((1 << _SLOT_BITS) - 1).mul_(cands.index.shape[1]).add_(cell)  # slot * C + cell
    idx_out.copy_(cands.index.view(-1).index_select(0, flat.view(-1)).view_as(flat))
    d2_out.copy_(keys.bitwise_and_(-(1 << _SLOT_BITS)).view(torch.float64))  # the slot bits cleared


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
