"""PASCAL VOC2007 detection with Fast R-CNN on a pre-trained encoder (the "Detection" column of Table 2).

The paper "test[s] detection on PASCAL VOC 2007, using Fast R-CNN [41], following the procedure in [36]"
(Sec. 3.2; [41] Girshick, ICCV 2015; [36] Krähenbühl et al., ICLR 2016) after rescaling the layers "so they
'learn' at the same rate", and reports 46.9 % mAP with gray input and 47.9 % with color input (conv1's ab weights
initialised to zero), against 45.6 % for the k-means baseline and 56.8 % for ImageNet pre-training. This module
implements that protocol on torchvision ops.

Encoder
-------
:func:`xchannel.pascal.common.prepare_encoder` loads any encoder spec in the requested input mode, folds our
AlexNet's BatchNorm, initialises ``kmeans`` encoders and applies Krähenbühl et al.'s data-dependent rescaling
(``rescale.enabled``, on by default as for Table 2). Fast R-CNN reuses its conv1-conv5 and fc6/fc7; encoders
without fc6/fc7 (timm networks, the VGG colorizer) are refused.

Network (Fast R-CNN with a CaffeNet-style encoder)
--------------------------------------------------
* **Trunk**: conv1-conv5 of the encoder's AlexNet on the whole image, at any size. The max pools round up as
  Caffe's do (``ceil_mode``), so conv5 covers the whole image; conv5 has stride 16. Images smaller than the
  trunk's receptive field are padded (bottom/right, mid-gray) up to :data:`MIN_INPUT` pixels.
* **RoI pooling**: ``torchvision.ops.roi_pool`` to 6 x 6 at spatial scale 1/16 (Caffe's RoI max pooling: the
  box is rounded to conv5 cells with pixel-inclusive corners, so we pass ``x2 - 1, y2 - 1`` of our continuous
  boxes).
* **Head**: the encoder's own fc6 (a ``Linear`` over the flattened 6 x 6 x C RoI features, exactly as over pool5
  of a 227 px crop) and fc7, with their ReLUs and dropout 0.5 after each (CaffeNet's drop6 / drop7; torchvision's
  AlexNet keeps its own dropouts, before fc6 and fc7, and gets drop7 after fc7), then a (K + 1)-way classifier
  ``cls_score`` (initialised N(0, 0.01)) and class-specific box regression ``bbox_pred`` with 4 (K + 1) outputs
  (N(0, 0.001)), K = 20.

Box regression (:func:`encode_boxes`, :func:`decode_boxes`)
-----------------------------------------------------------
With a proposal of width w_p, height h_p, centre (x_p, y_p) and its ground-truth box (w_g, h_g, x_g, y_g)
(continuous corners, so w = x2 - x1, the same widths as Fast R-CNN's pixel-inclusive ``x2 - x1 + 1``):
t = ((x_g - x_p) / w_p, (y_g - y_p) / h_p, log(w_g / w_p), log(h_g / h_p)), normalised as (t - mean) / std with
means (0, 0, 0, 0) and stds (0.1, 0.1, 0.2, 0.2) (Fast R-CNN's ``BBOX_NORMALIZE_STDS``). Decoding inverts this,
clamping the log-scales at log(1000 / 16). The loss is smooth L1 (beta = 1) on the ground-truth class's four
outputs of the foreground RoIs, summed and divided by the number of RoIs in the batch, added with weight 1 to the
softmax cross-entropy over all RoIs.

Training (Fast R-CNN's protocol)
--------------------------------
Minibatches of 2 images and 128 RoIs (64 per image, :func:`sample_rois`): up to 25 % foreground, proposals with
IoU >= 0.5 to a ground-truth box (labelled with that box's class), the rest background, IoU in [0.1, 0.5); the
ground-truth boxes join the proposals. Difficult objects are excluded from training (neither foreground nor a
target), and images without a non-difficult object are left out. Multi-scale training: each image's shorter side
is drawn from ``train.scales`` (default 480, 576, 688; the longer side capped at ``train.max_size``), and the
image is mirrored with probability 1/2. SGD with momentum 0.9 and weight decay 5e-4 (none on biases, whose
learning rate is doubled, as in Fast R-CNN's Caffe solver); learning rate 1e-3, divided by 10 every 30k
iterations, 40k iterations (Fast R-CNN's CaffeNet VOC07 solver). All layers are fine-tuned (``train.frozen``
lists layer groups to keep fixed).

Testing: single scale (shorter side 600, longer at most 1000). Per class, the boxes decoded from that class's
regression outputs are clipped to the image and scored with the softmax probability; those above
``test.score_thresh`` go through non-maximum suppression at IoU 0.3; at most 100 detections per image remain
over all classes. They are written as the standard ``comp4_det_<split>_<class>.txt`` files (VOC 1-based pixel
coordinates), which are scored by reading them back with the code of ``xchannel evaluate voc-det``
(:func:`xchannel.metrics.voc.voc_det_eval`: VOC07 11-point AP, difficult objects ignored).

Proposals (:class:`ProposalConfig`): selective search "fast" mode computed once per image and cached
(:mod:`xchannel.pascal.proposals`), a user's proposal file, or ``rpn``: torchvision's
:class:`~torchvision.models.detection.rpn.RegionProposalNetwork` with an ``AnchorGenerator`` on conv5 (3 sizes
x 3 aspect ratios), trained jointly with the detector; its proposals are constants for the RoI head
("approximate joint training" in Faster R-CNN's terms) and its losses are added to the detector's.

Outputs: the result JSON (``out``, default ``results/pascal/detection_<encoder>_<mode>.json``; the record of
:func:`xchannel.pascal.common.result_record`) and, in the folder of the same name without ``.json``, the result
files (``results/``), the fine-tuned detector (``detector.pt``) and, during training, ``checkpoint.pt``
(``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from xchannel.data.images import Skipped, SkipCounter, collate_skip_lists
from xchannel.data.voc import VOC_CLASSES, VOCDetection, boxes_to_xyxy, resolve_root
from xchannel.errors import UserError
from xchannel.features.encoders import Encoder
from xchannel.pascal import common
from xchannel.pascal import proposals as props
from xchannel.utils.config import build_config, load_yaml, merge, parse_overrides, to_dict
from xchannel.utils.io import atomic_torch_save, atomic_write_text, safe_torch_load

NAME = "det"
HELP = "VOC2007 detection with Fast R-CNN (% mAP, VOC07 11-point)"
DESCRIPTION = """\
Fine-tune Fast R-CNN on an encoder (VOC2007 trainval -> test) as Table 2 of the paper, following Krähenbühl et
al.: conv1-conv5 of the encoder, RoI pooling 6x6, its fc6/fc7, (20+1)-way classification and class-specific box
regression; 2 images and 128 RoIs per minibatch, 25% foreground; multi-scale training (480/576/688), single-scale
testing (600), NMS 0.3; SGD lr 1e-3 (x0.1 after 30k), 40k iterations. Proposals: selective search (fast mode,
computed once per image and cached), a proposal file, or a jointly trained RPN. Writes the comp4_det_test_<class>
result files and scores them as `xchannel evaluate voc-det` does (VOC07 11-point mAP, difficult ignored).

  xchannel pascal det runs/alexnet/ckpt_00450000.pt --voc VOCdevkit --input-mode color
  xchannel pascal det kmeans --voc data/VOCdevkit --preset demo
  xchannel pascal det gaussian --voc VOCdevkit --proposal-file selective_search_voc_2007.mat"""

#: Fast R-CNN's normalisation of the regression targets (means, stds of dx, dy, dw, dh).
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
#: Largest log-scale of a decoded box (torchvision's and Detectron's ``bbox_xform_clip``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
#: conv5 stride of AlexNet and the RoI pooling grid (pool5 of a 227 px input is 6 x 6).
FEATURE_STRIDE = 16
POOL_SIZE = 6
#: Smallest input side for which AlexNet's conv5 has at least one cell (conv1 11/4, two 3/2 pools).
MIN_INPUT = 67
#: Gray (RGB 0.5) padding of images smaller than MIN_INPUT, before the encoder's input conversion.
PAD_VALUE = 0.5


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ProposalConfig:
    """Where the RoIs come from (see :mod:`xchannel.pascal.proposals`).

    ``method``: ``selective_search`` (computed once per image and cached in ``cache_dir``; "" =
    ``$XCHANNEL_CACHE_DIR/proposals`` or ``~/.cache/xchannel/proposals``), ``file`` (``train_file`` /
    ``test_file``, which may name the same file, read in ``box_format``; "" = the file type's default) or ``rpn``
    (a region proposal network trained jointly on conv5). ``min_size`` and ``max_proposals``: Fast R-CNN's
    clean-up of the boxes (sides >= 2 px, the first 2000).
    """

    method: Literal["selective_search", "file", "rpn"] = "selective_search"
    train_file: str = ""
    test_file: str = ""
    box_format: str = ""
    cache_dir: str = ""
    ss_mode: Literal["fast", "quality", "single"] = "fast"
    ss_base_k: int = 150
    ss_inc_k: int = 150
    ss_sigma: float = 0.8
    ss_max_side: int = 0
    workers: int = 1
    min_size: float = 2.0
    max_proposals: int = props.DEFAULT_MAX_PROPOSALS
    rpn_anchor_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])
    rpn_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 6000
    rpn_post_nms_test: int = 300
    rpn_nms: float = 0.7

    def ss_params(self) -> props.SelectiveSearchParams:
        return props.SelectiveSearchParams(mode=self.ss_mode, base_k=self.ss_base_k, inc_k=self.ss_inc_k,
                                           sigma=self.ss_sigma, max_side=self.ss_max_side)


@dataclass
class OptimConfig:
    """Fast R-CNN's CaffeNet VOC07 solver: SGD, ``lr`` times ``gamma`` every ``stepsize`` iterations (Caffe's
    ``step`` policy), biases at ``bias_lr_mult`` times the rate without weight decay. ``clip_grad`` > 0 clips the
    global gradient norm (Fast R-CNN does not)."""

    iterations: int = 40000
    lr: float = 0.001
    stepsize: int = 30000
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0005
    bias_lr_mult: float = 2.0
    clip_grad: float = 0.0


@dataclass
class TrainConfig:
    """Minibatches (Fast R-CNN's ``TRAIN`` settings), multi-scale training and fine-tuning scope."""

    images_per_batch: int = 2
    rois_per_batch: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    bg_iou_high: float = 0.5
    scales: list[int] = field(default_factory=lambda: [480, 576, 688])
    max_size: int = 1000
    mirror: bool = True
    dropout: float = 0.5
    frozen: list[str] = field(default_factory=list)
    checkpoint_every: int = 5000
    log_every: int = 20


@dataclass
class TestConfig:
    """Single-scale testing with per-class NMS (``score_thresh``, ``max_per_image``: py-faster-rcnn's test)."""

    scale: int = 600
    max_size: int = 1000
    nms: float = 0.3
    score_thresh: float = 0.05
    max_per_image: int = 100


@dataclass
class Config:
    """One detection run (saved in its result; see the module docstring). ``precision="bf16"`` runs conv1-conv5
    and the fc layers under bf16 autocast (faster on CPUs with AMX); RoI pooling, the RPN's box decoding, the
    losses and the test-time box decoding stay in float32. ``inclusive_iou``: a detection matches at IoU >= 0.5
    (the MATLAB devkit) rather than > 0.5; both mAPs are recorded."""

    encoder: str = ""
    voc: str = ""
    input_mode: Literal["gray", "color", "rgb"] | None = None
    year: str = "2007"
    train_split: str = "trainval"
    test_split: str = "test"
    out: str = ""
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    rescale: common.RescaleConfig = field(default_factory=common.RescaleConfig)
    bbox_stds: list[float] = field(default_factory=lambda: list(BBOX_STDS))
    inclusive_iou: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where native, else fp32 (xchannel.runtime)
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    resume: bool = False
    save_model: bool = True
    progress: bool = True

    def validate(self) -> None:
        o, t, s, p = self.optim, self.train, self.test, self.proposals
        problems = []
        if not self.encoder:
            problems.append("encoder is not set")
        if not self.voc:
            problems.append("voc is not set (the VOCdevkit folder or its parent)")
        if o.iterations < 0:
            problems.append(f"optim.iterations must be >= 0 (got {o.iterations})")
        if not o.lr > 0:
            problems.append(f"optim.lr must be > 0 (got {o.lr})")
        if t.images_per_batch < 1 or t.rois_per_batch < t.images_per_batch:
            problems.append(f"train.images_per_batch must be >= 1 and train.rois_per_batch >= it (got "
                            f"{t.images_per_batch}, {t.rois_per_batch})")
        if not 0.0 < t.fg_fraction <= 1.0:
            problems.append(f"train.fg_fraction must be in (0, 1] (got {t.fg_fraction})")
        if not 0.0 <= t.bg_iou_low < t.bg_iou_high <= t.fg_iou <= 1.0:
            problems.append(f"need 0 <= train.bg_iou_low < train.bg_iou_high <= train.fg_iou <= 1 (got "
                            f"{t.bg_iou_low}, {t.bg_iou_high}, {t.fg_iou})")
        if not t.scales or min(t.scales) < 16 or min(s.scale, s.max_size, t.max_size) < 16:
            problems.append("train.scales, train.max_size, test.scale and test.max_size must be >= 16 pixels")
        if not 0.0 <= t.dropout < 1.0:
            problems.append(f"train.dropout must be in [0, 1) (got {t.dropout})")
        if not 0.0 < s.nms <= 1.0:
            problems.append(f"test.nms must be in (0, 1] (got {s.nms})")
        if s.max_per_image < 1:
            problems.append(f"test.max_per_image must be >= 1 (got {s.max_per_image})")
        if len(self.bbox_stds) != 4 or min(self.bbox_stds) <= 0:
            problems.append(f"bbox_stds must be 4 positive numbers (got {self.bbox_stds})")
        if p.method == "file" and not (p.train_file and p.test_file):
            problems.append("proposals.method=file needs proposals.train_file and proposals.test_file "
                            "(they may name the same file)")
        if p.method == "rpn" and (not p.rpn_anchor_sizes or not p.rpn_aspect_ratios):
            problems.append("proposals.rpn_anchor_sizes and proposals.rpn_aspect_ratios must not be empty")
        if self.workers < 0 or p.workers < 1:
            problems.append(f"workers must be >= 0 and proposals.workers >= 1 (got {self.workers}, {p.workers})")
        if problems:
            raise UserError("detection config: " + "; ".join(problems))


#: Named configurations (``--preset``), as overrides of the defaults. ``paper``: the protocol as published.
#: ``demo``: end to end on the embedded data set (160 px images, objects of ~40 px) in well under a minute of one
#: CPU core: 300 iterations at lr 0.004 (x0.1 after 240); images at twice their size (shorter side 256-384 for
#: training, 320 for testing), so that an object covers a few conv5 cells, as VOC objects do at the paper's
#: scales (at 1x the demo encoder stays at chance, ~2% mAP, and 4x the iterations only reach ~3%); no score
#: threshold; small RPN anchors.
PRESETS: dict[str, list[str]] = {
    "paper": [],
    "demo": [
        "optim.iterations=300", "optim.lr=0.004", "optim.stepsize=240", "train.scales=[256,320,384]",
        "train.max_size=640", "train.checkpoint_every=0", "train.log_every=50", "test.scale=320",
        "test.max_size=640", "test.score_thresh=0.0", "proposals.rpn_anchor_sizes=[64,128,256]", "rescale.images=32",
        "workers=0",
    ],
}


def preset_config(name: str, overrides: Sequence[str] = (), **fields: Any) -> Config:
    """The configuration of preset ``name`` with ``key=value`` overrides and top-level fields set, e.g.
    ``preset_config("demo", voc=..., encoder="gaussian", input_mode="gray", out=...)``."""
    if name not in PRESETS:
        raise UserError(f"unknown detection preset {name!r}; known: {', '.join(PRESETS)}")
    cfg = build_config(Config, None, list(overrides), base=build_config(Config, None, PRESETS[name]))
    for key, value in fields.items():
        if not hasattr(cfg, key):
            raise UserError(f"detection config has no field {key!r}")
        setattr(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Boxes


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


# --------------------------------------------------------------------------------------------------------------
# The network


class _CeilMaxPool(nn.Module):
    """Max pooling that rounds the output size up, as Caffe's pooling layers do."""

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=True)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, ceil_mode=True"


def _first(v: int | tuple[int, ...]) -> int:
    return int(v[0]) if isinstance(v, tuple) else int(v)


def conv5_stages(trunk: common.Trunk) -> nn.Sequential:
    """The trunk's stages from the input to conv5 (pool5 and any adaptive pool dropped), the trunk's own modules
    (shared), except that every max pool becomes a Caffe-style (ceil) pool."""
    if trunk.kind == "alexnet":
        children = [(n, m) for n, m in trunk.conv.named_children() if n != "pool5"]
    elif trunk.kind == "torchvision_alexnet":
        features = list(trunk.conv.features)
        last_conv = max(i for i, m in enumerate(features) if isinstance(m, nn.Conv2d))
        children = [(f"features{i}", m) for i, m in enumerate(features[:last_conv + 2])]  # through relu5
    else:
        raise UserError(f"Fast R-CNN reuses conv1-conv5 and fc6/fc7 of an AlexNet; this encoder's trunk is "
                        f"{trunk.kind!r} (give an xchannel AlexNet checkpoint, gaussian, kmeans, state_dict or "
                        f"torchvision-alexnet:PATH)")
    out = OrderedDict()
    for name, m in children:
        if isinstance(m, nn.MaxPool2d):
            m = _CeilMaxPool(_first(m.kernel_size), _first(m.stride), _first(m.padding))
        out[name] = m
    return nn.Sequential(out)


class FastRCNN(nn.Module):
    """Fast R-CNN on a :class:`~xchannel.pascal.common.Trunk`: conv1-conv5 -> RoI max pooling 6 x 6 at 1/16 ->
    fc6 -> fc7 (the trunk's, shared) -> class scores and class-specific box deltas; optionally a region proposal
    network on conv5 (``rpn``)."""

    def __init__(self, trunk: common.Trunk, num_classes: int = len(VOC_CLASSES), dropout: float = 0.5,
                 rpn: nn.Module | None = None, seed: int = 0):
        super().__init__()
        if not trunk.has_fc or trunk.fc_dim is None or trunk.conv_dim is None:
            raise UserError(f"Fast R-CNN needs an encoder with fc6/fc7 (an AlexNet); this trunk "
                            f"({trunk.kind}) has none")
        fc6 = next(m for m in trunk.fc.modules() if isinstance(m, nn.Linear))
        if fc6.in_features != trunk.conv_dim * POOL_SIZE ** 2:
            raise UserError(f"fc6 takes {fc6.in_features} inputs but RoI pooling gives {trunk.conv_dim} x "
                            f"{POOL_SIZE} x {POOL_SIZE} = {trunk.conv_dim * POOL_SIZE ** 2}")
        self._normalize = trunk.normalize
        self.features = conv5_stages(trunk)
        self.fc = trunk.fc
        self.drop7 = nn.Dropout(dropout)
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(trunk.fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(trunk.fc_dim, 4 * (num_classes + 1))
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():  # Fast R-CNN's initialisation of the new layers
            self.cls_score.weight.copy_(torch.randn(self.cls_score.weight.shape, generator=gen) * 0.01)
            self.bbox_pred.weight.copy_(torch.randn(self.bbox_pred.weight.shape, generator=gen) * 0.001)
            self.cls_score.bias.zero_()
            self.bbox_pred.bias.zero_()
        self.rpn = rpn

    def conv5(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared input (1 x c x H x W, the encoder's convention) -> conv5 map (1 x C x ~H/16 x ~W/16)."""
        return self.features(self._normalize(x))

    def roi_features(self, feature: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoI max pooling of one image's conv5 map: R x C x 6 x 6. ``rois`` are continuous corners in input
        pixels; Caffe's RoI pooling, which torchvision's reproduces, takes pixel-inclusive corners."""
        from torchvision.ops import roi_pool

        if feature.dtype not in (torch.float32, torch.float64):
            feature = feature.float()  # bf16 conv5 (precision=bf16): torchvision's RoI pooling wants float
        boxes = rois.to(feature.dtype).clone()
        boxes[:, 2:] = torch.maximum(boxes[:, 2:] - 1, boxes[:, :2])
        idx = boxes.new_zeros((len(boxes), 1))
        return roi_pool(feature, torch.cat([idx, boxes], dim=1), (POOL_SIZE, POOL_SIZE), 1.0 / FEATURE_STRIDE)

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """R x C x 6 x 6 -> (class logits R x (K + 1), box deltas R x (K + 1) x 4)."""
        x = self.drop7(self.fc(pooled))
        return self.cls_score(x), self.bbox_pred(x).view(len(x), self.num_classes + 1, 4)

    def new_layers(self) -> list[nn.Module]:
        """The layers Fast R-CNN adds to the encoder (trained from scratch)."""
        return [m for m in (self.cls_score, self.bbox_pred, self.rpn) if m is not None]


def build_rpn(channels: int, cfg: ProposalConfig) -> nn.Module:
    """torchvision's region proposal network on conv5: one anchor set per cell (``rpn_anchor_sizes`` x
    ``rpn_aspect_ratios``), a 3x3 convolution with objectness and box branches (``RPNHead``), Faster R-CNN's
    training settings (IoU >= 0.7 positive, < 0.3 negative, 256 anchors per image, half positive)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    anchors = AnchorGenerator(sizes=(tuple(int(s) for s in cfg.rpn_anchor_sizes),),
                              aspect_ratios=(tuple(float(a) for a in cfg.rpn_aspect_ratios),))
    head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
        nms_thresh=cfg.rpn_nms)


def _rpn_proposals(model: FastRCNN, x: torch.Tensor, feature: torch.Tensor,
                   gt: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(x, [tuple(x.shape[-2:])])
    targets = None if gt is None else [{"boxes": gt.to(x.device, torch.float32)}]
    boxes, losses = model.rpn(images, {"0": feature}, targets)
    return boxes[0].detach(), losses


# --------------------------------------------------------------------------------------------------------------
# Data


def _resize(image: torch.Tensor, scale: float) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    h, w = image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    if size == [h, w]:
        return image
    return TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


class DetectionImages(Dataset):
    """VOC images with their (scaled, optionally mirrored) ground truth and proposals.

    Items are requested as ``(index, target_size, max_size, mirror)`` tuples (see :class:`TrainBatches`) or a
    plain index (the test scale). An item: ``{"image" (uint8 3 x h x w, resized), "boxes" (continuous corners in
    the resized image; non-difficult objects only when ``train``), "labels" (1-based), "proposals" (resized
    coordinates), "scale", "size" (original w, h), "id", "index"}`` or a :class:`Skipped` record.
    """

    def __init__(self, voc: VOCDetection, proposals: dict[str, np.ndarray] | None, *, train: bool,
                 scale: int, max_size: int, min_size: float, max_proposals: int):
        self.voc = voc
        self.proposals = proposals
        self.train = train
        self.scale, self.max_size = scale, max_size
        self.min_size, self.max_proposals = min_size, max_proposals

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, key: int | tuple[int, int, int, bool]) -> dict | Skipped:
        from torchvision.transforms.functional import pil_to_tensor

        from xchannel.data.images import BadImageError, load_rgb

        index, target, max_size, mirror = (key, self.scale, self.max_size, False) if isinstance(key, int) else key
        try:
            img = load_rgb(self.voc.images[index], self.voc.max_pixels)
        except BadImageError as err:
            return Skipped(index, err.path, err.reason)

        image = pil_to_tensor(img)
        h, w = image.shape[-2:]
        tgt = self.voc.target(index)
        boxes = boxes_to_xyxy(tgt["boxes"]).float()
        labels = tgt["labels"] + 1
        difficult = tgt["difficult"]
        if self.train:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], difficult[~difficult]
        image_id = self.voc.ids[index]
        if self.proposals is not None:
            raw = self.proposals.get(image_id, np.zeros((0, 4), np.float32))
            p = torch.from_numpy(props.filter_proposals(raw, w, h, self.min_size, self.max_proposals))
        else:
            p = torch.zeros((0, 4))
        s = scale_for(w, h, target, max_size)
        image = _resize(image, s)
        boxes, p = boxes * s, p * s
        if mirror:
            W = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], dim=1)
            p = torch.stack([W - p[:, 2], p[:, 1], W - p[:, 0], p[:, 3]], dim=1) if len(p) else p
        return {"image": image.contiguous(), "boxes": boxes.reshape(-1, 4), "labels": labels,
                "difficult": difficult, "proposals": p.reshape(-1, 4).float(), "scale": s, "size": (w, h),
                "id": image_id, "index": index}


