"""Weight initialisations: Gaussian, and the data-dependent schemes of Krähenbühl et al. (ICLR 2016).

The paper trains its colorization network "from scratch with k-means initialization [36]" (Sec. 3.1), compares
against Gaussian and k-means initialised AlexNets (Fig. 7), and before fine-tuning on PASCAL "rescales the layers
so they 'learn' at the same rate" with the method of [36] (Sec. 3.2). [36] = Krähenbühl, Doersch, Donahue,
Darrell, "Data-dependent initializations of convolutional neural networks", ICLR 2016.

The functions work on any feed-forward model whose affine layers (``Conv2d``, ``ConvTranspose2d``, ``Linear``)
are registered in the order the forward pass applies them (true of every model in :mod:`xchannel.models`).
Layers are named by their qualified module name (``"conv1.conv"``, ``"block3.2"``) or by a prefix that contains
exactly one affine layer (``"conv1"``).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from xchannel.errors import UserError

AFFINE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
CONV_STD = 0.01
FC_STD = 0.005


# --------------------------------------------------------------------------------------------------------------
# Layer discovery


def affine_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All convolution / linear layers of ``model`` as (qualified name, module), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AFFINE)]


def _select(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    every = affine_layers(model)
    if layers is None:
        return every
    names = [n for n, _ in every]
    chosen: set[str] = set()
    for want in [layers] if isinstance(layers, str) else layers:
        hits = [n for n in names if n == want] or [n for n in names if n.startswith(want + ".")]
        if len(hits) != 1:
            why = "is not an affine layer" if not hits else f"holds {len(hits)} affine layers"
            raise UserError(f"layer {want!r} {why}; the model's affine layers: {', '.join(names)}")
        chosen.add(hits[0])
    return [(n, m) for n, m in every if n in chosen]  # forward order whatever the order asked


def _is_fc(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or any(part.startswith("fc") for part in name.split("."))


def _concat(batches: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    if isinstance(batches, torch.Tensor):
        return batches
    parts = list(batches)
    if not parts:
        raise ValueError("no data batches given")
    return torch.cat(parts, dim=0)


# --------------------------------------------------------------------------------------------------------------
# Gaussian


@torch.no_grad()
def gaussian_init_(model: nn.Module, seed: int | None = None, conv_std: float = CONV_STD, fc_std: float = FC_STD,
                   zero_ab: bool = True) -> nn.Module:
    """Gaussian initialisation in place: weights ~ N(0, 0.01^2) for convolutions and N(0, 0.005^2) for fc layers
    (``Linear``, or convolutions named ``fc*``: fc6/fc7/fc8 of the AlexNet), all biases 0, BatchNorm reset to the
    identity (weight 1, bias 0, running mean 0, variance 1). These are the CaffeNet fillers of the authors'
    released AlexNet training net.

    Draws come from a generator seeded with ``seed`` (the global RNG when None), layer by layer in registration
    order. If the model's ``input_conv`` takes Lab (3 channels) and ``zero_ab`` is true, only its L weights are
    drawn (exactly the draws of the 1-channel model) and its ab weights are zero.
    """
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    input_conv = getattr(model, "input_conv", None)
    for name, m in model.named_modules():
        if isinstance(m, AFFINE):
            std = fc_std if _is_fc(name, m) else conv_std
            w = m.weight
            if m is input_conv and zero_ab and w.shape[1] == 3:
                draw = torch.randn(w[:, :1].shape, generator=gen) * std
                w.zero_()
                w[:, :1].copy_(draw)
            else:
                w.copy_(torch.randn(w.shape, generator=gen) * std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, _BatchNorm):
            m.reset_parameters()
    return model


# --------------------------------------------------------------------------------------------------------------
# Running a model up to one layer


class _Captured(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


@torch.no_grad()
def _layer_io(model: nn.Module, module: nn.Module, x: torch.Tensor, which: str) -> torch.Tensor:
    """The input or output of ``module`` when ``model`` runs on ``x``; the forward pass stops there."""

    def grab_input(_m: nn.Module, args: tuple) -> None:
        raise _Captured(args[0].detach())

    def grab_output(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        raise _Captured(out.detach())

    hook = (module.register_forward_pre_hook(grab_input) if which == "input"
            else module.register_forward_hook(grab_output))
    try:
        model(x)
    except _Captured as got:
        return got.value
    finally:
        hook.remove()
    raise RuntimeError("the layer is not used by the model's forward pass")


def _channel_stats(z: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of a layer output N x C (x H x W)."""
    dims = [d for d in range(z.ndim) if d != channel_dim]
    z = z.double()
    return z.mean(dim=dims), z.std(dim=dims, unbiased=False)


