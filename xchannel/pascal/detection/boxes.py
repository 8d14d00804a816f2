"""Fast R-CNN's box arithmetic: regression targets and their inverse, clipping, RoI sampling, the image scale.

With a proposal of width w_p, height h_p, centre (x_p, y_p) and its ground-truth box (w_g, h_g, x_g, y_g)
(continuous corners, so w = x2 - x1, the same widths as Fast R-CNN's pixel-inclusive ``x2 - x1 + 1``):
t = ((x_g - x_p) / w_p, (y_g - y_p) / h_p, log(w_g / w_p), log(h_g / h_p)), normalised as (t - mean) / std with
means (0, 0, 0, 0) and stds (0.1, 0.1, 0.2, 0.2) (Fast R-CNN's ``BBOX_NORMALIZE_STDS``). Decoding inverts this,
clamping the log-scales at log(1000 / 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

#: Fast R-CNN's normalisation of the regression targets (means, stds of dx, dy, dw, dh).
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
#: Largest log-scale of a decoded box (torchvision's and Detectron's ``bbox_xform_clip``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def encode_boxes(proposals: torch.Tensor, gt: torch.Tensor, stds: Sequence[float] = BBOX_STDS,
                 means: Sequence[float] = BBOX_MEANS) -> torch.Tensor:
    """Regression targets of ``gt`` boxes relative to ``proposals`` (both N x 4 continuous corners), normalised
    as ``(t - means) / stds`` (see the module docstring)."""
    pw = proposals[:, 2] - proposals[:, 0]
    ph = proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    t = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
    return (t - t.new_tensor(means)) / t.new_tensor(stds)


def decode_boxes(proposals: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float] = BBOX_STDS,
                 means: Sequence[float] = BBOX_MEANS) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: ``deltas`` (N x 4, or N x K x 4 for K classes) applied to ``proposals``
    (N x 4) -> boxes of the same shape as ``deltas``. Log-scales are clamped at :data:`BBOX_XFORM_CLIP`."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    p = proposals.to(d.dtype)
    if d.ndim == 3:
        p = p[:, None, :]
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    px, py = p[..., 0] + 0.5 * pw, p[..., 1] + 0.5 * ph
    cx, cy = px + d[..., 0] * pw, py + d[..., 1] * ph
    w = pw * torch.exp(d[..., 2].clamp(max=BBOX_XFORM_CLIP))
    h = ph * torch.exp(d[..., 3].clamp(max=BBOX_XFORM_CLIP))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip continuous corners to the image ``[0, width] x [0, height]``."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


@dataclass
class RoiSample:
    """RoIs of one image for one minibatch: ``rois`` R x 4, ``labels`` R (0 = background, k + 1 = VOC class k),
    ``targets`` R x 4 normalised regression targets (zero for background), ``iou`` R (max IoU with the ground
    truth)."""

    rois: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    iou: torch.Tensor


def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *, rois: int = 64,
                fg_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou: tuple[float, float] = (0.1, 0.5),
                add_gt: bool = True, stds: Sequence[float] = BBOX_STDS,
                generator: torch.Generator | None = None) -> RoiSample:
    """Fast R-CNN's RoI sampling for one image (``_sample_rois`` of its minibatch layer).

    Candidates are ``proposals`` plus (``add_gt``) the ground-truth boxes. Each takes the class of the
    ground-truth box it overlaps most. Foreground: IoU >= ``fg_iou``; at most ``round(fg_fraction * rois)`` of
    them, drawn without replacement. Background: IoU in ``[bg_iou[0], bg_iou[1])``, label 0; enough to fill
    ``rois``, if there are that many (fewer RoIs are returned otherwise). Candidates in neither range are never
    used. ``gt_labels`` are 1-based (0 is background).
    """
    boxes = proposals.float().reshape(-1, 4)
    gt = gt_boxes.float().reshape(-1, 4)
    if add_gt and len(gt):
        boxes = torch.cat([boxes, gt])
    if len(gt) == 0 or len(boxes) == 0:
        empty = boxes.new_zeros((0, 4))
        return RoiSample(empty, torch.zeros(0, dtype=torch.int64), empty.clone(), boxes.new_zeros(0))
    from torchvision.ops import box_iou

    iou = box_iou(boxes, gt)
    max_iou, assigned = iou.max(dim=1)
    fg = torch.nonzero(max_iou >= fg_iou).flatten()
    bg = torch.nonzero((max_iou >= bg_iou[0]) & (max_iou < bg_iou[1])).flatten()
    n_fg = min(int(round(fg_fraction * rois)), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    n_bg = min(rois - n_fg, len(bg))
    bg = bg[torch.randperm(len(bg), generator=generator)[:n_bg]]
    keep = torch.cat([fg, bg])
    labels = gt_labels.to(torch.int64)[assigned[keep]].clone()
    labels[n_fg:] = 0
    targets = torch.zeros((len(keep), 4), dtype=boxes.dtype)
    if n_fg:
        targets[:n_fg] = encode_boxes(boxes[fg], gt[assigned[fg]], stds)
    return RoiSample(boxes[keep], labels, targets, max_iou[keep])


def scale_for(width: int, height: int, target: int, max_size: int) -> float:
    """Fast R-CNN's image scale: shorter side to ``target`` unless the longer side would exceed ``max_size``."""
    s = target / min(width, height)
    if round(s * max(width, height)) > max_size:
        s = max_size / max(width, height)
    return s


__all__ = ["BBOX_MEANS", "BBOX_STDS", "BBOX_XFORM_CLIP", "RoiSample", "clip_boxes", "decode_boxes", "encode_boxes",
           "sample_rois", "scale_for"]
