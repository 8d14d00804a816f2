"""The Fast R-CNN network on an encoder's trunk: conv1-conv5 with Caffe's rounded-up pools, RoI max pooling 6 x 6 at
1/16, the encoder's fc6/fc7, class scores and class-specific box deltas; optionally a region proposal network."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.data.voc import VOC_CLASSES
from xchannel.errors import UserError
from xchannel.pascal.detection.config import ProposalConfig
from xchannel.pascal.trunk import Trunk

#: conv5 stride of AlexNet and the RoI pooling grid (pool5 of a 227 px input is 6 x 6).
FEATURE_STRIDE = 16
POOL_SIZE = 6


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


def conv5_stages(trunk: Trunk) -> nn.Sequential:
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
    """Fast R-CNN on a :class:`~xchannel.pascal.Trunk`: conv1-conv5 -> RoI max pooling 6 x 6 at 1/16 ->
    fc6 -> fc7 (the trunk's, shared) -> class scores and class-specific box deltas; optionally a region proposal
    network on conv5 (``rpn``)."""

    def __init__(self, trunk: Trunk, num_classes: int = len(VOC_CLASSES), dropout: float = 0.5,
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


__all__ = ["FEATURE_STRIDE", "FastRCNN", "POOL_SIZE", "build_rpn", "conv5_stages"]
