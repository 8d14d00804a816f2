"""The colorization objectives of Table 1.

* ``classification`` (Eq. 2-4): multinomial cross-entropy against soft-encoded targets, each pixel weighted by the
  rebalancing weight of its nearest bin; lambda = 1/2 is "Ours (full)", lambda = 1 gives uniform weights, i.e.
  "Ours (class)" (no rebalancing).
* ``l2`` (Eq. 1): Euclidean regression of ab, "Ours (L2)"; from a classification checkpoint it is "Ours (L2, ft)".

Targets are in the sparse form of :func:`xchannel.color.soft_encode_sparse` (k indices and weights per pixel), so
the cross-entropy gathers k log-probabilities per pixel instead of forming N x 313 x H x W targets.
Losses are averaged over the pixels that count (those of images with colour); with Adam the scale of the loss
does not change the updates, so this normalisation only makes logged values comparable across batch sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rebalanced_cross_entropy(logits: torch.Tensor, idx: torch.Tensor, wts: torch.Tensor,
                             pixel_weight: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: - sum_{h,w} v(Z_hw) sum_q Z_hwq log softmax(logits)_hwq, averaged over counted pixels.

    logits N x Q x H x W; idx, wts N x k x H x W (the soft target); pixel_weight N x 1 x H x W (Eq. 3);
    image_mask (N,) bool, False for images that carry no colour (they contribute nothing).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    ce = -(logp.gather(1, idx) * wts).sum(1, keepdim=True)  # N x 1 x H x W
    per_pixel = ce * pixel_weight * image_mask.view(-1, 1, 1, 1).to(ce.dtype)
    count = image_mask.sum().clamp_min(1) * ce.shape[2] * ce.shape[3]
    return per_pixel.sum() / count


def l2_regression(pred_ab: torch.Tensor, true_ab: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1: 1/2 sum_{h,w} ||Y_hw - Yhat_hw||^2 (ab units), averaged over counted pixels."""
    se = 0.5 * (pred_ab.float() - true_ab.float()).pow(2).sum(1, keepdim=True)
    se = se * image_mask.view(-1, 1, 1, 1).to(se.dtype)
    count = image_mask.sum().clamp_min(1) * se.shape[2] * se.shape[3]
    return se.sum() / count