class TrainBatches(Sampler):
    """Minibatches of ``images_per_batch`` item keys for iterations ``start .. iterations - 1``, reproducible
    from ``seed`` alone (so a resumed run sees the same images): the images are visited in a fresh random
    order each epoch; each gets a scale drawn from ``scales`` and, with ``mirror``, a flip with probability
    1/2."""

    def __init__(self, indices: Sequence[int], *, iterations: int, start: int, images_per_batch: int,
                 scales: Sequence[int], max_size: int, mirror: bool, seed: int):
        if not indices:
            raise UserError("no training image has a non-difficult object: nothing to train on")
        self.indices = list(indices)
        self.iterations, self.start, self.ipb = iterations, start, images_per_batch
        self.scales, self.max_size, self.mirror, self.seed = list(scales), max_size, mirror, seed
        self._perm: tuple[int, list[int]] | None = None

    def _position(self, p: int) -> tuple[int, int, int, bool]:
        n = len(self.indices)
        epoch, k = divmod(p, n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g).tolist())
        g = torch.Generator().manual_seed(self.seed * 7_919 + 104_729 * p + 1)
        scale = self.scales[int(torch.randint(len(self.scales), (), generator=g))]
        flip = bool(self.mirror and torch.rand((), generator=g) < 0.5)
        return self.indices[self._perm[1][k]], scale, self.max_size, flip

    def __iter__(self) -> Iterator[list[tuple[int, int, int, bool]]]:
        for it in range(self.start, self.iterations):
            yield [self._position(it * self.ipb + j) for j in range(self.ipb)]

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)


