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


def _check_image(x: torch.Tensor, name: str, codes: bool = False) -> None:
    """N x 3 x H x W floating point, or also uint8 where ``codes`` (8-bit sRGB codes v, standing for v / 255)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected N x 3 x H x W, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or (codes and x.dtype == torch.uint8)):
        raise TypeError(f"{name}: expected a floating-point{' or uint8' if codes else ''} tensor, got {x.dtype}")


# The forward conversion is written as a few in-place elementwise passes (no einsum, no concatenation): it runs
# on every training batch, and each pixel's result depends on that pixel alone, so converting a subset of the
# pixels (the loss's targets) gives the values of converting the whole image (to float rounding).


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse sRGB transfer function (IEC 61966-2-1): ((c + 0.055) / 1.055)^2.4 above 0.04045, else c / 12.92.

    uint8 codes v (c = v / 255) are looked up in a table of the 256 values (float32, rounded from float64): one
    gather per channel value instead of a power, and values as exact as float32 holds them.
    """
    if rgb.dtype == torch.uint8:
        table = _srgb8_to_linear(rgb.device)
        return table.index_select(0, rgb.to(torch.int32).reshape(-1)).view(rgb.shape)
    hi = rgb.clamp_min(0.04045).add_(0.055).div_(1.055).pow_(2.4)
    return torch.where(rgb > 0.04045, hi, rgb / 12.92, out=hi)


@functools.lru_cache(maxsize=None)
def _srgb8_to_linear(device: torch.device) -> torch.Tensor:
    """The table of :func:`_srgb_to_linear` for uint8 codes: 256 float32 values of code / 255."""
    return _srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).to(device, torch.float32)


def _xyz_component(lin: torch.Tensor, row: tuple[float, float, float]) -> torch.Tensor:
    """One of X/Xn, Y/Yn, Z/Zn (N x 1 x H x W) from linear RGB: the matrix row ``row`` applied per pixel."""
    out = lin[:, 0:1] * row[0]
    return out.add_(lin[:, 1:2], alpha=row[1]).add_(lin[:, 2:3], alpha=row[2])


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE f(t) = t^(1/3) above (6/29)^3, else the linear segment t / (3 (6/29)^2) + 4/29."""
    hi = t.clamp_min(_EPS).pow_(1.0 / 3.0)
    return torch.where(t > _EPS, hi, _KAPPA * t + 16.0 / 116.0, out=hi)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N x 3 x H x W) -> CIE Lab (D65). Agrees with ``skimage.color.rgb2lab``.

    uint8 images (codes 0..255 for [0, 1]) convert directly, to float32 Lab, without a float copy of the image.
    """
    _check_image(rgb, "rgb_to_lab", codes=True)
    lin = _srgb_to_linear(rgb)
    fx, fy, fz = (_lab_f(_xyz_component(lin, row)) for row in _XYZN_ROWS)
    out = torch.empty_like(lin, memory_format=torch.contiguous_format)
    torch.mul(fy, 116.0, out=out[:, 0:1]).sub_(16.0)
    torch.sub(fx, fy, out=out[:, 1:2]).mul_(500.0)
    torch.sub(fy, fz, out=out[:, 2:3]).mul_(200.0)
    return out


def rgb_to_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """L* alone (N x 1 x H x W): ``rgb_to_lab(rgb)[:, :1]``, computed without X and Z (a third of the work);
    float or uint8 input, as :func:`rgb_to_lab`."""
    _check_image(rgb, "rgb_to_lightness", codes=True)
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
# per-row sort, which is slow on rows this short). A candidate's squared distance and its bin index are packed
# into one int64 key whose order is (distance, bin index): a non-negative float64 orders like its bit pattern, and
# float32 distances widened to float64 leave the lowest 29 mantissa bits free for the index (float64 inputs: the
# lowest 9 mantissa bits are overwritten, a relative resolution of 1e-13). So the keys order exactly as the
# distances do, equal distances rank the lower bin index first, and a key decodes to its bin and its distance
# with one mask each. Every pixel runs the first k + 2 slots of its cell (most cells have no more candidates): a
# pruned sorting network of torch.minimum / torch.maximum over these keys leaves the k smallest in ascending
# order. The few pixels whose cells list more candidates insert the remaining slots' keys as a second, smaller
# batch. Every step is an elementwise kernel or a gather over all pixels of a block: a few dozen kernels in all.

