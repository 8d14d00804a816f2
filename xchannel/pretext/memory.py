"""A memory bank of unit embeddings, one per training image, and the objectives of instance discrimination against
it (Wu, Xiong, Yu, Lin, "Unsupervised feature learning via non-parametric instance discrimination", CVPR 2018;
the released ``zhirongw/lemniscate.pytorch`` settles what the paper leaves open).

With v_j the bank's row of image j, f = F(x_i) / |F(x_i)| the embedding of image i and tau the temperature, the
non-parametric softmax is P(i | f) = exp(v_i . f / tau) / Z_f, Z_f = sum_j exp(v_j . f / tau) (Sec. 3.1).

* :func:`softmax_loss`: -log P(i | f) exactly, Z_f over the whole bank (``negatives=None``), or over the positive
  and K sampled rows (the softmax form that later work, e.g. contrastive multiview coding, prefers to NCE);
* :func:`nce_loss`: noise-contrastive estimation (Sec. 3.2) with K noise rows drawn uniformly (P_n = 1/N): with
  P(j | f) = exp(v_j . f / tau) / Z, Z a constant estimated once, on the first batch, as N times the mean of the
  batch's exp(v . f / tau), and h(j, f) = P(j | f) / (P(j | f) + K P_n), the loss is -log h(i, f) - sum over the
  K noise rows of log(1 - h(j, f)), averaged over the batch (the released ``NCECriterion``, without its 1e-7).

:meth:`MemoryBank.update` is the released code's update after each step (``NCEAverage``, momentum 0.5),
v_i <- (m v_i + (1 - m) f) / |m v_i + (1 - m) f|. Rows start as random unit vectors (normalised Gaussian draws
from a generator of their own; the released bank starts uniform in +-1/sqrt(d/3), norm about 1).
:func:`weighted_knn` is the paper's weighted k-nearest-neighbour classifier on the bank (Sec. 3.4: the k most
similar rows vote for their class with weight exp(s / tau)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class MemoryBank:
    """``size`` rows of ``dim``-dimensional unit vectors on ``device``; ``z``: the NCE constant once estimated."""

    def __init__(self, size: int, dim: int, seed: int, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        self.weight = F.normalize(torch.randn(size, dim, generator=gen, dtype=torch.float32), dim=1).to(device)
        self.z: float | None = None

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        """Rows ``index`` <- the normalised m v + (1 - m) f, f the rows of ``features`` (unit embeddings)."""
        mixed = momentum * self.weight[index] + (1.0 - momentum) * features.to(self.weight)
        self.weight.index_copy_(0, index, F.normalize(mixed, dim=1))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.clone(), "z": torch.tensor(math.nan if self.z is None else self.z,
                                                                 dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        w = state["weight"]
        if tuple(w.shape) != tuple(self.weight.shape):
            raise ValueError(f"{where}: the checkpoint's memory bank is {tuple(w.shape)}, the training data needs "
                             f"{tuple(self.weight.shape)} (one row per training image)")
        self.weight = w.to(self.weight)
        z = float(state["z"])
        self.z = None if math.isnan(z) else z


def contrast(features: torch.Tensor, bank: MemoryBank, index: torch.Tensor,
             negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """v . f / tau for each embedding (B x d, unit rows) against its own row (column 0) and its ``negatives``
    (B x K row indices), B x (K + 1); ``negatives=None``: against every row, B x N."""
    if negatives is None:
        return features @ bank.weight.T / temperature
    rows = bank.weight[torch.cat([index.view(-1, 1), negatives], 1)]  # B x (K + 1) x d
    return torch.bmm(rows, features.unsqueeze(2)).squeeze(2) / temperature


def softmax_loss(logits: torch.Tensor, index: torch.Tensor, sampled: bool) -> torch.Tensor:
    """-log P(i | f): cross-entropy of :func:`contrast`'s logits with the image's own row as the class (column 0
    when ``sampled``, else column ``index``)."""
    target = torch.zeros_like(index) if sampled else index
    return F.cross_entropy(logits, target)


def nce_constant(logits: torch.Tensor, size: int) -> float:
    """Z = N times the mean of exp(logits) over the batch's rows (estimated on the first batch)."""
    return float(logits.double().exp().mean()) * size


def nce_loss(logits: torch.Tensor, z: float, size: int) -> torch.Tensor:
    """The NCE loss for :func:`contrast`'s B x (K + 1) logits (own row first, then K uniform noise rows of a bank of
    ``size`` rows) and the constant ``z``, averaged over the batch."""
    k = logits.shape[1] - 1
    kpn = k / size  # K P_n
    p = logits.exp() / z
    positive = torch.log(p[:, 0] / (p[:, 0] + kpn))
    noise = torch.log(kpn / (p[:, 1:] + kpn)).sum(1)
    return -(positive + noise).mean()


@torch.no_grad()
def weighted_knn(similarity: torch.Tensor, labels: torch.Tensor, k: int, temperature: float,
                 classes: int) -> torch.Tensor:
    """The class each row of ``similarity`` (B x N cosine similarities to the bank) gets from its ``k`` most
    similar rows, each voting for its label with weight exp(s / tau); rows labelled -1 do not vote."""
    s, idx = similarity.topk(min(k, similarity.shape[1]), dim=1)
    lab = labels[idx]
    w = (s / temperature).exp() * (lab >= 0)
    votes = torch.zeros(similarity.shape[0], classes, dtype=w.dtype, device=w.device)
    votes.scatter_add_(1, lab.clamp_min(0), w)
    return votes.argmax(1)


def majority_share(labels: np.ndarray | torch.Tensor) -> float:
    """The share of the most frequent label among the labelled (>= 0) ones: the accuracy of always answering it."""
    lab = torch.as_tensor(labels)
    lab = lab[lab >= 0]
    return float(torch.bincount(lab).max()) / len(lab) if len(lab) else 0.0
