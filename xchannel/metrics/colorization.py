"""Table 1's raw accuracy metric: AuC of the cumulative ab error distribution, raw and class-rebalanced.

For thresholds t = 0, 1, ..., 150 (ab units) take the fraction of pixels whose ab L2 error is at most t; the AuC
is the area under that curve normalised to [0, 1] (trapezoid rule divided by 150), so a perfect prediction scores
1 (Sec. 3.1, after Deshpande et al. 2015). The rebalanced variant weights each pixel inversely to the probability
of its ground-truth colour class (Eq. 4 with lambda = 0, sigma = 5). The class probabilities are by default the
authors' ImageNet prior (:func:`xchannel.color.reference_prior`), as in the paper; any prior over the 313 bins can
be given instead, or ``prior="data"`` to use the evaluated data's own class frequencies (every colour class
present then counts equally).

:class:`AbAucMeter` accumulates a (class x error) histogram over any number of batches, so one pass over a data
set gives both numbers for any prior.
"""

from __future__ import annotations

import torch

from xchannel.color import Q, nearest_bins, rebalance_weights, reference_prior
from xchannel.metrics.uncertainty import BootstrapConfig, Interval, colorization_auc_interval

MAX_THRESHOLD = 150


class AbAucMeter:
    """Streaming AuC: ``update(pred_ab, true_ab)`` per batch, then ``auc()`` and ``auc(rebalanced=True)``.

    With ``keep_images`` it also keeps each image's error histogram, raw and weighted by the rebalancing weights of
    ``prior`` (None: the authors' ImageNet prior), for :meth:`interval`: a bootstrap over images (two rows of
    ``max_threshold + 2`` numbers per image)."""

    def __init__(self, max_threshold: int = MAX_THRESHOLD, keep_images: bool = False,
                 prior: torch.Tensor | None = None) -> None:
        self.max_threshold = max_threshold
        # hist[q, e]: pixels of true class q whose error rounds up to e (e = max_threshold + 1: beyond all)
        self.hist = torch.zeros(Q, max_threshold + 2, dtype=torch.float64)
        self.keep_images = keep_images
        self.image_weights = (rebalance_weights(reference_prior() if prior is None else prior, lam=0.0, sigma=5.0)
                              if keep_images else None)
        self.per_image: dict[bool, list[torch.Tensor]] = {False: [], True: []}

    @torch.no_grad()
    def update(self, pred_ab: torch.Tensor, true_ab: torch.Tensor, classes: torch.Tensor | None = None) -> None:
        """Accumulate one batch. ``classes`` (the true ab's nearest bins, N x 1 x H x W) may be passed in when
        several predictions of the same images are scored: the nearest-bin search is the costly part."""
        if pred_ab.shape != true_ab.shape or pred_ab.ndim != 4 or pred_ab.shape[1] != 2:
            raise ValueError(f"expected matching N x 2 x H x W ab, got {tuple(pred_ab.shape)} and {tuple(true_ab.shape)}")
        err = (pred_ab.double() - true_ab.double()).norm(dim=1)
        # err <= t (t integer) <=> ceil(err) <= t; a 1e-6 tolerance keeps float noise from crossing a threshold
        ebin = (err - 1e-6).ceil().clamp(min=0).clamp(max=self.max_threshold + 1).long().flatten().cpu()
        if classes is None:
            classes = nearest_bins(true_ab.float(), 1)[0]
        flat = classes.flatten().cpu() * (self.max_threshold + 2) + ebin
        if not self.keep_images:
            self.hist += torch.bincount(flat, minlength=self.hist.numel()).view_as(self.hist).double()
            return
        n, size = pred_ab.shape[0], self.hist.numel()
        image = torch.arange(n).repeat_interleave(flat.numel() // n)
        per = torch.bincount(image * size + flat, minlength=n * size).view(n, *self.hist.shape).double()
        self.hist += per.sum(0)
        self.per_image[False].append(per.sum(1))
        self.per_image[True].append(torch.einsum("nqe,q->ne", per, self.image_weights))

    def curve(self, rebalanced: bool = False, prior: torch.Tensor | str | None = None) -> torch.Tensor:
        """Fraction of (weighted) pixels with error <= t for t = 0..max_threshold."""
        per_class = self.hist.sum(1)
        if per_class.sum() == 0:
            raise ValueError("AbAucMeter: no pixels accumulated")
        if rebalanced:
            if isinstance(prior, str):
                if prior != "data":
                    raise ValueError(f"prior must be a tensor, None or 'data', got {prior!r}")
                w = torch.where(per_class > 0, 1.0 / per_class.clamp_min(1.0), torch.zeros_like(per_class))
            else:
                w = rebalance_weights(reference_prior() if prior is None else prior, lam=0.0, sigma=5.0)
        else:
            w = torch.ones(Q, dtype=torch.float64)
        weighted = (self.hist * w[:, None]).sum(0)
        cum = weighted.cumsum(0)[: self.max_threshold + 1]
        return cum / weighted.sum()

    def auc(self, rebalanced: bool = False, prior: torch.Tensor | str | None = None) -> float:
        c = self.curve(rebalanced, prior)
        return float(torch.trapezoid(c, dx=1.0) / self.max_threshold)


    def interval(self, rebalanced: bool = False, config: BootstrapConfig = BootstrapConfig()) -> Interval:
        """The AuC (%) with its 95 % interval over the images (needs ``keep_images``). The rebalanced one uses the
        weights of the meter's ``prior``."""
        if not self.keep_images:
            raise ValueError("AbAucMeter.interval needs keep_images=True")
        rows = self.per_image[rebalanced]
        if not rows:
            raise ValueError("AbAucMeter: no pixels accumulated")
        return colorization_auc_interval(torch.cat(rows).numpy(), config)


def ab_auc(pred_ab: torch.Tensor, true_ab: torch.Tensor, rebalanced: bool = False,
           prior: torch.Tensor | str | None = None) -> float:
    """AuC in [0, 1] of the cumulative ab error over thresholds 0..150 (Table 1, "AuC non-rebal" / "rebal")."""
    meter = AbAucMeter()
    meter.update(pred_ab, true_ab)
    return meter.auc(rebalanced, prior)