_CELL = 1.0
_LO = -128.0  # the LUT covers [-128, 128)^2; Lab ab of any sRGB colour lies well inside (|a|, |b| < 110)
_NCELL = int(256 / _CELL)
_INDEX_BITS = 9  # bin indices (< 2^9 = 512 > Q) live in the low bits of a key
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
    """The look-up table for one k on one device: per slot m and cell c, the candidate's bin and coordinates."""

    index: torch.Tensor  # M x C int64: the candidate bin (an unused slot repeats the cell's first candidate)
    a: torch.Tensor  # M x C, +inf where unused
    b: torch.Tensor  # M x C
    more: torch.Tensor  # C bool: the cell lists more than first_pass candidates
    first_pass: int  # slots every pixel runs; cells with more candidates run the rest as a second batch
    network: tuple[tuple[int, int, bool, bool], ...]  # sorts the first pass's k smallest keys (_selection_network)


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
    first = min(table.shape[0], k + 2)
    return _Candidates(index.to(device), a.to(device, dtype), b.to(device, dtype), (count > first).to(device), first,
                       _selection_network(first, k))


@functools.lru_cache(maxsize=None)
def _selection_network(n: int, k: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Compare-exchanges (i, j, min wanted, max wanted), i < j, that leave the k smallest of n keys in ascending
    order on wires 0..k-1: Batcher's odd-even merge sort of n wires (padded to a power of two with +inf wires,
    whose exchanges are no-ops and dropped), less the outputs that no later exchange and no result reads. For
    n = 7, k = 5 that is 28 minimum / maximum kernels (an insertion cascade takes 38)."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs: list[tuple[int, int]] = []

    def merge(lo: int, hi: int, r: int) -> None:  # merges the sorted halves of wires lo..hi, stride r
        step = 2 * r
        if step < hi - lo:
            merge(lo, hi, step)
            merge(lo + r, hi, step)
            pairs.extend((i, i + r) for i in range(lo + r, hi - r, step))
        else:
            pairs.append((lo, lo + r))

    def sort(lo: int, hi: int) -> None:
        if hi > lo:
            mid = (lo + hi) // 2
            sort(lo, mid)
            sort(mid + 1, hi)
            merge(lo, hi, 1)

    sort(0, size - 1)
    needed, network = set(range(k)), []
    for i, j in reversed([(i, j) for i, j in pairs if j < n]):
        want_min, want_max = i in needed, j in needed
        if want_min or want_max:
            network.append((i, j, want_min, want_max))
            needed |= {i, j}
    return tuple(reversed(network))