# --------------------------------------------------------------------------------------------------------------
# Proposals


def default_cache_dir() -> Path:
    """``$XCHANNEL_CACHE_DIR/proposals``, or ``~/.cache/xchannel/proposals``."""
    base = os.environ.get("XCHANNEL_CACHE_DIR") or str(Path.home() / ".cache" / "xchannel")
    return Path(base) / "proposals"


def proposals_for(cfg: Config, voc: VOCDetection, which: str) -> tuple[dict[str, np.ndarray] | None,
                                                                          dict[str, Any]]:
    """The proposals of ``voc``'s images (None for the RPN) and a record of where they came from."""
    p = cfg.proposals
    if p.method == "rpn":
        return None, {"method": "rpn"}
    if p.method == "file":
        file = p.train_file if which == "train" else p.test_file
        boxes = props.load_proposal_file(file, voc.ids, p.box_format or None)
        return boxes, {"method": "file", "file": str(file), "box_format": p.box_format or "default"}
    import hashlib

    cache_dir = Path(p.cache_dir) if p.cache_dir else default_cache_dir()
    where = hashlib.sha256(str(voc.voc_root.resolve()).encode()).hexdigest()[:8]  # one cache per data set
    tag = f"{voc.voc_root.name}_{voc.split}_{where}"
    boxes, stats = props.compute_selective_search(list(zip(voc.ids, map(str, voc.images))), cache_dir=cache_dir,
                                                  tag=tag, params=p.ss_params(), workers=p.workers,
                                                  progress=cfg.progress)
    return boxes, {"method": "selective_search", "params": to_dict(p.ss_params()), **stats.to_dict()}


