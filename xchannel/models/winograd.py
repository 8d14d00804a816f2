"""Winograd convolution for inference: 3 x 3, stride-1 convolutions as F(m x m, 3 x 3) in PyTorch ops.

The algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
-------------------------------------------------------------------------------------
A 3 x 3 correlation that produces an m x m output tile from an a x a input tile (a = m + 2) is

    Y = A^T [ (G g G^T) (*) (B^T d B) ] A

with ``(*)`` the elementwise product and A^T (m x a), G (a x 3), B^T (a x a) the matrices of the Toom-Cook
algorithm on a - 1 finite points and the point at infinity (:func:`winograd_matrices`). Summed over the input
channels c, the elementwise products become, for each of the a^2 positions xi of the transformed tile, one matrix
product over c:

    M[xi] = U[xi]^T V[xi],   U[xi] = (G g G^T)[xi]  (C x K),   V[xi] = (B^T d B)[xi]  (C x P, P tiles),

so a layer is: the input transform of every overlapping a x a tile (stride m), a^2 GEMMs batched into one
``torch.bmm``, and the output transform A^T M A of every tile. Per output tile and (input, output) channel pair
the GEMMs do a^2 multiplications where the direct convolution does 9 m^2: 4x fewer for F(4 x 4, 3 x 3) (36 against
144), 2.25x for F(2 x 2, 3 x 3) (16 against 36).

How it is done here
-------------------
* The filters are transformed once, in float64, when the module is built (U = G g G^T via the Kronecker product
  G (x) G), and stored in the weight's dtype: a^2 / 9 times the weight's memory (4x for F(4 x 4, 3 x 3)).
* Input transform: vec(B^T d B) = (B^T (x) B^T) vec(d) for every a x a tile at stride m is one convolution of
  every channel (as a batch of one-channel images) with a^2 fixed a x a kernels at stride m; its output, read as
  V[xi] (C x P, P tiles), is already the GEMM operand (a strided view, no copy, for one image).
* The a^2 GEMMs M[xi] = U[xi]^T V[xi] (K x P) are one ``torch.bmm``.
* Output transform: vec(A^T M A) = (A^T (x) A^T) vec(M) is one GEMM; one copy puts the m x m tiles in place in the
  N x K x H x W result (contiguous) and adds the bias.
* Padding: the convolution's zero padding is the input transform's own padding; an output size that is not a
  multiple of m is padded (bottom and right) to whole tiles, whose extra outputs are cropped.
* Dilation d (per axis) is exact by space-to-batch: output pixel (i, j) reads input rows i, i + d, i + 2d, so the
  outputs with i = r (mod d) and j = s (mod d) are a dense 3 x 3 convolution of the zero-padded input's polyphase
  component (r, s). The d_h d_w components are a batch of images for the same GEMMs; the output copy interleaves
  them back. When the padding and the input size are multiples of d, the components of the unpadded input are
  taken (one copy) and padded by p / d inside the input transform.
* The transforms are chains of a few memory-bound kernels: they run on one intra-op thread
  (:func:`xchannel.color.one_cpu_thread`, whose docstring says why); the GEMMs use all of torch's threads.

Eligible convolutions (:func:`is_eligible`): exactly ``nn.Conv2d`` with a 3 x 3 kernel, stride 1, ``groups=1``,
zero padding (any amount, per axis, or 'same' / 'valid'), any dilation, bias or not, and at least
``min_channels`` (default :data:`MIN_CHANNELS` = 128) input and output channels. With fewer, the saved
multiplications do not pay for the transforms: on the VGG colorizer (one thread), 64 -> 128 channels at 128 x 128 ran
no faster than the direct convolution and 1 -> 64 five times slower, while 128 -> 256 at 64 x 64 was 1.55x faster and
512 -> 512 at 32 x 32 2x. Everything else (strided, grouped, 1 x 1, transposed convolutions) is left as it is.

Numerics: the transforms add rounding error that grows with m. F(4 x 4, 3 x 3) uses the points 0, 1, -1, 1/2, -2
and infinity, which gave a third of the float32 error of Lavin's 0, +-1, +-2 (and of 0, +-1, +-1/2) on 512-channel
layers, in line with Barabasz et al., "Error Analysis and Improving the Accuracy of Winograd Convolution for Deep
Neural Networks" (2020). The measured errors are in the README's performance section and
``benchmarks/perf/colorize.py``.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.color import one_cpu_thread

KERNEL = 3
MIN_CHANNELS = 128

# finite interpolation points per output tile size m (a - 1 = m + 1 of them; the point at infinity is added)
POINTS: dict[int, tuple[Fraction, ...]] = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2)),
}


def _poly_mul(p: Sequence[Fraction], q: Sequence[Fraction]) -> list[Fraction]:
    """Coefficients (lowest degree first) of the product of two polynomials."""
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def winograd_matrices(m: int, points: Sequence[Fraction] | None = None,
                      r: int = KERNEL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A^T (m x a), G (a x r), B^T (a x a) of F(m, r), a = m + r - 1, as float64 tensors, computed exactly.

    Toom-Cook on the finite points p_0 ... p_{a-2} and infinity. The 1-D correlation y_k = sum_j g_j d_{k+j} is the
    transpose of the linear convolution s = h * g, so y = E_m^T [ (E_r g) (*) (C^T d) ] with E_n the a x n
    evaluation matrix (row [1, p, ..., p^{n-1}] for a finite point, [0, ..., 0, 1] for infinity) and C the
    interpolation matrix: column i of C holds the coefficients of the Lagrange polynomial
    prod_{j != i}(x - p_j) / f_i, f_i = prod_{j != i}(p_i - p_j), and the column of infinity those of
    prod_j (x - p_j). The factor 1 / f_i is moved from B^T's row i into G's row i, so that B^T holds the plain
    coefficients of prod_{j != i}(x - p_j): small integers or dyadic fractions, exact in binary floating point.
    """
    pts = [Fraction(p) for p in (POINTS[m] if points is None else points)]
    a = m + r - 1
    if len(pts) != a - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m}, {r}) needs {a - 1} distinct finite points, got {list(map(str, pts))}")

    def evaluation(n: int) -> list[list[Fraction]]:
        return [[p**k for k in range(n)] for p in pts] + [[Fraction(int(k == n - 1)) for k in range(n)]]

    bt: list[list[Fraction]] = []
    f: list[Fraction] = []
    for i, p in enumerate(pts):
        poly, fi = [Fraction(1)], Fraction(1)
        for j, q in enumerate(pts):
            if j != i:
                poly, fi = _poly_mul(poly, [-q, Fraction(1)]), fi * (p - q)
        bt.append(poly + [Fraction(0)])
        f.append(fi)
    full = [Fraction(1)]
    for q in pts:
        full = _poly_mul(full, [-q, Fraction(1)])
    bt.append(full)
    f.append(Fraction(1))
    g = [[x / fi for x in row] for row, fi in zip(evaluation(r), f)]
    at = [list(col) for col in zip(*evaluation(m))]

    def t(rows: list[list[Fraction]]) -> torch.Tensor:
        return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float64)

    return t(at), t(g), t(bt)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The (top = bottom, left = right) zero padding of ``conv``, with 'valid' and 'same' resolved (3 x 3 kernel)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":  # total padding dilation * (k - 1) = 2 d, split evenly
        return _pair(conv.dilation)
    return _pair(conv.padding)


