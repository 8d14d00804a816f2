"""Two half-width AlexNets side by side, one reading L and one reading ab, exported as one Lab AlexNet: the
networks of the split-brain autoencoder (Zhang, Isola, Efros, CVPR 2017) and of contrastive multiview coding on
L and ab (Tian, Krishnan, Isola, 2019).

:func:`merge_halves` builds the one network (CaffeNet grouping, twice a half's width) whose layers are exactly
block-diagonal: conv1's first half of filters reads L only, the second ab only; conv2, conv4 and conv5 are
CaffeNet's two groups; conv3, fc6 and fc7 hold exact zeros off the diagonal. Its L half never sees ab.
:func:`ab_as_lab` exports a lone ab network as a Lab network with zero L weights.
"""

from __future__ import annotations

import torch

from xchannel.errors import UserError
from xchannel.models.alexnet import FC_CHANNELS, AlexNet, even_channels


def check_halvable(width: float, task: str) -> None:
    """Merging needs every layer of the full-width net (``width``) to have exactly twice the channels of a half."""
    convs = (96, 256, 384, 384, 256)
    if any(even_channels(c, width) != 2 * even_channels(c, width / 2) for c in convs) or \
            round(FC_CHANNELS * width) != 2 * round(FC_CHANNELS * width / 2):
        raise UserError(f"{task}: model.width={width} cannot be split into two equal halves on every layer "
                        f"(use 1.0, 0.5, 0.25 or 0.125)")


@torch.no_grad()
def merge_halves(l_net: AlexNet, ab_net: AlexNet) -> AlexNet:
    """One Lab AlexNet (CaffeNet grouping, width twice the halves') computing both halves side by side: its L half
    (the first half of every layer's channels) is ``l_net`` on L, its ab half ``ab_net`` on ab, with exact zeros
    between them. BatchNorm statistics and affine parameters are concatenated."""
    hp = {**l_net.hparams, "in_channels": 3, "width": 2 * l_net.width, "fc8_outputs": 0, "groups": 2}
    merged = AlexNet(**hp).to(l_net.conv1.conv.weight.device)
    a, b = l_net.state_dict(), ab_net.state_dict()
    out = {}
    for key, target in merged.state_dict().items():
        x, y = a[key], b[key]
        if key == "conv1.conv.weight":
            w = torch.zeros_like(target)
            w[: x.shape[0], :1] = x
            w[x.shape[0]:, 1:] = y
        elif key.endswith(".weight") and target.ndim >= 2 and target.shape[1] == x.shape[1]:  # a grouped conv
            w = torch.cat([x, y])
        elif key.endswith(".weight") and target.ndim >= 2:  # full layer: block-diagonal
            w = torch.zeros_like(target)
            w[: x.shape[0], : x.shape[1]] = x
            w[x.shape[0]:, x.shape[1]:] = y
        elif key.endswith("num_batches_tracked"):
            w = x
        else:  # biases and BatchNorm vectors
            w = torch.cat([x, y])
        out[key] = w
    merged.load_state_dict(out)
    return merged.train(l_net.training)


@torch.no_grad()
def ab_as_lab(ab_net: AlexNet) -> AlexNet:
    """The ab -> L network as a Lab network whose conv1 has zero L weights (so it computes the same on Lab)."""
    lab = AlexNet(**{**ab_net.hparams, "in_channels": 3, "fc8_outputs": 0}).to(ab_net.conv1.conv.weight.device)
    state = {k: v for k, v in ab_net.state_dict().items() if not k.startswith("fc8.")}
    w = state["conv1.conv.weight"]
    state["conv1.conv.weight"] = torch.cat([torch.zeros_like(w[:, :1]), w], 1)
    lab.load_state_dict(state)
    return lab