def _cells(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """The look-up table's cell of each point, as int32 (index_select's cheaper index type); points outside the
    covered square take the nearest border cell (the last clamp also maps NaN to a valid cell)."""
    ia = pa.sub(_LO).div_(_CELL).floor_().clamp_(0, _NCELL - 1)
    ib = pb.sub(_LO).div_(_CELL).floor_().clamp_(0, _NCELL - 1)
    return ia.mul_(_NCELL).add_(ib).to(torch.int32).clamp_(0, _NCELL * _NCELL - 1)


def _slot_keys(cands: _Candidates, m: int, pa: torch.Tensor, pb: torch.Tensor, cell: torch.Tensor,
               out: torch.Tensor) -> torch.Tensor:
    """The keys of slot m for points (pa, pb) in cells ``cell``, written into ``out`` (int64): the squared
    distance to the candidate as float64 bits, its bin index in the lowest _INDEX_BITS bits."""
    da = cands.a[m].index_select(0, cell)
    db = cands.b[m].index_select(0, cell)
    torch.sub(pa, da, out=da).square_()
    torch.sub(pb, db, out=db).square_()
    torch.add(da, db, out=out.view(torch.float64))  # a float32 sum is rounded in float32, then widened exactly
    if da.dtype == torch.float64:
        out.bitwise_and_(-(1 << _INDEX_BITS))
    return out.bitwise_or_(cands.index[m].index_select(0, cell))


def _exchange(wires: list[torch.Tensor], network: Iterable[tuple[int, int, bool, bool]]) -> None:
    """Apply compare-exchanges to key vectors in place (a wire may be rebound to another buffer of the list)."""
    spare = torch.empty_like(wires[0])
    for i, j, want_min, want_max in network:
        if want_min and want_max:
            torch.minimum(wires[i], wires[j], out=spare)
            torch.maximum(wires[i], wires[j], out=wires[j])
            wires[i], spare = spare, wires[i]
        elif want_min:
            torch.minimum(wires[i], wires[j], out=wires[i])
        else:
            torch.maximum(wires[i], wires[j], out=wires[j])


def _search(cands: _Candidates, pa: torch.Tensor, pb: torch.Tensor, cell: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The k smallest keys of every point (a, b as vectors, their cells), ascending: k int64 vectors."""
    wires = [_slot_keys(cands, m, pa, pb, cell, torch.empty(pa.shape, dtype=torch.int64, device=pa.device))
             for m in range(cands.first_pass)]
    _exchange(wires, cands.network)
    top = wires[:k]
    slots = cands.a.shape[0]
    if slots > cands.first_pass:
        more = cands.more.index_select(0, cell).nonzero().squeeze(1)
        if more.numel() > 0:  # the pixels whose cells list more candidates: insert the remaining slots' keys
            sub = [t.index_select(0, more) for t in top]
            sa, sb, sc = pa.index_select(0, more), pb.index_select(0, more), cell.index_select(0, more)
            for m in range(cands.first_pass, slots):
                sub.append(_slot_keys(cands, m, sa, sb, sc, torch.empty_like(sub[0])))
                _exchange(sub, [(i, i + 1, True, i + 1 < k) for i in range(k - 1, -1, -1)])  # bubble it in
                sub.pop()
            for t, u in zip(top, sub):
                t.index_copy_(0, more, u)
    return top


def _blocks(n: int, hw: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(images, pixels) blocks of at most ``chunk`` pixels, or one image's pixels when those are fewer: whole
    images when an image has at most ``chunk`` pixels, else ranges of one image's pixels."""
    if hw <= chunk:
        per = max(1, chunk // hw)
        for i in range(0, n, per):
            yield slice(i, min(n, i + per)), slice(0, hw)
    else:
        for i in range(n):
            for s in range(0, hw, chunk):
                yield slice(i, i + 1), slice(s, min(hw, s + chunk))


def _nearest(ab: torch.Tensor, k: int, chunk: int, sigma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bins of every pixel (N x k x H x W int64, nearest first) and either their squared distances
    (``sigma`` None) or their normalised Gaussian weights (:func:`_gaussian_weights`), N x k x H x W in ab's dtype.

    The outputs are written block by block, one of the k rows at a time.
    """
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"expected ab as N x 2 x H x W, got {tuple(ab.shape)}")
    if not 1 <= k <= Q:
        raise ValueError(f"k must be in 1..{Q}, got {k}")
    n, _, h, w = ab.shape
    work = torch.float64 if ab.dtype == torch.float64 else torch.float32
    cands = _candidates(k, ab.device, work)
    idx = torch.empty(n, k, h * w, dtype=torch.int64, device=ab.device)
    out = torch.empty(n, k, h * w, dtype=work, device=ab.device)
    flat = ab.reshape(n, 2, h * w)
    with one_cpu_thread(ab.device):  # a long chain of small kernels
        for images, pixels in _blocks(n, h * w, chunk):
            shape = (images.stop - images.start, pixels.stop - pixels.start)
            pa = flat[images, 0, pixels].reshape(-1).to(work)
            pb = flat[images, 1, pixels].reshape(-1).to(work)
            dist = []
            for j, key in enumerate(_search(cands, pa, pb, _cells(pa, pb), k)):
                torch.bitwise_and(key.view(shape), (1 << _INDEX_BITS) - 1, out=idx[images, j, pixels])
                dist.append(key.bitwise_and_(-(1 << _INDEX_BITS)).view(torch.float64).view(shape))  # index bits cleared
            if sigma is None:
                for j, d in enumerate(dist):
                    out[images, j, pixels] = d
            else:
                _gaussian_weights(dist, sigma, out[images, :, pixels])
    return idx.view(n, k, h, w), out.view(n, k, h, w).to(ab.dtype)


def _gaussian_weights(d2: list[torch.Tensor], sigma: float, out: torch.Tensor) -> None:
    """w_j = exp(-(d2_j - d2_0) / 2 sigma^2) / sum_i exp(-(d2_i - d2_0) / 2 sigma^2) for ascending squared distances
    d2_0 <= d2_1 <= ... (float64, images x pixels each), written into ``out`` (images x k x pixels). This is the
    softmax of -d2 / 2 sigma^2, whose largest term (j = 0) is exp(0) = 1.

    exp(x) is computed as 2^(x log2 e), whose kernel is several times faster than exp's, on the rows of ``out``,
    one image at a time: a vectorised kernel and its scalar remainder may round differently, and this way a pixel
    takes the same path whatever the other images of the batch (the results do not depend on how a batch is split).
    """
    scale = -1.0 / (2.0 * sigma * sigma * float(np.log(2.0)))
    total = torch.ones(out[:, 0].shape, dtype=out.dtype, device=out.device)
    for j, d in enumerate(d2[1:], start=1):
        t = torch.sub(d, d2[0], out=out[:, j]).mul_(scale).exp2_()
        total.add_(t)
    inv = total.reciprocal_()
    out[:, 0] = inv
    out[:, 1:].mul_(inv.unsqueeze(1))


def nearest_bins(ab: torch.Tensor, k: int = 1, chunk: int = 1 << 17) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bins of every pixel, nearest first (equal distances: the lower bin index first).

    ab: N x 2 x H x W. Returns (indices int64 N x k x H x W, squared distances N x k x H x W in ab's dtype;
    float16 / bfloat16 inputs are searched in float32). Points outside [-128, 128)^2 (impossible for sRGB
    colours) use the candidates of the nearest border cell. ``chunk`` bounds the pixels searched at once.
    """
    return _nearest(ab, k, chunk, None)


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
    # the nearest distance is subtracted before exponentiating: same normalised weights, no underflow far from bins
    return _nearest(ab, neighbours, 1 << 17, sigma)


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