def proposal_recall(voc: VOCDetection, proposals: dict[str, np.ndarray], min_size: float,
                    max_proposals: int, iou: float = 0.5) -> dict[str, float]:
    """Share of non-difficult ground-truth boxes that some proposal overlaps with IoU >= ``iou``, and the mean
    number of proposals per image (after :func:`~xchannel.pascal.proposals.filter_proposals`)."""
    from torchvision.ops import box_iou

    covered = total = n_props = 0
    for k, image_id in enumerate(voc.ids):
        w, h = voc.annotations[k]["size"][:2]
        p = torch.from_numpy(props.filter_proposals(proposals.get(image_id, np.zeros((0, 4))), w, h, min_size,
                                                    max_proposals))
        n_props += len(p)
        t = voc.target(k)
        gt = boxes_to_xyxy(t["boxes"][~t["difficult"]]).float()
        total += len(gt)
        if len(gt) and len(p):
            covered += int((box_iou(gt, p).max(dim=1).values >= iou).sum())
    return {"recall_at_iou_0.5": covered / total if total else float("nan"),
            "mean_proposals": n_props / max(len(voc), 1), "gt_boxes": total}


# --------------------------------------------------------------------------------------------------------------
# Training


def detection_loss(scores: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's multi-task loss: softmax cross-entropy over all RoIs, and smooth L1 (beta 1) on the
    foreground RoIs' ground-truth-class deltas, summed and divided by the number of RoIs."""
    loss_cls = F.cross_entropy(scores, labels)
    fg = labels > 0
    pred = deltas[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return loss_cls, loss_box


def _prepare(encoder: Encoder, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = image.to(device).float().div_(255.0)[None]
    h, w = x.shape[-2:]
    if h < MIN_INPUT or w < MIN_INPUT:
        x = F.pad(x, (0, max(0, MIN_INPUT - w), 0, max(0, MIN_INPUT - h)), value=PAD_VALUE)
    return encoder.prepare(x)


def _optimizer(model: FastRCNN, trunk: common.Trunk, cfg: Config) -> tuple[torch.optim.Optimizer, list[str]]:
    groups = trunk.groups()
    unknown = [n for n in cfg.train.frozen if n not in groups]
    if unknown:
        raise UserError(f"train.frozen: unknown layer group(s) {unknown}; this encoder's groups: "
                        f"{', '.join(groups)}")
    frozen = common.freeze_groups(trunk, [n for n in groups if n not in cfg.train.frozen])
    modules = [(trunk, 1.0), *((m, 1.0) for m in model.new_layers())]
    param_groups = common.caffe_param_groups(modules, cfg.optim.weight_decay, bias_lr_mult=cfg.optim.bias_lr_mult,
                                             bias_decay_mult=0.0)
    return torch.optim.SGD(param_groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum), frozen


def _train(cfg: Config, model: FastRCNN, trunk: common.Trunk, encoder: Encoder, data: "DetectionImages",
           device: torch.device, files: Path) -> dict[str, Any]:
    o, t = cfg.optim, cfg.train
    keep = [k for k in range(len(data.voc)) if any(not obj["difficult"] for obj in data.voc.annotations[k]["objects"])]
    optimizer, frozen = _optimizer(model, trunk, cfg)
    start, history = 0, []
    ckpt = files / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        state = safe_torch_load(ckpt)
        same = {"optim": to_dict(o), "train": to_dict(t), "encoder": cfg.encoder, "input_mode": cfg.input_mode}
        if state.get("settings") != same:
            raise UserError(f"{ckpt}: was written by a run with other settings (encoder, input mode, optim or "
                            f"train); remove it or resume with the same settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["iteration"]), list(state.get("history", []))
    sampler = TrainBatches(keep, iterations=o.iterations, start=start, images_per_batch=t.images_per_batch,
                           scales=t.scales, max_size=t.max_size, mirror=t.mirror, seed=cfg.seed)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_skip_lists)
    counter = SkipCounter()
    gen = torch.Generator().manual_seed(cfg.seed * 31 + start)
    rois_per_image = t.rois_per_batch // t.images_per_batch
    common.set_train_mode(model)
    params = common.trainable_parameters(model)
    from tqdm import tqdm

    bar = tqdm(total=o.iterations, initial=start, desc="fast r-cnn", unit="it", disable=not cfg.progress or None,
               file=sys.stderr)
    window: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    try:
        for it, batch in enumerate(loader, start):
            lr = common.step_lr(o.lr, it, o.stepsize, o.gamma)
            common.set_lr(optimizer, lr)
            bar.update(1)
            if counter.update(batch) == 0:
                continue
            pooled, labels, targets, rpn_losses = [], [], [], {}
            n_images = len(batch["image"])
            for image, boxes, cls, p in zip(batch["image"], batch["boxes"], batch["labels"], batch["proposals"]):
                x = _prepare(encoder, image, device)
                with common.autocast(device, cfg.precision):
                    feature = model.conv5(x)
                if model.rpn is not None:  # box decoding stays in float32
                    p, losses = _rpn_proposals(model, x, feature.float(), boxes)
                    for k, v in losses.items():
                        rpn_losses[k] = rpn_losses.get(k, 0.0) + v / n_images
                s = sample_rois(p.cpu(), boxes, cls, rois=rois_per_image, fg_fraction=t.fg_fraction,
                                fg_iou=t.fg_iou, bg_iou=(t.bg_iou_low, t.bg_iou_high), stds=cfg.bbox_stds,
                                generator=gen)
                if len(s.rois):
                    pooled.append(model.roi_features(feature, s.rois.to(device)))
                    labels.append(s.labels)
                    targets.append(s.targets)
            if not pooled:
                continue
            with common.autocast(device, cfg.precision):
                scores, deltas = model.head(torch.cat(pooled))
            all_labels = torch.cat(labels).to(device)
            loss_cls, loss_box = detection_loss(scores.float(), deltas.float(), all_labels,
                                                torch.cat(targets).to(device))
            loss = loss_cls + loss_box + sum(rpn_losses.values())
            common.check_finite(loss, it, "detection")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = common.clip_gradients(params, o.clip_grad)
            optimizer.step()
            parts = {"loss": loss.item(), "loss_cls": loss_cls.item(), "loss_box": loss_box.item(),
                     **{k: float(v.item()) for k, v in rpn_losses.items()}, "grad_norm": grad_norm,
                     "rois": float(len(all_labels)), "fg_fraction": float((all_labels > 0).float().mean())}
            for k, v in parts.items():
                window.setdefault(k, []).append(v)
            if (it + 1) % max(t.log_every, 1) == 0 or it + 1 == o.iterations:
                record = {"iteration": it + 1, "lr": lr, **{k: float(np.mean(v)) for k, v in window.items()}}
                history.append(record)
                window = {}
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if t.checkpoint_every and (it + 1) % t.checkpoint_every == 0 and it + 1 < o.iterations:
                atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "iteration": it + 1, "history": history,
                                   "settings": {"optim": to_dict(o), "train": to_dict(t), "encoder": cfg.encoder,
                                                "input_mode": cfg.input_mode}}, ckpt)
    finally:
        bar.close()
    return {"iterations": o.iterations, "resumed_from": start, "images": len(keep),
            "images_without_objects": len(data.voc) - len(keep), "frozen": frozen, "history": history,
            "seconds": time.perf_counter() - t0, "skipped": counter.summary()}


# --------------------------------------------------------------------------------------------------------------
# Testing


def postprocess(boxes: torch.Tensor, prob: torch.Tensor, *, score_thresh: float, nms: float,
                max_per_image: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fast R-CNN's test-time selection for one image. ``boxes``: R x (K + 1) x 4 class-specific boxes (continuous
    corners), ``prob``: R x (K + 1) softmax scores (column 0 = background). Per class k = 1 ... K: keep scores
    above ``score_thresh`` and boxes at least 1 px wide and high, then greedy non-maximum suppression (a box is
    dropped when its IoU with a higher-scored kept box exceeds ``nms``); finally keep only the
    ``max_per_image`` highest scores over all classes. Returns K (boxes, scores) pairs, highest score first."""
    from torchvision.ops import nms as nms_op, remove_small_boxes

    per_class: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in range(1, prob.shape[1]):
        keep = torch.nonzero(prob[:, c] > score_thresh).flatten()
        b, s = boxes[keep, c], prob[keep, c]
        ok = remove_small_boxes(b, 1.0)
        b, s = b[ok], s[ok]
        ok = nms_op(b, s, nms)
        per_class.append((b[ok], s[ok]))
    all_scores = torch.cat([s for _, s in per_class])
    if len(all_scores) > max_per_image:
        thresh = torch.topk(all_scores, max_per_image).values[-1]
        per_class = [(b[s >= thresh], s[s >= thresh]) for b, s in per_class]
    return per_class


@torch.no_grad()
def detect_image(model: FastRCNN, encoder: Encoder, item: dict, cfg: Config,
                 device: torch.device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Detections of one test item, per VOC class: (boxes K x 4 continuous corners in the original image,
    scores K), selected by :func:`postprocess`."""
    x = _prepare(encoder, item["image"], device)
    with common.autocast(device, cfg.precision):
        feature = model.conv5(x)
    p = item["proposals"].to(device)
    if model.rpn is not None:
        p, _ = _rpn_proposals(model, x, feature.float(), None)
    if len(p) == 0:
        return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(model.num_classes)]
    pooled = model.roi_features(feature, p)
    with common.autocast(device, cfg.precision):
        scores, deltas = model.head(pooled)
    prob = F.softmax(scores.float(), dim=1)
    w, h = item["size"]
    boxes = clip_boxes(decode_boxes(p.float(), deltas.float(), cfg.bbox_stds) / item["scale"], w, h)
    per_class = postprocess(boxes, prob, score_thresh=cfg.test.score_thresh, nms=cfg.test.nms,
                            max_per_image=cfg.test.max_per_image)
    return [(b.cpu().numpy(), s.cpu().numpy()) for b, s in per_class]


