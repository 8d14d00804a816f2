"""Linear classifiers on frozen, pooled features: BatchNorm without affine parameters, then one linear layer.

For pooled features x of shape C x H' x W' (or a vector of D) the head computes

    logits = W flatten(BN(x)) + b,    BN(x)_c = (x_c - mu_c) / sqrt(sigma_c^2 + eps)

with per-channel statistics mu_c, sigma_c^2 over the batch (and the H' x W' positions) in training and, at test time,
their averages over all training batches, as VISSL's ``eval_mlp`` head. BN has no learnable scale or shift, so the
classifier stays linear in the normalised features. The test-time statistics are the plain cumulative average
(PyTorch's ``momentum=None``) rather than an exponential one (VISSL: momentum 0.1): the encoder is frozen, so the
feature distribution does not drift, and a short probe (a few dozen steps on a small data set) would otherwise still
carry the initial running variance of 1.

eps is 1e-20 rather than PyTorch's 1e-5, so that the probe is invariant to the scale of the features, as BN is meant
to make it: the Gaussian-initialised AlexNet (std 0.01 weights, no BatchNorm) on our normalised input ((L - 50) / 100,
100x smaller than Caffe's L - 50) has conv3 activations with a standard deviation near 1e-3 and fc7 near 1e-6, whose
variances a 1e-5 eps would swamp, turning those layers into constants (chance accuracy). A channel that is exactly
constant still maps to 0. W ~ N(0, 0.01^2), b = 0, drawn from a generator seeded by
(seed, layer name) so a layer's head starts the same whichever other layers are probed alongside it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

BN_MOMENTUM = None  # cumulative average (see the module docstring)
BN_EPS = 1e-20
INIT_STD = 0.01


def head_generator(seed: int, layer: str) -> torch.Generator:
    """The generator of ``layer``'s initial weights: seeded by ``seed`` and a CRC of the layer name."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(layer.encode())) % (2 ** 63))


class LinearHead(nn.Module):
    """BatchNorm (no affine) + Linear on features of per-image shape ``shape`` ((C, H, W) or (D,)).

    The input may be the pooled map (N x C x H x W) or its flattened form (N x C*H*W, e.g. from a feature cache).
    """

    def __init__(self, shape: Sequence[int], num_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        dim = math.prod(self.shape)
        bn = dict(eps=BN_EPS, momentum=BN_MOMENTUM, affine=False)
        self.bn: nn.Module = nn.BatchNorm2d(self.shape[0], **bn) if len(self.shape) == 3 else nn.BatchNorm1d(dim, **bn)
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator) * INIT_STD)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.shape).float()
        return self.fc(self.bn(x).flatten(1))


class ProbeHeads(nn.ModuleDict):
    """One :class:`LinearHead` per layer (trained together, but independent: each sees only its own loss)."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], num_classes: int, seed: int = 0) -> None:
        super().__init__({layer: LinearHead(shape, num_classes, head_generator(seed, layer))
                          for layer, shape in shapes.items()})

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on the linear weights only (not on biases), as VISSL's colorization benchmark."""
        weights = [h.fc.weight for h in self.values()]
        biases = [h.fc.bias for h in self.values()]
        return [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]


__all__ = ["BN_EPS", "BN_MOMENTUM", "INIT_STD", "LinearHead", "ProbeHeads", "head_generator"]
