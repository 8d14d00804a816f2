"""An encoder as a :class:`~xchannel.pascal.trunk.Trunk` for fine-tuning (:func:`build_trunk`): the encoder's own cut
(:meth:`~xchannel.features.encoders.Encoder.trunk_cut`), or its deepest tap as one stage. No encoder family is named
here: a new backbone brings its cut with its encoder."""

from __future__ import annotations

from collections import OrderedDict

import torch

from xchannel.features.encoders import Encoder
from xchannel.pascal.trunk import Trunk, _TapStage


def build_trunk(encoder: Encoder, dropout: float = 0.5) -> Trunk:
    """Cut ``encoder`` into a :class:`Trunk`.

    The encoder makes the cut (:meth:`~xchannel.features.encoders.Encoder.trunk_cut`: our AlexNet gives conv1 ...
    conv5, fc6, fc7 with BatchNorm folded and drop6 at ``dropout``; torchvision's AlexNet its ``features`` and
    its classifier's fc6, fc7). An encoder without a cut (timm networks, the VGG colorizer) gives its deepest tap
    as one ``trunk`` stage, no fc stages (classification puts its classifier on the globally averaged map).
    """
    cut = encoder.trunk_cut(dropout)
    if cut is not None:
        trunk = Trunk(cut.kind, cut.conv, cut.fc, cut.normalize, cut.crop)
        trunk.conv_dim, trunk.fc_dim = cut.conv_dim, cut.fc_dim
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