def is_eligible(module: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``module`` is a convolution that :class:`WinogradConv2d` computes exactly (see the module doc)."""
    return (type(module) is nn.Conv2d and tuple(module.kernel_size) == (KERNEL, KERNEL)
            and tuple(module.stride) == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
            and min(module.in_channels, module.out_channels) >= min_channels)


class WinogradConv2d(nn.Module):
    """The inference-time Winograd F(m x m, 3 x 3) equivalent of an eligible ``nn.Conv2d`` (module doc).

    Built from the convolution, whose weights are read once and not kept: the transformed filters (``UT``,
    a^2 x K x C) and the bias are buffers, so the module follows ``.to(device)``. It computes in ``UT``'s dtype
    (autocast is switched off inside: the transforms lose too much in bfloat16) and returns that dtype. The output
    equals ``conv(x)`` up to rounding; it is differentiable in ``x`` but meant for inference (the filters are
    buffers, not parameters).
    """

    def __init__(self, conv: nn.Conv2d, m: int = 4) -> None:
        super().__init__()
        if not is_eligible(conv, min_channels=1):
            raise ValueError(f"not an eligible convolution (3x3, stride 1, groups 1, zero padding): {conv}")
        if m not in POINTS:
            raise ValueError(f"tile size m must be one of {sorted(POINTS)}, got {m}")
        self.m, self.a = m, m + KERNEL - 1
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding = conv_padding(conv)
        self.dilation = _pair(conv.dilation)
        at, g, bt = winograd_matrices(m)
        w = conv.weight.detach()
        # U^T[xi, k, c] = (G g[k, c] G^T)[xi] = ((G (x) G) vec(g[k, c]))[xi], in float64, stored in the weight's dtype
        u = torch.kron(g, g).to(w.device) @ w.double().reshape(-1, KERNEL * KERNEL).T  # a^2 x (K C)
        self.register_buffer("UT", u.view(self.a * self.a, self.out_channels, self.in_channels).to(w.dtype))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        # the input transform as a convolution: output channel xi holds (B^T d B)[xi] = (B^T (x) B^T)[xi] . vec(d)
        self.register_buffer("BT_kernel", torch.kron(bt, bt).view(self.a * self.a, 1, self.a, self.a)
                             .to(device=w.device, dtype=w.dtype))
        self.register_buffer("AT2", torch.kron(at, at).to(device=w.device, dtype=w.dtype))  # m^2 x a^2

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, F({self.m}x{self.m}, 3x3), padding={self.padding}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x K x (H + 2 p_h - 2 d_h) x (W + 2 p_w - 2 d_w), as ``nn.Conv2d`` computes it."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.UT.dtype)
            with one_cpu_thread(x.device):
                v, geometry = self._input_transform(x)
            mm = torch.bmm(self.UT, v)  # a^2 x K x P: the a^2 GEMMs
            with one_cpu_thread(x.device):
                return self._output_transform(mm, geometry)

    def _input_transform(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """V (a^2 x C x P; P = d_h d_w N t_h t_w tiles) and the geometry that the output transform needs."""
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise RuntimeError(f"WinogradConv2d expects {self.in_channels} input channels, got shape {tuple(x.shape)}")
        m, a = self.m, self.a
        (ph, pw), (dh, dw) = self.padding, self.dilation
        ho, wo = h + 2 * ph - 2 * dh, w + 2 * pw - 2 * dw
        if ho <= 0 or wo <= 0:
            raise RuntimeError(f"WinogradConv2d: input {h}x{w} with padding {self.padding} and dilation "
                               f"{self.dilation} is smaller than the 3x3 kernel")
        # each polyphase component (r, s) is a dense valid 3x3 convolution with th x tw output tiles of m x m,
        # read from hc x wc pixels of the zero-padded input
        th, tw = math.ceil(math.ceil(ho / dh) / m), math.ceil(math.ceil(wo / dw) / m)
        hc, wc = th * m + 2, tw * m + 2
        extra_h, extra_w = dh * hc - (h + 2 * ph), dw * wc - (w + 2 * pw)  # zero rows / columns for whole tiles
        if extra_h == extra_w == 0 and ph % dh == pw % dw == h % dh == w % dw == 0:
            # the components of x itself, padded by p / d in the transform (for d = 1: x, no copy)
            src, pad = x, (ph // dh, pw // dw)
        else:
            src, pad = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h)), (0, 0)
        hs, ws = src.shape[2] // dh, src.shape[3] // dw
        # space to batch: images[(n, c, r, s)] = src[n, c, r::dh, s::dw] (for d = 1: a view)
        images = src.view(n, c, hs, dh, ws, dw).permute(0, 1, 3, 5, 2, 4).reshape(n * c * dh * dw, 1, hs, ws)
        # V[(n, c, r, s), xi, tile] = (B^T d B)[xi] of every a x a tile (stride m), as one convolution
        v = F.conv2d(images, self.BT_kernel, stride=m, padding=pad).view(n, c, dh * dw, a * a, th * tw)
        # the GEMM operand a^2 x C x P, tiles P in the order (n, r, s, ti, tj): a view for one image, else a copy
        v = v.permute(3, 1, 0, 2, 4).reshape(a * a, c, n * dh * dw * th * tw)
        return v, (n, th, tw, ho, wo)

    def _output_transform(self, mm: torch.Tensor, geometry: tuple[int, ...]) -> torch.Tensor:
        """A^T M A of every tile, plus the bias, tiles and polyphase components put back in place: N x K x Ho x Wo."""
        n, th, tw, ho, wo = geometry
        m, a, k = self.m, self.a, self.out_channels
        dh, dw = self.dilation
        y = torch.mm(self.AT2, mm.view(a * a, -1)).view(m, m, k, n, dh, dw, th, tw)
        out = mm.new_empty(n, k, th, m, dh, tw, m, dw)
        y = y.permute(3, 2, 6, 0, 4, 7, 1, 5)  # n, k, ti, u, r, tj, v, s: row (ti m + u) dh + r
        if self.bias is None:
            out.copy_(y)
        else:
            torch.add(y, self.bias.view(k, 1, 1, 1, 1, 1, 1), out=out)
        out = out.view(n, k, th * m * dh, tw * m * dw)
        return out if (out.shape[2], out.shape[3]) == (ho, wo) else out[:, :, :ho, :wo]


def winograd_inference(model: nn.Module, m: int = 4, min_channels: int = MIN_CHANNELS) -> nn.Module:
    """An eval-mode copy of ``model`` with every eligible ``nn.Conv2d`` (:func:`is_eligible`) replaced by its
    :class:`WinogradConv2d` F(m x m, 3 x 3); the original model and its parameters are left untouched."""
    out = copy.deepcopy(model).eval()
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if is_eligible(child, min_channels):
                setattr(module, child_name, WinogradConv2d(child, m))
    return out


@torch.no_grad()
def layer_errors(original: nn.Module, transformed: nn.Module, *inputs: torch.Tensor) -> dict[str, float]:
    """Max abs difference, per layer, between each :class:`WinogradConv2d` of ``transformed`` and the convolution
    of the same name in ``original``, both applied to the input that the Winograd layer receives while
    ``transformed`` runs on ``inputs``: each layer's own error, not the accumulated one."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen[name] = (args[0].clone(), out.clone())  # clones: an in-place ReLU follows

    hooks = [module.register_forward_hook(lambda mod, args, out, name=name: keep(name, args, out))
             for name, module in transformed.named_modules() if isinstance(module, WinogradConv2d)]
    try:
        transformed(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {name: float((out.float() - original.get_submodule(name)(x).float()).abs().max())
            for name, (x, out) in seen.items()}
