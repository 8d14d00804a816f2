"""The cut of an encoder into a :class:`~xchannel.pascal.trunk.Trunk` for fine-tuning (:func:`build_trunk`): the one
place of the PASCAL tasks that knows which encoder families exist (our AlexNet, torchvision's AlexNet, anything
else through its deepest tap). One function, no other logic, so that it can move to :mod:`xchannel.features`."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from xchannel.errors import UserError
from xchannel.features.encoders import Encoder
from xchannel.pascal.trunk import Trunk, _TapStage


def build_trunk(encoder: Encoder, dropout: float = 0.5) -> Trunk:
    """Cut ``encoder`` into a :class:`Trunk` (see the module docstring).

    * our AlexNet (checkpoints, ``gaussian``, ``kmeans``, ``state_dict``): must be in the transfer geometry;
      BatchNorm is folded (``encoder.backbone`` is replaced by the folded network); the dropout before fc7
      (CaffeNet's drop6) gets probability ``dropout``. Groups conv1 ... conv5, fc6, fc7.
    * torchvision's AlexNet: ``features`` (+ its adaptive 6x6 pool) as one ``conv`` group, ``classifier[0:3]``
      as fc6 and ``classifier[3:6]`` as fc7 (its own dropouts, p = 0.5).
    * anything else (timm networks, the VGG colorizer): the encoder's deepest tap as one ``trunk`` stage, no fc
      stages (classification puts its classifier on the globally averaged map).
    """
    from xchannel.features.encoders import TorchvisionAlexNetEncoder
    from xchannel.models import AlexNet

    if isinstance(encoder.backbone, AlexNet):
        from xchannel.convert import fold_batchnorm
        from xchannel.models.alexnet import TRANSFER_INPUT

        net = encoder.backbone
        if net.geometry != "transfer":
            raise UserError(f"encoder {encoder.spec!r}: the PASCAL tasks need the transfer geometry (227 px "
                            f"CaffeNet); load it with geometry='transfer'")
        if net.batchnorm:
            net = fold_batchnorm(net)
            encoder.backbone = net
        net.fc7.drop.p = float(dropout)
        names = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
        trunk = Trunk("alexnet", OrderedDict((n, getattr(net, n)) for n in names),
                      OrderedDict(fc6=net.fc6, fc7=net.fc7), net.normalize_input, TRANSFER_INPUT)
        trunk.conv_dim = net.conv5.conv.out_channels
        trunk.fc_dim = net.fc7.fc.out_features
        return trunk
    if isinstance(encoder, TorchvisionAlexNetEncoder):
        net = encoder.backbone
        cls = net.classifier
        trunk = Trunk("torchvision_alexnet", OrderedDict(features=net.features, avgpool=net.avgpool),
                      OrderedDict(fc6=nn.Sequential(OrderedDict(flatten=nn.Flatten(), drop=cls[0], fc=cls[1],
                                                                relu=cls[2])),
                                  fc7=nn.Sequential(OrderedDict(drop=cls[3], fc=cls[4], relu=cls[5]))),
                      None, encoder.default_crop)
        trunk.conv_dim = next(m for m in reversed(net.features) if isinstance(m, nn.Conv2d)).out_channels
        trunk.fc_dim = cls[4].out_features
        return trunk
    layer = encoder.layer_names[-1]
    trunk = Trunk("generic", OrderedDict(trunk=_TapStage(encoder, layer)), OrderedDict(), None,
                  encoder.default_crop)
    side = 256  # a multiple of the usual strides (8 ... 64)
    with torch.no_grad():
        probe = trunk(encoder.prepare(torch.full((1, 3, side, side), 0.5)))
    trunk.conv_dim = int(probe.shape[1])
    info = encoder.info.get("feature_info") or []
    if info and info[-1].get("reduction"):
        trunk.stride = int(info[-1]["reduction"])
    elif probe.ndim == 4 and side % probe.shape[-1] == 0:
        trunk.stride = side // int(probe.shape[-1])
    return trunk


__all__ = ["build_trunk"]