def write_results(folder: Path, split: str, detections: dict[str, list[tuple[str, float, np.ndarray]]],
                  comp: str = "comp4") -> list[Path]:
    """The devkit's result files, one per class (every class gets one, possibly empty):
    ``<comp>_det_<split>_<class>.txt`` with lines ``image_id score xmin ymin xmax ymax``; continuous corners
    become the devkit's 1-based pixel-inclusive coordinates ``(x1 + 1, y1 + 1, x2, y2)``."""
    paths = []
    for cls in VOC_CLASSES:
        lines = []
        for image_id, score, box in detections.get(cls, []):
            x1, y1, x2, y2 = (float(v) for v in box)
            lines.append(f"{image_id} {score:.6f} {x1 + 1:.1f} {y1 + 1:.1f} {max(x2, x1 + 1):.1f} "
                         f"{max(y2, y1 + 1):.1f}\n")
        path = folder / f"{comp}_det_{split}_{cls}.txt"
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def evaluate_results(voc: str | os.PathLike, year: str, split: str, folder: Path, *, inclusive: bool = True,
                     comp: str = "comp4") -> dict[str, Any]:
    """Score result files as ``xchannel evaluate voc-det`` does (its file reader and annotation loader, then
    :func:`~xchannel.metrics.voc.voc_det_eval`): per-class AP and mAP in %, VOC07 11-point AP, difficult
    objects ignored. ``inclusive``: a detection matches at IoU >= 0.5 (the MATLAB devkit) rather than > 0.5
    (py-faster-rcnn's port); both mAPs are recorded (they differ only for overlaps of exactly 0.5)."""
    from xchannel.data.voc import read_image_set
    from xchannel.metrics.voc import voc_det_eval
    from xchannel.metrics.voc_det_cli import load_annotations, read_results_file

    root = resolve_root(voc, year)
    image_ids = list(dict.fromkeys(read_image_set(voc, year, split)))
    ids = set(image_ids)
    dets = {c: read_results_file(folder / f"{comp}_det_{split}_{c}.txt", ids) for c in VOC_CLASSES
            if (folder / f"{comp}_det_{split}_{c}.txt").is_file()}
    annotations = load_annotations(root / "Annotations", image_ids)
    scored = {}
    for rule, incl in (("devkit", True), ("strict", False)):
        res = voc_det_eval(annotations, dets, VOC_CLASSES, metric="voc07", inclusive=incl)
        scored[rule] = res
    main = scored["devkit" if inclusive else "strict"]
    return {"map": 100.0 * main.map, "ap": {c: 100.0 * a for c, a in main.ap.items()}, "npos": main.npos,
            "match": "IoU >= 0.5" if inclusive else "IoU > 0.5",
            "map_iou_ge": 100.0 * scored["devkit"].map, "map_iou_gt": 100.0 * scored["strict"].map,
            "metric": "VOC07 11-point AP (%), difficult objects ignored",
            "detections": {c: len(d.scores) for c, d in dets.items()}, "images": len(image_ids)}


