"""AlexNet as a cross-channel encoder (Sec. 3.2): the CaffeNet layers, trained to predict ab from L.

Layers (channel counts at ``width = 1``; every layer is followed by BatchNorm and then ReLU, as in the authors'
released AlexNet training net, where ``convN -> BatchNorm -> ReLU``)::

    conv1  96 x 11x11, stride 4          pool1  3x3 max, stride 2
    conv2  256 x 5x5, groups 2, pad 2    pool2  3x3 max, stride 2
    conv3  384 x 3x3, pad 1
    conv4  384 x 3x3, groups 2, pad 1
    conv5  256 x 3x3, groups 2, pad 1    pool5  3x3 max
    fc6    4096                          fc7    4096        fc8  313 (the colorization classifier)

Two geometries share these weights (``geometry=``):

``"pretext"`` (colorization training, the authors' ``train_alexnet`` net): conv1 padding 5; pool1 and pool2
    padding 1; pool5 stride 1, padding 1; fc6 a 6x6 convolution with dilation 2 and padding 5, fc7 and fc8 1x1
    convolutions. The network is fully convolutional: on ~180 px crops it predicts 313 logits on a grid of
    stride ``head_stride = 16``; output cell (i, j) is centred on input pixel
    (``head_offset + 16 i``, ``head_offset + 16 j``) with ``head_offset = 0`` (every padding is "same"-centred),
    so the trainer takes ground-truth ab at exactly those pixels (:meth:`AlexNet.head_pixels`).
``"transfer"`` (the standard CaffeNet for the benchmarks): conv1 and all pools unpadded, pool5 stride 2, so a
    227 px input gives conv1 55x55, pool1/conv2 27x27, pool2/conv3-5 13x13, pool5 6x6; fc6 is
    ``Linear(256*6*6, 4096)`` (the same 6x6 kernel, now undilated over the stride-2 pool5), fc7 and fc8 Linear.
    The dilated fc6 of the pretext net is the "a trous" form of this layer: on the same conv5 map, the pretext
    fc6 output at the centre cell equals the transfer fc6 output (see :mod:`xchannel.convert`).

Pools use PyTorch's floor rounding (Caffe rounds up); with the paddings above this guarantees that every output
cell is centred inside the image, and both rules agree at 227 px.

Input: Lab in its natural units, L in [0, 100] (``in_channels=1``: the gray model), L, a, b with ab in
[-110, 110] (``in_channels=3``: the color variant of Sec. 3.2) or a, b alone (``in_channels=2``: the ab half of the
split-brain autoencoder); :attr:`AlexNet.input_space` names it ("L", "Lab", "ab"). The network sees (L - 50) / 100
and ab / 110.

As a backbone (:mod:`xchannel.pretext`) the network is conv1 ... fc7; fc8 is the task's classifier, with
``fc8_outputs`` outputs (313 ab bins for colorization, 4 rotations, ...), or absent (``fc8_outputs=0``: the
backbone alone, as checkpoints hand it to the benchmarks). ``groups`` is the grouping of conv2, conv4 and conv5
(CaffeNet's 2; 1 for the half-width towers of the split-brain autoencoder, whose two towers are those groups).
BatchNorm follows conv1, so this fixed affine input scaling changes nothing but the scale of conv1's
initialisation; it matches the VGG colorizer's convention.

Initialisation (constructor): Gaussian, std 0.01 for convolutions and 0.005 for fc layers, zero biases
(:func:`xchannel.models.init.gaussian_init_`). In the color variant the ab weights of conv1 start at zero and the L
weights are drawn exactly as in the gray model with the same seed, so at initialisation the color model computes
the gray model's features whatever the ab input (the paper's "Ours (color)": conv1 extended to Lab "initializing
the weights on the ab channels to be zero"). :func:`to_color_input` does the same to a trained gray model.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.color import ANNEAL_T, Q, annealed_mean
from xchannel.errors import UserError
from xchannel.models.vgg_colorizer import check_layer_names

GEOMETRIES = ("pretext", "transfer")
L_CENTER, L_SCALE, AB_SCALE = 50.0, 100.0, 110.0
FC_CHANNELS = 4096
TRANSFER_INPUT = 227  # CaffeNet crop: pool5 is 6x6 exactly at this size
POOL5_SIZE = 6

# name: (output channels at width 1, kernel, stride, groups, padding in pretext geometry, padding in transfer)
_CONVS: dict[str, tuple[int, int, int, int, int, int]] = {
    "conv1": (96, 11, 4, 1, 5, 0),
    "conv2": (256, 5, 1, 2, 2, 2),
    "conv3": (384, 3, 1, 1, 1, 1),
    "conv4": (384, 3, 1, 2, 1, 1),
    "conv5": (256, 3, 1, 2, 1, 1),
}
# name: (stride, padding) in pretext and in transfer geometry; all are 3x3 max pools
_POOLS: dict[str, dict[str, tuple[int, int]]] = {
    "pool1": {"pretext": (2, 1), "transfer": (2, 0)},
    "pool2": {"pretext": (2, 1), "transfer": (2, 0)},
    "pool5": {"pretext": (1, 1), "transfer": (2, 0)},
}
INPUT_SPACES = {1: "L", 2: "ab", 3: "Lab"}
STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")


def even_channels(c: int, width: float) -> int:
    """``c * width`` rounded to an even number (the grouped layers split channels in two), at least 2."""
    return max(2, 2 * int(round(c * width / 2)))


class AlexNet(nn.Module):
    """CaffeNet-geometry cross-channel encoder with BatchNorm after every layer (see the module docstring).

    Args:
        in_channels: 1 (L input, the gray model) or 3 (Lab input, the color variant).
        width: channel multiplier for every layer (1.0 = CaffeNet).
        geometry: ``"pretext"`` (fully convolutional colorization net) or ``"transfer"`` (227 px CaffeNet).
        batchnorm: False gives the same layers with BatchNorm folded away (see
            :func:`xchannel.convert.fold_batchnorm`).
        dropout: dropout probability before fc7 and fc8 (0 in the pretext net; CaffeNet fine-tuning uses 0.5).
        seed: seed of the Gaussian initialisation (None: the global RNG).
        zero_init_ab: in the color variant, start conv1's ab weights at zero (True) or draw them too (False, the
            "Gaussian, color input" baseline).
        fc8_outputs: outputs of the task's classifier fc8 (313: the colorization bins); 0: no fc8.
        groups: groups of conv2, conv4 and conv5 (CaffeNet: 2).

    Feature taps (:attr:`layer_names`): conv1 ... conv5, pool5, fc6, fc7, each post-BatchNorm and post-ReLU.
    """

    registry_name = "alexnet"
    layer_names: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
    stage_names: tuple[str, ...] = STAGES

    def __init__(self, in_channels: int = 1, width: float = 1.0, geometry: str = "pretext", batchnorm: bool = True,
                 dropout: float = 0.0, seed: int | None = None, zero_init_ab: bool = True, fc8_outputs: int = Q,
                 groups: int = 2) -> None:
        super().__init__()
        if in_channels not in INPUT_SPACES:
            raise UserError(f"alexnet: in_channels must be 1 (L), 2 (ab) or 3 (Lab), got {in_channels}")
        if fc8_outputs < 0 or groups not in (1, 2):
            raise UserError(f"alexnet: fc8_outputs must be >= 0 and groups 1 or 2, got {fc8_outputs}, {groups}")
        if geometry not in GEOMETRIES:
            raise UserError(f"alexnet: geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
        if not width > 0:
            raise UserError(f"alexnet: width must be > 0, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"alexnet: dropout must be in [0, 1), got {dropout}")
        self.hparams = {"in_channels": int(in_channels), "width": float(width), "geometry": geometry,
                        "batchnorm": bool(batchnorm), "dropout": float(dropout)}
        if fc8_outputs != Q or groups != 2:  # the hparams of a colorization net read as they always have
            self.hparams.update(fc8_outputs=int(fc8_outputs), groups=int(groups))
        self.fc8_outputs, self.groups = int(fc8_outputs), int(groups)
        self.stage_names = STAGES if fc8_outputs else STAGES[:-1]
        self.in_channels = int(in_channels)
        self.width = float(width)
        self.geometry = geometry
        self.batchnorm = bool(batchnorm)
        pretext = geometry == "pretext"

        def bn(c: int, dims: int = 2) -> nn.Module:
            if not batchnorm:
                return nn.Identity()
            return nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)

        c_in = self.in_channels
        for name, (c, k, s, g, p_pre, p_tr) in _CONVS.items():
            c_out = even_channels(c, width)
            conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p_pre if pretext else p_tr, groups=min(g, groups))
            self.add_module(name, nn.Sequential(OrderedDict(conv=conv, bn=bn(c_out), relu=nn.ReLU(inplace=True))))
            c_in = c_out
            pool = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}.get(name)
            if pool is not None:
                stride, pad = _POOLS[pool][geometry]
                self.add_module(pool, nn.MaxPool2d(3, stride=stride, padding=pad))
        c5, f = c_in, max(1, int(round(FC_CHANNELS * width)))
        if pretext:
            fc6 = nn.Conv2d(c5, f, POOL5_SIZE, dilation=2, padding=5)
            fc7: nn.Module = nn.Conv2d(f, f, 1)
            fc8: nn.Module | None = nn.Conv2d(f, fc8_outputs, 1) if fc8_outputs else None
            self.fc6 = nn.Sequential(OrderedDict(fc=fc6, bn=bn(f), relu=nn.ReLU(inplace=True)))
        else:
            fc7, fc8 = nn.Linear(f, f), nn.Linear(f, fc8_outputs) if fc8_outputs else None
            self.fc6 = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(c5 * POOL5_SIZE ** 2, f),
                                                 bn=bn(f, 1), relu=nn.ReLU(inplace=True)))
        self.fc7 = nn.Sequential(OrderedDict(drop=nn.Dropout(dropout), fc=fc7, bn=bn(f, 2 if pretext else 1),
                                             relu=nn.ReLU(inplace=True)))
        if fc8 is not None:
            self.fc8 = nn.Sequential(OrderedDict(drop=nn.Dropout(dropout), fc=fc8))

        from xchannel.models.init import gaussian_init_  # init.py works on any model; imported here to avoid a cycle

        gaussian_init_(self, seed=seed, zero_ab=zero_init_ab)

    # ---------------------------------------------------------------------------------------------------------
    @property
    def input_space(self) -> str:
        """"L", "ab" or "Lab": the channels the network reads (natural units)."""
        return INPUT_SPACES[self.in_channels]

    @property
    def input_conv(self) -> nn.Conv2d:
        """The convolution that sees the input (its channels 1-2 are the ab weights of the color variant)."""
        return self.conv1.conv

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """L in [0, 100] -> (L - 50) / 100; ab in [-110, 110] -> ab / 110."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"alexnet expects {self.input_space} as N x {self.in_channels} x H x W, "
                             f"got shape {tuple(x.shape)}")
        if self.in_channels == 2:
            return x / AB_SCALE
        L = (x[:, :1] - L_CENTER) / L_SCALE
        return L if self.in_channels == 1 else torch.cat([L, x[:, 1:] / AB_SCALE], dim=1)

    def _run(self, x: torch.Tensor, start: int, stop: int, wanted: Sequence[str] = ()) -> tuple[torch.Tensor, dict]:
        out: dict[str, torch.Tensor] = {}
        for name in self.stage_names[start: stop + 1]:
            if name == "fc6" and self.geometry == "transfer" and tuple(x.shape[-2:]) != (POOL5_SIZE, POOL5_SIZE):
                raise ValueError(f"alexnet (transfer geometry): fc6 needs a {POOL5_SIZE}x{POOL5_SIZE} pool5, got "
                                 f"{x.shape[-2]}x{x.shape[-1]}; feed {TRANSFER_INPUT}x{TRANSFER_INPUT} inputs")
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        return x, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Lab input -> logits over the 313 ab bins, N x 313 x h x w (pretext; h = :meth:`output_size`) or
        N x 313 x 1 x 1 (transfer)."""
        logits, _ = self._run(self.normalize_input(x), 0, len(self.stage_names) - 1)
        return logits if logits.ndim == 4 else logits[:, :, None, None]

    def features(self, x: torch.Tensor, layers: Sequence[str] = ("conv5",),
                 from_layer: str | None = None) -> dict[str, torch.Tensor]:
        """Named activations (post-BatchNorm, post-ReLU), computing only up to the deepest requested layer.

        ``x`` is the network input (Lab in natural units), or, with ``from_layer``, the output of that stage
        (e.g. cached conv5 maps), in which case computation resumes at the next stage. Names are those of
        :attr:`stage_names` (the taps of :attr:`layer_names`, plus pool1, pool2 and the fc8 logits).
        """
        stages = self.stage_names
        wanted = check_layer_names(layers, stages, "alexnet")
        if from_layer is None:
            start, x = 0, self.normalize_input(x)
        else:
            check_layer_names([from_layer], stages, "alexnet")
            start = stages.index(from_layer) + 1
            early = [n for n in wanted if stages.index(n) < start]
            if early:
                raise UserError(f"alexnet: layer(s) {', '.join(early)} come before or at from_layer={from_layer!r}")
        _, out = self._run(x, start, max(stages.index(n) for n in wanted), wanted)
        return out

    # ---------------------------------------------------------------------------------------------------------
    # Geometry of the colorization head

    def _spatial_layers(self) -> list[tuple[str, int, int, int, int]]:
        """(stage, kernel, stride, padding, dilation) of every spatial layer, in order."""
        layers = []
        for name in self.stage_names:
            m = getattr(self, name)
            if isinstance(m, nn.Sequential):
                m = m.conv if hasattr(m, "conv") else m.fc
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                k, s, p, d = (_pair0(getattr(m, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
                layers.append((name, k, s, p, d))
        return layers

    def output_size(self, input_size: int) -> int:
        """Side of the logit grid for an input side of ``input_size`` (pretext), or 1 (transfer at 227 px).

        E.g. pretext: 180 -> 12, 176 -> 11, 64 -> 4; transfer: 227 -> 1.
        """
        n = int(input_size)
        for name, k, s, p, d in self._spatial_layers():  # in the transfer geometry these end at pool5
            n = (n + 2 * p - d * (k - 1) - 1) // s + 1
            if n < 1:
                raise ValueError(f"alexnet: input size {input_size} is too small (no output left after {name})")
        if self.geometry == "transfer":
            if n != POOL5_SIZE:
                raise ValueError(f"alexnet (transfer geometry): input size {input_size} gives pool5 {n}x{n}, "
                                 f"fc6 needs {POOL5_SIZE}x{POOL5_SIZE} ({TRANSFER_INPUT} px input)")
            return 1
        return n

    def _head_geometry(self) -> tuple[int, float]:
        if self.geometry != "pretext":
            raise ValueError("alexnet: the dense colorization head exists only in the pretext geometry")
        stride, offset = 1, 0.0
        for _, k, s, p, d in self._spatial_layers():
            offset += stride * ((k - 1) * d / 2.0 - p)  # centre of output cell 0 in the layer's input
            stride *= s
        return stride, offset

    @property
    def head_stride(self) -> int:
        """Input pixels between neighbouring logit cells (16 in the pretext geometry)."""
        return self._head_geometry()[0]

    @property
    def head_offset(self) -> float:
        """Input pixel on which logit cell 0 is centred (0 in the pretext geometry)."""
        return self._head_geometry()[1]

    def head_pixels(self, input_size: int) -> torch.Tensor:
        """Input pixel coordinates (int64) of the logit cells along a side: ``head_offset + head_stride * i``.

        The trainer picks the ground-truth ab of cell (i, j) at pixel (rows[i], cols[j]); all lie inside the image.
        """
        stride, offset = self._head_geometry()
        n = self.output_size(input_size)
        return (offset + stride * torch.arange(n, dtype=torch.float64)).round().long().clamp(0, input_size - 1)

    def predict_ab(self, x: torch.Tensor, T: float = ANNEAL_T) -> torch.Tensor:
        """Annealed-mean ab (Eq. 5, T = 0.38) at the input resolution (pretext geometry): N x 2 x H x W.

        The ab of each logit cell sits on its centre pixel; pixels between centres are interpolated bilinearly
        (``align_corners=True`` between centres) and pixels beyond the last centre repeat its value.
        """
        stride, offset = self._head_geometry()
        ab = annealed_mean(self(x), T)
        h, w = ab.shape[-2:]
        H, W = x.shape[-2:]
        ab = F.interpolate(ab, size=(stride * (h - 1) + 1, stride * (w - 1) + 1), mode="bilinear",
                           align_corners=True)
        o = int(round(offset))
        ab = ab[..., : H - o, : W - o]
        return F.pad(ab, (o, W - o - ab.shape[-1], o, H - o - ab.shape[-2]), mode="replicate")


def _pair0(v: int | tuple[int, ...]) -> int:
    return int(v[0]) if isinstance(v, tuple) else int(v)


def to_color_input(model: AlexNet) -> AlexNet:
    """The color variant of a gray AlexNet (Sec. 3.2): conv1 takes Lab, its ab weights zero, all else copied.

    For any ab, the result computes exactly the gray model's features and logits on the L channel.
    """
    if model.in_channels == 3:
        raise UserError("to_color_input: the model already takes Lab input (in_channels=3)")
    color = AlexNet(**{**model.hparams, "in_channels": 3})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    w = state["conv1.conv.weight"]
    state["conv1.conv.weight"] = torch.cat([w, torch.zeros_like(w).expand(-1, 2, -1, -1)], dim=1)
    color.load_state_dict(state)
    return color.to(w.device).train(model.training)
