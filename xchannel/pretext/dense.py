"""What the dense tasks share (colorization, the autoencoders, the split-brain autoencoder): a fully
convolutional network whose output cell (i, j) sits on input pixel (offset + stride i, offset + stride j), and
targets taken at exactly those pixels (the released training nets subsample the ground truth by the network's
output stride rather than resizing it)."""

from __future__ import annotations

import torch
import torch.nn as nn


def pick(x: torch.Tensor, stride: int, offset: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """The pixels (offset + stride i, offset + stride j) of x, cropped to out_hw (the head's output size)."""
    picked = x[:, :, offset::stride, offset::stride][:, :, : out_hw[0], : out_hw[1]]
    if tuple(picked.shape[-2:]) != tuple(out_hw):
        raise ValueError(f"head output {tuple(out_hw)} larger than the picked ground truth {tuple(picked.shape[-2:])}")
    return picked


def head_pixels(model: nn.Module) -> tuple[int, int]:
    """(stride, offset) of the model's head: output cell (i, j) sits on input pixel (o + s i, o + s j)."""
    return int(model.head_stride), int(round(getattr(model, "head_offset", 0)))


def at_head(model: nn.Module, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``x`` (N x C x H x W) at the model's head cells, cropped to the output's size."""
    return pick(x, *head_pixels(model), out_hw)