def _test(cfg: Config, model: FastRCNN, encoder: Encoder, data: "DetectionImages", device: torch.device,
          files: Path) -> dict[str, Any]:
    from tqdm import tqdm

    model.eval()
    loader = DataLoader(data, batch_size=1, num_workers=cfg.workers, collate_fn=collate_skip_lists)
    counter = SkipCounter()
    detections: dict[str, list[tuple[str, float, np.ndarray]]] = {c: [] for c in VOC_CLASSES}
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="testing", unit="img", disable=not cfg.progress or None, file=sys.stderr):
        if counter.update(batch) == 0:
            continue
        item = {k: v[0] for k, v in batch.items() if k != "skipped"}
        for c, (boxes, scores) in zip(VOC_CLASSES, detect_image(model, encoder, item, cfg, device)):
            detections[c].extend((item["id"], float(s), b) for b, s in zip(boxes, scores))
    seconds = time.perf_counter() - t0
    folder = files / "results"
    write_results(folder, cfg.test_split, detections)
    metrics = evaluate_results(cfg.voc, cfg.year, cfg.test_split, folder, inclusive=cfg.inclusive_iou)
    return {"metrics": metrics, "results_dir": str(folder), "seconds": seconds, "skipped": counter.summary()}


# --------------------------------------------------------------------------------------------------------------
# The task