@torch.no_grad()
def _normalise_layer_(model: nn.Module, module: nn.Module, x: torch.Tensor, beta: float = 0.0) -> None:
    """Within-layer initialisation: scale each output channel's weights and set its bias so that, on ``x``, the
    channel's pre-activation has mean ``beta`` and variance 1: W_i <- W_i / std_i, b_i <- (b_i - mean_i) / std_i
    + beta."""
    mean, std = _channel_stats(_layer_io(model, module, x, "output"))
    std = std.clamp_min(1e-12)
    w = module.weight
    shape = [1] * w.ndim
    out_dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
    shape[out_dim] = -1
    w.mul_((1.0 / std).view(shape).to(w))
    if module.bias is not None:
        module.bias.copy_(((module.bias.double() - mean) / std + beta).to(module.bias))


@torch.no_grad()
def normalise_layers_(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor],
                      layers: Sequence[str] | None = None, beta: float = 0.0) -> dict:
    """Krähenbühl et al.'s within-layer initialisation (their Algorithm 1), in place, in forward order.

    For each chosen affine layer k (default: all), with the layers below it already normalised, every output
    channel i gets W_i <- W_i / std_i and b_i <- (b_i - mean_i) / std_i + ``beta``, where mean_i and std_i are the
    mean and standard deviation of the channel's pre-activation on the data (over images and positions). On the
    data, every channel then has mean ``beta`` and variance 1 before its ReLU.

    This is what makes a randomly initialised network usable: Gaussian weights of std 0.01 shrink the signal by
    a factor ~10-100 per layer, so a Gaussian AlexNet's fc7 outputs are ~1e-7 of its input, and no learning
    rate suits every layer. Only the layers' scales and biases change, not the directions of their filters. The
    k-means initialisation (:func:`kmeans_init_`) ends each layer with the same step. The model runs in eval
    mode (dropout off) and is returned to its previous mode.

    Returns ``{"layers": [...], "std_before": name -> median channel std of the layer's output in the network
    as it was given, "beta"}``.
    """
    x = _concat(batches)
    chosen = _select(model, layers)
    was_training = model.training
    model.eval()
    std_before: dict[str, float] = {}

    def measure(module: nn.Module, _args: tuple, out: torch.Tensor, name: str) -> None:
        std_before[name] = float(_channel_stats(out.detach())[1].median())

    try:
        hooks = [m.register_forward_hook(lambda m, a, out, n=n: measure(m, a, out, n)) for n, m in chosen]
        try:
            model(x)
        finally:
            for hook in hooks:
                hook.remove()
        for _, module in chosen:
            _normalise_layer_(model, module, x, beta=beta)
    finally:
        model.train(was_training)
    return {"layers": [n for n, _ in chosen], "std_before": std_before, "beta": beta}


# --------------------------------------------------------------------------------------------------------------
# k-means initialisation


