"""The colorization network of the paper (Fig. 2): a single-stream, VGG-styled CNN without pooling.

Architecture (the authors' released model, layer for layer; ``c`` are the channel counts at ``width = 1``)::

    block   convs (3x3, ReLU after each)                        resolution   then
    1       1 -> 64, 64 -> 64 (stride 2)                        1/2          BatchNorm
    2       64 -> 128, 128 -> 128 (stride 2)                    1/4          BatchNorm
    3       128 -> 256, 256 -> 256, 256 -> 256 (stride 2)       1/8          BatchNorm
    4       3 x 512                                             1/8          BatchNorm
    5       3 x 512, dilation 2 (padding 2)                     1/8          BatchNorm
    6       3 x 512, dilation 2 (padding 2)                     1/8          BatchNorm
    7       3 x 512                                             1/8          BatchNorm
    8       4x4 transposed conv 512 -> 256 (stride 2), 2 x 256  1/4          -
    classifier: 1x1 conv 256 -> 313 logits                      1/4

All convolutions carry a bias. The input is the lightness channel L in [0, 100]; the network sees
(L - 50) / 100, as the released model does. Module indices inside each block follow the release (conv at even
indices, ReLU after each, BatchNorm last), so ``block3.6`` is block 3's BatchNorm.

Decoding (Sec. 2.3): :meth:`VGGColorizer.predict_ab` computes the annealed mean ``softmax(logits / T) @ P`` at
1/4 resolution, then upsamples bilinearly (``align_corners=False``) by 4 to the input size. ``P`` is the
``ab_projection`` buffer (Q x 2): the 313 bin centres for models trained here, or the projection of the authors'
release after :func:`xchannel.convert.from_official_eccv16` (see there for how the folded temperature is kept).

The channel ``width`` multiplier scales every block (the 2-core demo trains a narrow model); at ``width = 1``
the layer shapes equal the release's.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.color import ANNEAL_T, Q, ab_bins, annealed_mean
from xchannel.errors import UserError

L_CENTER = 50.0
L_SCALE = 100.0

# (number of 3x3 convs, output channels at width 1, stride of the last conv, dilation) for blocks 1-7
_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 2, 1),
    (2, 128, 2, 1),
    (3, 256, 2, 1),
    (3, 512, 1, 1),
    (3, 512, 1, 2),
    (3, 512, 1, 2),
    (3, 512, 1, 1),
)
_BLOCK8_CHANNELS = 256


def scaled_channels(c: int, width: float) -> int:
    """Channel count ``c`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(c * width)))


class VGGColorizer(nn.Module):
    """The paper's colorization CNN (Fig. 2): L (N x 1 x H x W, in [0, 100]) -> logits N x 313 x H/4 x W/4.

    Args:
        width: channel multiplier (1.0 = the released network).
        temperature: default T of :meth:`predict_ab` (0.38, Sec. 2.3).
        seed: when given, the weights are drawn from a generator seeded with it (PyTorch's default
            initialisation: Kaiming-uniform convolutions); the global RNG is left untouched. The paper trains
            from a k-means initialisation: see :func:`xchannel.models.init.kmeans_init_`.
    """

    registry_name = "vgg_colorizer"
    layer_names: tuple[str, ...] = tuple(f"block{i}" for i in range(1, 9))
    head_stride = 4

    def __init__(self, width: float = 1.0, temperature: float = ANNEAL_T, seed: int | None = None) -> None:
        super().__init__()
        if not width > 0:
            raise UserError(f"vgg_colorizer: width must be > 0, got {width}")
        if temperature <= 0:
            raise UserError(f"vgg_colorizer: temperature must be > 0, got {temperature}")
        self.hparams = {"width": float(width), "temperature": float(temperature)}
        self.width = float(width)
        self.temperature = float(temperature)
        rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[])
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            c_in = 1
            for i, (n_conv, c, stride, dil) in enumerate(_BLOCKS, start=1):
                c_out = scaled_channels(c, width)
                layers: list[nn.Module] = []
                for j in range(n_conv):
                    s = stride if j == n_conv - 1 else 1
                    layers += [nn.Conv2d(c_in, c_out, 3, stride=s, padding=dil, dilation=dil, bias=True),
                               nn.ReLU(inplace=True)]
                    c_in = c_out
                layers.append(nn.BatchNorm2d(c_out))
                self.add_module(f"block{i}", nn.Sequential(*layers))
            c8 = scaled_channels(_BLOCK8_CHANNELS, width)
            self.block8 = nn.Sequential(
                nn.ConvTranspose2d(c_in, c8, 4, stride=2, padding=1, bias=True), nn.ReLU(inplace=True),
                nn.Conv2d(c8, c8, 3, padding=1, bias=True), nn.ReLU(inplace=True),
                nn.Conv2d(c8, c8, 3, padding=1, bias=True), nn.ReLU(inplace=True),
            )
            self.classifier = nn.Conv2d(c8, Q, 1, bias=True)
        # Q x 2 map from a distribution over the bins to ab (the bin centres unless imported, see convert.py)
        self.register_buffer("ab_projection", ab_bins(dtype=torch.float32).clone())

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def normalize_input(L: torch.Tensor) -> torch.Tensor:
        """L in [0, 100] -> (L - 50) / 100, the released model's input scaling."""
        return (L - L_CENTER) / L_SCALE

    def _check(self, L: torch.Tensor) -> None:
        if L.ndim != 4 or L.shape[1] != 1:
            raise ValueError(f"vgg_colorizer expects L as N x 1 x H x W, got shape {tuple(L.shape)}")

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        """L (N x 1 x H x W, [0, 100]) -> logits over the 313 bins, N x 313 x ceil(H/8)*2 x ceil(W/8)*2."""
        self._check(L)
        x = self.normalize_input(L)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.classifier(x)

    def features(self, L: torch.Tensor, layers: Sequence[str] = ("block7",)) -> dict[str, torch.Tensor]:
        """Activations after the named blocks (each block ends post-ReLU and, for blocks 1-7, post-BatchNorm).

        Computation stops after the deepest requested block.
        """
        self._check(L)
        wanted = check_layer_names(layers, self.layer_names, "vgg_colorizer")
        last = max(self.layer_names.index(n) for n in wanted)
        out: dict[str, torch.Tensor] = {}
        x = self.normalize_input(L)
        for name in self.layer_names[: last + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        return out

    def output_size(self, input_size: int) -> int:
        """Side of the logit map for an input side of ``input_size`` (1/4 of it when divisible by 8)."""
        n = input_size
        for _ in range(3):  # three stride-2 3x3 convs with padding 1
            n = (n - 1) // 2 + 1
        return 2 * n  # the 4x4 stride-2 transposed conv with padding 1 doubles the size

    def predict_ab(self, L: torch.Tensor, T: float | None = None) -> torch.Tensor:
        """Annealed-mean ab (Eq. 5) at the input resolution: N x 1 x H x W L -> N x 2 x H x W ab.

        ``upsample4(softmax(logits / T) @ ab_projection)`` with bilinear, ``align_corners=False`` upsampling.
        For H, W divisible by 8 this is the released pipeline's ``Upsample(scale_factor=4)`` exactly; otherwise
        the ab map is resized straight to H x W.
        """
        T = self.temperature if T is None else float(T)
        ab = annealed_mean(self(L), T, self.ab_projection)
        return F.interpolate(ab, size=tuple(L.shape[-2:]), mode="bilinear", align_corners=False)


def check_layer_names(layers: Iterable[str], known: Sequence[str], model: str) -> list[str]:
    """The requested feature layers as a list; an unknown name is a :class:`UserError` listing the known ones."""
    wanted = [layers] if isinstance(layers, str) else list(layers)
    if not wanted:
        raise UserError(f"{model}: no feature layers requested; known layers: {', '.join(known)}")
    bad = [n for n in wanted if n not in known]
    if bad:
        raise UserError(f"{model}: unknown feature layer(s) {', '.join(map(repr, bad))}; "
                        f"known layers: {', '.join(known)}")
    return wanted