def protocol(cfg: Config) -> dict[str, Any]:
    """The protocol facts recorded in the result (what the number means)."""
    o, t, s = cfg.optim, cfg.train, cfg.test
    return {
        "name": "Fast R-CNN (Girshick 2015) fine-tuning, following Krähenbühl et al. 2016 (the paper's Table 2)",
        "train": f"VOC{cfg.year} {cfg.train_split}", "test": f"VOC{cfg.year} {cfg.test_split}",
        "roi_pool": f"{POOL_SIZE}x{POOL_SIZE} max at 1/{FEATURE_STRIDE} (conv5)",
        "minibatch": f"{t.images_per_batch} images, {t.rois_per_batch} RoIs, {100 * t.fg_fraction:g}% foreground "
                     f"(IoU >= {t.fg_iou}), background IoU in [{t.bg_iou_low}, {t.bg_iou_high}), ground truth "
                     f"added, difficult objects excluded",
        "scales": {"train": list(t.scales), "train_max_size": t.max_size, "test": s.scale,
                   "test_max_size": s.max_size, "mirror": t.mirror},
        "solver": f"SGD momentum {o.momentum}, lr {o.lr} x {o.gamma} every {o.stepsize} iterations, "
                  f"{o.iterations} iterations, weight decay {o.weight_decay} (biases: lr x {o.bias_lr_mult}, "
                  f"no decay)",
        "bbox_regression": {"means": list(BBOX_MEANS), "stds": list(cfg.bbox_stds), "loss": "smooth L1, beta 1"},
        "test": {"nms": s.nms, "score_thresh": s.score_thresh, "max_per_image": s.max_per_image},
        "proposals": cfg.proposals.method, "precision": cfg.precision,
        "metric": "VOC07 11-point mAP (%), difficult objects ignored",
    }


def output_paths(cfg: Config, encoder_name: str, input_mode: str) -> tuple[Path, Path]:
    """(result JSON, folder of the run's files: ``results/``, ``detector.pt``, ``checkpoint.pt``)."""
    out = Path(cfg.out) if cfg.out else common.default_output("detection", encoder_name, input_mode)
    return out, out.with_suffix("") if out.suffix == ".json" else out.with_name(out.name + "_files")