def _patches(inp: torch.Tensor, module: nn.Module, max_patches: int, gen: torch.Generator) -> torch.Tensor:
    """Random input patches of a layer (rows: P x (C*kh*kw), in the layer's weight layout)."""
    if isinstance(module, nn.Linear):
        rows = inp.reshape(inp.shape[0], -1)
        if rows.shape[0] > max_patches:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_patches].to(rows.device)]
        return rows
    n = inp.shape[0]
    per_image = max(1, math.ceil(max_patches / n))
    out = []
    for i in range(n):
        cols = nn.functional.unfold(inp[i: i + 1], module.kernel_size, dilation=module.dilation,
                                    padding=module.padding, stride=module.stride)[0]  # (C*k*k) x L
        take = torch.randperm(cols.shape[1], generator=gen)[:per_image].to(cols.device)
        out.append(cols[:, take].T)
    return torch.cat(out)[:max_patches]


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator, chunk: int = 4096) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` (n >= k) from k distinct random rows; empty clusters are re-seeded
    with random rows. -> k x d centroids."""
    n = x.shape[0]
    centroids = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    for _ in range(iters):
        c2 = centroids.pow(2).sum(1)
        assign = torch.cat([(c2[None, :] - 2.0 * x[s: s + chunk] @ centroids.T).argmin(1)
                            for s in range(0, n, chunk)])
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = sums / counts.clamp_min(1)[:, None].to(x)
        empty = counts == 0
        if empty.any():
            centroids[empty] = x[torch.randint(n, (int(empty.sum()),), generator=gen).to(x.device)]
    return centroids


def _top_eigen(xc: torch.Tensor, r: int, gen: torch.Generator, niter: int = 4,
               oversample: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r eigenpairs (ascending, like ``eigh``) of the covariance xc^T xc / n by a randomised range finder
    (Halko et al. 2011): orthonormal Q spanning xc (xc^T xc)^niter Omega, then the small Gram matrix B B^T of
    B = Q^T xc. Costs O(n d q) matrix products and one q x q eigendecomposition instead of a d x d one."""
    n, d = xc.shape
    q = min(r + oversample, n, d)
    y = xc @ torch.randn(d, q, generator=gen).to(xc.device)
    for _ in range(niter):
        y = torch.linalg.qr(y).Q
        y = xc @ (xc.T @ y)
    basis = torch.linalg.qr(y).Q  # n x q
    b = (basis.T @ xc).double()  # q x d
    sq, u = torch.linalg.eigh(b @ b.T)  # squared singular values of b, ascending
    sq, u = sq[-r:].clamp_min(1e-30), u[:, -r:]
    v = (b.T @ u) / sq.sqrt()  # right singular vectors: d x r
    return (sq / n).float(), v.float()


def kmeans_filters(patches: torch.Tensor, n_out: int, gen: torch.Generator, iters: int = 10,
                   whiten_eps: float = 1e-2, max_whiten_dims: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters from k-means on whitened patches (Krähenbühl et al., Sec. 3, after Coates & Ng).

    With the patches D (n x d) centred by their mean m and covariance C = V diag(s) V^T, the data are
    PCA-whitened onto the top r = min(d, n_out, ``max_whiten_dims``) directions, z = (p - m) V_r S
    (S = diag((s + eps)^-1/2), eps = ``whiten_eps`` x the mean kept eigenvalue), each z is scaled to unit norm,
    and k-means with k = n_out clusters gives centroids c. The filter w = V_r S c responds to a raw patch with
    w . (p - m) = c . z: the centroid's match in whitened space. Returns (W: n_out x d, bias: n_out, = -W m).

    The authors keep r = min(d, n_out); the cap bounds the cost of the wide fc layers (the top directions come
    from a randomised range finder when d exceeds it, :func:`_top_eigen`). With fewer patches than filters
    (fc layers on a small batch) the filters are N(0, 1) draws, as in the authors' implementation.
    """
    x = patches.float()
    n, d = x.shape
    m = x.mean(0)
    if n < n_out:
        w = torch.randn(n_out, d, generator=gen).to(x.device)
        return w, -(w @ m)
    xc = x - m
    r = min(d, n_out, max_whiten_dims)
    if d <= max_whiten_dims:
        xd = xc.double()
        s, v = torch.linalg.eigh(xd.T @ xd / n)
        s, v = s[-r:].float(), v[:, -r:].float()
    else:
        s, v = _top_eigen(xc, r, gen)
    s = s.clamp_min(0.0)
    scale = 1.0 / torch.sqrt(s + whiten_eps * s.mean().clamp_min(1e-12))
    z = (xc @ v) * scale
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    c = _kmeans(z, n_out, iters, gen)
    w = c @ (v * scale).T
    return w, -(w @ m)


@torch.no_grad()
def kmeans_init_(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor],
                 layers: Sequence[str] | None = None, max_patches: int = 20000, iters: int = 10, seed: int = 0,
                 whiten_eps: float = 1e-2, max_whiten_dims: int = 2048, progress: bool = True) -> nn.Module:
    """Krähenbühl et al.'s k-means data-dependent initialisation, in place, layer by layer in forward order.

    For each chosen layer k (default: every affine layer), with the layers below already initialised:

    1. run the model on the data batch up to layer k and collect (at most ``max_patches``) random patches of
       its input, one patch per output position (for a grouped convolution, per group);
    2. set its filters to k-means centroids of the whitened patches (:func:`kmeans_filters`); transposed
       convolutions get Gaussian directions (patches are not defined for them, as in the authors' code);
    3. within-layer scaling: rescale each output channel and set its bias so that its output on the batch has
       mean 0 and variance 1 exactly (W_i <- W_i / std_i, b_i <- (b_i - mean_i) / std_i).

    The model runs in eval mode (BatchNorm layers apply their current running statistics: the identity for a
    fresh model) and is returned to its previous mode.
    """
    x = _concat(batches)
    chosen = _select(model, layers)
    gen = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        for name, module in tqdm(chosen, desc="k-means init", disable=not progress, leave=False):
            w = module.weight
            if isinstance(module, nn.ConvTranspose2d):
                w.copy_(torch.randn(w.shape, generator=gen))
                if module.bias is not None:
                    module.bias.zero_()
            else:
                inp = _layer_io(model, module, x, "input")
                patches = _patches(inp, module, max_patches, gen)
                groups = getattr(module, "groups", 1)
                per_in, per_out = patches.shape[1] // groups, w.shape[0] // groups
                for g in range(groups):
                    wg, bg = kmeans_filters(patches[:, g * per_in: (g + 1) * per_in], per_out, gen, iters,
                                            whiten_eps, max_whiten_dims)
                    w[g * per_out: (g + 1) * per_out].copy_(wg.view(per_out, *w.shape[1:]).to(w))
                    if module.bias is not None:
                        module.bias[g * per_out: (g + 1) * per_out].copy_(bg.to(w))
            _normalise_layer_(model, module, x)
    finally:
        model.train(was_training)
    return model


# --------------------------------------------------------------------------------------------------------------
# Between-layer scale adjustment


def _log_ratios(model: nn.Module, chosen: list[tuple[str, nn.Module]], x: torch.Tensor,
                eta: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    for p in model.parameters():
        p.grad = None
    y = model(x)
    if eta is None:
        eta = torch.randn(y.shape, generator=gen).to(y)
    (y * eta).sum().backward()
    logs = torch.tensor([math.log(m.weight.grad.double().pow(2).mean().item()
                                  / m.weight.double().pow(2).mean().item()) for _, m in chosen],
                        dtype=torch.float64)
    return logs, eta


def rescale_(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor], iters: int = 10,
             layers: Sequence[str] | None = None, alpha: float = 1.0, tol: float = 0.01, seed: int = 0,
             compute_dtype: torch.dtype | None = torch.float64) -> dict:
    """Krähenbühl et al.'s between-layer scale adjustment (their Algorithm 2), in place.

    Goal: every layer k changes at the same relative rate under SGD. The rate is measured by
    C_k = E[||grad_{W_k} l||^2] / ||W_k||^2 (mean squares over the layer's weights), with the loss l = eta . f(x)
    for a random Gaussian target direction eta on the network output f (drawn once per call, from ``seed``).
    Each iteration:

    1. compute C_k for the chosen layers and their geometric mean C = (prod_k C_k)^(1/K);
    2. stop when every |log C_k - log C| < ``tol``;
    3. scale W_k <- s_k W_k with s_k = (C_k / C)^(alpha/4), and each bias b_k <- (s_1 ... s_k) b_k.

    Because ReLU and max-pooling are positively homogeneous, step 3 multiplies every activation of layer k by
    P_k = s_1 ... s_k and nothing else changes: the network's function is preserved up to these per-layer
    scales (its output is multiplied by P = prod_k s_k, returned as ``output_scale``). For such a network the
    gradient of layer k scales by P / s_k, so C_k becomes P^2 C_k / s_k^4 = P^2 C: with ``alpha = 1`` one step
    equalises all rates (the authors use a damping alpha < 1 and ~10 iterations for inexactly homogeneous nets).

    When all layers are chosen, sum_k log s_k = 0, so P = 1 and the output is unchanged (with ``alpha = 1``).
    The ratios span many orders of magnitude at initialisation, so by default the model runs in float64 during
    the adjustment (``compute_dtype``) and is cast back afterwards; in float32 the rates agree to ~1%.

    BatchNorm breaks the homogeneity bookkeeping (and makes each layer scale-invariant), so the model must not
    contain any: fold it first (:func:`xchannel.convert.fold_batchnorm`), as for the paper's PASCAL fine-tuning.

    Returns {"iterations", "log_ratio_spread_before", "log_ratio_spread_after", "scales" (name -> total s_k),
    "output_scale"}.
    """
    bns = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if bns:
        raise UserError(f"rescale_: the model has BatchNorm layers ({', '.join(bns[:3])}"
                        f"{', ...' if len(bns) > 3 else ''}); fold them into the layers first "
                        f"(xchannel.convert.fold_batchnorm)")
    x = _concat(batches)
    every = affine_layers(model)
    chosen = _select(model, layers)
    dtype = next(model.parameters()).dtype
    if compute_dtype is not None:
        model.to(compute_dtype)
        x = x.to(compute_dtype)
    chosen_names = {n for n, _ in chosen}
    gen = torch.Generator().manual_seed(int(seed))
    total = {n: 1.0 for n, _ in chosen}
    was_training = model.training
    model.eval()  # dropout off; the scaling is defined on the deterministic network
    eta = None
    spread_before = spread = float("nan")
    it = 0
    try:
        for it in range(iters + 1):
            logs, eta = _log_ratios(model, chosen, x, eta, gen)
            spread = float((logs - logs.mean()).abs().max())
            if it == 0:
                spread_before = spread
            if spread < tol or it == iters:
                break
            scales = dict(zip([n for n, _ in chosen], torch.exp(alpha / 4.0 * (logs - logs.mean())).tolist()))
            cumulative = 1.0
            with torch.no_grad():
                for name, m in every:
                    s = scales.get(name, 1.0) if name in chosen_names else 1.0
                    cumulative *= s
                    m.weight.mul_(s)
                    if m.bias is not None:
                        m.bias.mul_(cumulative)
                    if name in total:
                        total[name] *= s
    finally:
        for p in model.parameters():
            p.grad = None
        model.to(dtype)
        model.train(was_training)
    return {"iterations": it, "log_ratio_spread_before": spread_before, "log_ratio_spread_after": spread,
            "scales": total, "output_scale": math.prod(total.values())}