def run_task(cfg: Config, prepared: common.PreparedEncoder | None = None) -> dict[str, Any]:
    """Fine-tune Fast R-CNN on ``train_split`` and test on ``test_split`` (see the module docstring); writes the
    result JSON (returned) and the run's files. ``prepared``: an encoder already prepared with
    :func:`~xchannel.pascal.common.prepare_encoder` (``cfg.encoder`` is then only recorded); it is fine-tuned in
    place."""
    cfg.validate()
    t_start = time.perf_counter()
    device = common.resolve_device(cfg.device)
    cfg, precision = common.resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    train_voc = VOCDetection(cfg.voc, cfg.year, cfg.train_split)
    test_voc = VOCDetection(cfg.voc, cfg.year, cfg.test_split)
    for voc in (train_voc, test_voc):
        if len(voc) == 0:
            raise UserError(f"{voc.voc_root / 'ImageSets' / 'Main' / f'{voc.split}.txt'}: the image set is empty")
    if prepared is None:
        prepared = common.prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=cfg.year,
                                          split=cfg.train_split, rescale=cfg.rescale, seed=cfg.seed,
                                          dropout=cfg.train.dropout, device=device)
    encoder, trunk = prepared.encoder, prepared.trunk
    rpn = build_rpn(trunk.conv_dim or 0, cfg.proposals) if cfg.proposals.method == "rpn" else None
    model = FastRCNN(trunk, len(VOC_CLASSES), cfg.train.dropout, rpn, seed=cfg.seed).to(device)
    out, files = output_paths(cfg, prepared.record.get("name", "encoder"), encoder.input_mode)

    p = cfg.proposals
    train_props, train_info = proposals_for(cfg, train_voc, "train")
    test_props, test_info = proposals_for(cfg, test_voc, "test")
    if test_props is not None:
        test_info["quality"] = proposal_recall(test_voc, test_props, p.min_size, p.max_proposals)
    train_data = DetectionImages(train_voc, train_props, train=True, scale=cfg.train.scales[0],
                                 max_size=cfg.train.max_size, min_size=p.min_size, max_proposals=p.max_proposals)
    test_data = DetectionImages(test_voc, test_props, train=False, scale=cfg.test.scale,
                                max_size=cfg.test.max_size, min_size=p.min_size, max_proposals=p.max_proposals)
    files.mkdir(parents=True, exist_ok=True)
    training = _train(cfg, model, trunk, encoder, train_data, device, files)
    if cfg.save_model:
        atomic_torch_save({"model": model.state_dict(), "config": to_dict(cfg), "classes": list(VOC_CLASSES),
                           "encoder": prepared.record}, files / "detector.pt")
    (files / "checkpoint.pt").unlink(missing_ok=True)
    testing = _test(cfg, model, encoder, test_data, device, files)
    metrics = testing.pop("metrics")
    history = training.pop("history")
    record = common.result_record(
        task="detection", column="det", cfg=cfg, prepared=prepared,
        protocol={**protocol(cfg), "precision": precision}, metrics=metrics,
        headline={"metric": "mAP", "value": metrics["map"],
                  "label": f"VOC07 11-point mAP {metrics['map']:.1f}% ({metrics['match']})"},
        data={"name": common.dataset_name(cfg.voc), "voc": str(cfg.voc), "year": cfg.year,
              "train": {"split": cfg.train_split, "images": len(train_voc)},
              "test": {"split": cfg.test_split, "images": len(test_voc)}},
        history=history,
        timing={"seconds": time.perf_counter() - t_start, "train_seconds": training["seconds"],
                "test_seconds": testing["seconds"]},
        training=training, testing=testing, proposals={"train": train_info, "test": test_info},
        files={"results": str(files / "results"), "detector": str(files / "detector.pt") if cfg.save_model else None},
    )
    if p.method != "selective_search":  # Table 2's detection protocol uses selective search: another row
        record["row"]["variant"] = "RPN proposals" if p.method == "rpn" else "proposals from a file"
    common.write_result(out, record)
    return record


# --------------------------------------------------------------------------------------------------------------
# Command line (``xchannel pascal det``)

#: Detection's own flags: argparse attribute -> config key.
_FLAGS = {"proposals": "proposals.method"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                        help="paper (default): the published protocol; demo: small scales and few iterations, for "
                             "the embedded data set (applied under --config, the flags and --set)")
    parser.add_argument("--proposals", choices=("selective_search", "file", "rpn"),
                        help="proposal method (default: selective_search)")
    parser.add_argument("--proposal-file", metavar="FILE",
                        help="proposals of the training and test images (.npz, .pt or R-CNN .mat; see "
                             "xchannel.pascal.proposals); implies --proposals file")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted training from the run's checkpoint.pt")


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults <- ``--preset`` <- ``--config`` YAML <- flags <- ``--set``: the precedence of
    :func:`xchannel.pascal.common.config_from_args`, with the preset's values under the YAML file's."""
    preset = getattr(args, "preset", None) or "paper"
    if preset not in PRESETS:
        raise UserError(f"unknown detection preset {preset!r}; known: {', '.join(PRESETS)}")
    if PRESETS[preset]:
        import tempfile

        import yaml

        layered = parse_overrides(PRESETS[preset])
        if getattr(args, "config", None):
            build_config(Config, args.config)  # validates the user's file, errors name it
            layered = merge(layered, load_yaml(args.config) or {})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"preset-{preset}.yaml"
            path.write_text(yaml.safe_dump(layered, sort_keys=False))
            cfg = common.config_from_args(Config, argparse.Namespace(**{**vars(args), "config": str(path)}),
                                          _FLAGS)
    else:
        cfg = common.config_from_args(Config, args, _FLAGS)
    if getattr(args, "proposal_file", None):
        cfg.proposals.method = "file"
        cfg.proposals.train_file = cfg.proposals.test_file = str(args.proposal_file)
    if getattr(args, "resume", False):
        cfg.resume = True
    return cfg


def run(args: argparse.Namespace) -> int:
    result = run_task(config_from_args(args))
    m = result["metrics"]
    print(f"VOC{result['config']['year']} {result['config']['test_split']} detection on {result['data']['name']} "
          f"data, encoder {result['row']['encoder']}, input {result['row']['input_mode']}: mAP {m['map']:.1f}% "
          f"({m['match']})")
    width = max(len(c) for c in VOC_CLASSES) + 2
    for c in VOC_CLASSES:
        print(f"  {c:<{width}}{m['ap'][c]:6.1f}")
    print(f"result: {result['output']}")
    return 0


__all__ = ["BBOX_MEANS", "BBOX_STDS", "Config", "DetectionImages", "FastRCNN", "OptimConfig", "PRESETS",
           "ProposalConfig", "RoiSample", "TestConfig", "TrainBatches", "TrainConfig", "add_arguments",
           "build_rpn", "clip_boxes", "config_from_args", "conv5_stages", "decode_boxes", "detect_image",
           "detection_loss", "encode_boxes", "evaluate_results", "output_paths", "postprocess", "preset_config",
           "proposal_recall", "proposals_for", "protocol", "run", "run_task", "sample_rois", "scale_for",
           "write_results"]
