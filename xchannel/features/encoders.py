"""Encoders for the benchmarks: one way to get a network, its input convention and its feature taps from a spec.

Every benchmark (linear probes of Fig. 7, PASCAL classification, Fast R-CNN detection, FCN segmentation) calls
:func:`load_encoder` with the user's spec and receives an :class:`Encoder`: an ``nn.Module`` that

* turns RGB images in [0, 1] (N x 3 x H x W, float) into the network's input (:meth:`Encoder.prepare`):
  L (``input_mode="gray"``), Lab (``"color"``) or normalised RGB (``"rgb"``);
* returns named activations (:meth:`Encoder.features`), computing only up to the deepest layer requested;
* holds the underlying network as :attr:`Encoder.backbone` (for the AlexNet family an
  :class:`~xchannel.models.AlexNet`, by default in the 227 px CaffeNet "transfer" geometry, whose conv1-conv5 and
  fc6/fc7 the PASCAL tasks reuse);
* describes itself for result files (:meth:`Encoder.describe`: spec, weight file and its sha256, input mode, ...).

Specs
-----
``PATH`` (or ``checkpoint:PATH``)
    An xchannel checkpoint: a training checkpoint, a bare model checkpoint, a training run folder (its newest
    checkpoint), or the authors' released ECCV16 colorizer (:func:`xchannel.checkpoints.load_network`). A gray
    AlexNet is converted to the transfer geometry (:func:`xchannel.convert.alexnet_to_geometry`: conv1 unpadded,
    standard pools, fc6 a Linear over the 6x6 pool5 of a 227 px input). ``input_mode="color"`` gives the paper's
    "Ours (color)": conv1 extended to Lab with zero ab weights (:func:`xchannel.models.to_color_input`), so it
    computes the gray features whatever the colours. A Lab-trained model with ``input_mode="gray"`` keeps only the
    L weights of conv1 (equal to feeding it ab = 0). The VGG colorizer is accepted too (gray input, taps
    block1 ... block8).
``gaussian[:width=W]``, ``kmeans[:width=W]``
    A fresh AlexNet (CaffeNet layers, no BatchNorm, as in Krähenbühl et al.) with Gaussian weights (std 0.01 for
    convolutions, 0.005 for fc layers; :func:`xchannel.models.init.gaussian_init_`) or with the k-means
    data-dependent initialisation of Krähenbühl et al. (ICLR 2016; :func:`xchannel.models.init.kmeans_init_`) on
    the images of ``init_data``. Gray (L) or color (Lab) input; the color Gaussian baseline draws its ab weights
    too (it is meant to see colour). ``width`` scales every layer (default 1).
``torchvision-alexnet:PATH``
    torchvision's AlexNet architecture with the weights of ``PATH`` (e.g. the supervised ImageNet model: the
    "ImageNet labels" ceiling of Fig. 7). RGB input normalised with the ImageNet mean and std;
    ``input_mode="gray"`` feeds the gray image as RGB (R = G = B = the sRGB value of the pixel's lightness L), the
    dotted "grayscale" lines of Fig. 7. Taps conv1 ... conv5 (post-ReLU), pool5, fc6, fc7 (post-ReLU). Note that
    torchvision's AlexNet is the one-tower variant with 64-192-384-256-256 channels (Krizhevsky, "One weird
    trick", 2014), not CaffeNet's 96-256-384-384-256 with grouped convolutions, so its layer dimensions differ from
    the paper's networks.
``timm:NAME[:PATH]``
    Any timm model, created with ``pretrained=False`` (nothing is ever downloaded), with the weights of ``PATH``
    when given (else a random initialisation seeded with ``seed``). RGB input normalised with the model's
    ``pretrained_cfg`` mean and std (gray as above); the taps are the model's ``feature_info`` entries, named by
    module (``act1``, ``layer1``, ... for a ResNet), computed with ``forward_intermediates`` (or a
    ``features_only`` copy of the model for architectures without it).
``state_dict:PATH[:ARCH]``
    A plain state_dict mapped onto an architecture of :data:`STATE_DICT_ARCHS` (default ``alexnet``: our AlexNet,
    L or Lab input by conv1's channels, width from conv1's filters, CaffeNet grouping); see
    :func:`map_alexnet_state_dict` for the key mapping. Keys that cannot be mapped are an error naming them.

A new backbone kind is one builder function plus one entry in :data:`ENCODERS`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from xchannel.color import lab_to_rgb, rgb_to_lab
from xchannel.errors import UserError
from xchannel.utils.io import safe_torch_load, sha256_file

INPUT_MODES = ("gray", "color", "rgb")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``init_data`` of :func:`load_encoder`: RGB batches (float in [0, 1] or uint8, N x 3 x H x W, or the dict
#: batches of :mod:`xchannel.data.images` with an ``"image"`` entry), or a callable returning them.
InitData = Callable[[], Any] | Iterable[Any] | torch.Tensor | None


# --------------------------------------------------------------------------------------------------------------
# The Encoder interface


class Encoder(nn.Module):
    """A network with its input convention and named feature taps (see the module docstring).

    Subclasses implement :meth:`taps` (prepared input -> named activations). Attributes: ``name`` (short, for
    tables and plots), ``spec`` (what the user gave), ``input_mode``, ``layer_names`` (taps, shallow to deep),
    ``backbone``, ``default_crop`` (the input side the network is meant for), ``info`` (extra facts for
    :meth:`describe`), ``weights_path`` (the file the weights came from, if any).
    """

    layer_names: tuple[str, ...]

    def __init__(self, *, name: str, spec: str, backbone: nn.Module, input_mode: str, layer_names: Sequence[str],
                 default_crop: int, weights_path: str | os.PathLike | None = None,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise UserError(f"encoder {spec!r}: input mode must be one of {', '.join(INPUT_MODES)}, "
                            f"got {input_mode!r}")
        self.name = name
        self.spec = spec
        self.backbone = backbone
        self.input_mode = input_mode
        self.layer_names = tuple(layer_names)
        self.default_crop = int(default_crop)
        self.weights_path = None if weights_path is None else str(weights_path)
        self.info = dict(info or {})
        self._weights_sha256: str | None = None
        self.eval()

    # -- input -------------------------------------------------------------------------------------------------
    def prepare(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (N x 3 x H x W; uint8 is divided by 255) -> the backbone's input (see the subclass)."""
        raise NotImplementedError

    # -- features ----------------------------------------------------------------------------------------------
    def check_layers(self, layers: str | Iterable[str]) -> list[str]:
        """The requested tap names as a list; unknown names are a :class:`UserError` listing the known ones."""
        wanted = [layers] if isinstance(layers, str) else list(layers)
        if not wanted:
            raise UserError(f"encoder {self.name}: no layers requested; its layers: {', '.join(self.layer_names)}")
        bad = [n for n in wanted if n not in self.layer_names]
        if bad:
            raise UserError(f"encoder {self.name}: unknown layer(s) {', '.join(map(repr, bad))}; "
                            f"its layers: {', '.join(self.layer_names)}")
        return wanted

    def taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Named activations on an already prepared input, stopping at the deepest requested layer."""
        raise NotImplementedError

    def features(self, rgb: torch.Tensor, layers: str | Iterable[str]) -> dict[str, torch.Tensor]:
        """:meth:`prepare` then :meth:`taps`: RGB in [0, 1] -> ``{layer: activation}`` for the requested layers."""
        wanted = self.check_layers(layers)
        return self.taps(self.prepare(rgb), wanted)

    def forward(self, rgb: torch.Tensor, layers: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self.features(rgb, self.layer_names[-1:] if layers is None else layers)

    # -- identity ----------------------------------------------------------------------------------------------
    def weights_fingerprint(self) -> str:
        """sha256 over the backbone's state (names, dtypes, shapes, values) and the input convention.

        Identifies the computed features whatever the weights came from (a file, a seed, a k-means
        initialisation), so it keys feature caches. Computed once (the encoder is frozen).
        """
        if self._weights_sha256 is None:
            h = hashlib.sha256()
            h.update(f"{type(self).__name__}|{self.input_mode}|{self.info.get('normalisation', '')}".encode())
            for key, value in self.backbone.state_dict().items():
                t = value.detach().to("cpu").contiguous()
                h.update(f"|{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_sha256 = h.hexdigest()
        return self._weights_sha256

    def describe(self) -> dict[str, Any]:
        """A JSON-able record for result files: spec, kind, input mode, layers, weight file and its sha256."""
        out: dict[str, Any] = {"spec": self.spec, "name": self.name, "kind": type(self).__name__,
                               "input_mode": self.input_mode, "layers": list(self.layer_names),
                               "default_crop": self.default_crop}
        if self.weights_path is not None:
            out["weights_path"] = self.weights_path
            out["checkpoint_sha256"] = sha256_file(self.weights_path) if Path(self.weights_path).is_file() else None
        out["weights_fingerprint"] = self.weights_fingerprint()
        out.update(self.info)
        return out

    # -- fine-tuning -------------------------------------------------------------------------------------------
    def trunk_cut(self, dropout: float = 0.5) -> "TrunkCut | None":
        """The network cut into fine-tunable stages for the PASCAL tasks (:class:`TrunkCut`), or None when the
        encoder has no such cut (the benchmarks then fine-tune its deepest tap as one stage)."""
        return None

    def freeze(self) -> "Encoder":
        """A fixed feature extractor (linear probes): no gradients, eval mode (BatchNorm statistics and dropout
        fixed). Fine-tuning code instead trains :attr:`backbone` (``load_encoder`` leaves parameters trainable)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


def _as_float_rgb(rgb: torch.Tensor) -> torch.Tensor:
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"encoder input must be RGB images N x 3 x H x W, got shape {tuple(rgb.shape)}")
    if rgb.dtype == torch.uint8:
        return rgb.float().div_(255.0)
    return rgb.float()


def gray_as_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """The gray image of ``rgb`` as RGB: Lab with a = b = 0 back to sRGB, so R = G = B = the sRGB value of the
    pixel's lightness L (what the colorization network sees, shown to an RGB network)."""
    L = rgb_to_lab(rgb)[:, :1]
    return lab_to_rgb(torch.cat([L, torch.zeros_like(L).expand(-1, 2, -1, -1)], dim=1))


@dataclass
class TrunkCut:
    """An encoder's network as fine-tunable stages: ``conv`` (conv1 ... pool5, in order) and ``fc`` (fc6, fc7),
    the input normalisation applied before them (None: the prepared input is fed as it is), the input side the
    fc stages need, and the channels of the last conv stage and of fc7."""

    kind: str
    conv: "OrderedDict[str, nn.Module]"
    fc: "OrderedDict[str, nn.Module]"
    normalize: Callable[[torch.Tensor], torch.Tensor] | None
    crop: int
    conv_dim: int
    fc_dim: int


class LabAlexNetEncoder(Encoder):
    """Our AlexNet (or VGG colorizer) on L or Lab input in natural units (the backbone normalises it)."""

    def prepare(self, rgb: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(_as_float_rgb(rgb))
        return lab[:, :1] if self.input_mode == "gray" else lab

    def taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.backbone.features(x, list(layers))

    def trunk_cut(self, dropout: float = 0.5) -> TrunkCut | None:
        """Our AlexNet, in the transfer geometry: BatchNorm folded (the backbone is replaced by the folded
        network), CaffeNet's drop6 (before fc7) at ``dropout``; stages conv1 ... pool5, fc6, fc7. The VGG
        colorizer has no cut."""
        from xchannel.convert import fold_batchnorm
        from xchannel.models.alexnet import TRANSFER_INPUT, AlexNet

        net = self.backbone
        if not isinstance(net, AlexNet):
            return None
        if net.geometry != "transfer":
            raise UserError(f"encoder {self.spec!r}: the PASCAL tasks need the transfer geometry (227 px "
                            f"CaffeNet); load it with geometry='transfer'")
        if net.batchnorm:
            net = fold_batchnorm(net)
            self.backbone = net
        net.fc7.drop.p = float(dropout)
        names = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
        return TrunkCut("alexnet", OrderedDict((n, getattr(net, n)) for n in names),
                        OrderedDict(fc6=net.fc6, fc7=net.fc7), net.normalize_input, TRANSFER_INPUT,
                        net.conv5.conv.out_channels, net.fc7.fc.out_features)


class NormalizedRGBEncoder(Encoder):
    """Networks trained on ImageNet-normalised RGB: ``(rgb - mean) / std``; gray input is :func:`gray_as_rgb`."""

    def __init__(self, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 **kwargs: Any) -> None:
        info = dict(kwargs.pop("info", None) or {})
        info["normalisation"] = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
        super().__init__(info=info, **kwargs)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def prepare(self, rgb: torch.Tensor) -> torch.Tensor:
        rgb = _as_float_rgb(rgb)
        if self.input_mode == "gray":
            rgb = gray_as_rgb(rgb)
        return (rgb - self.mean) / self.std


class TorchvisionAlexNetEncoder(NormalizedRGBEncoder):
    """torchvision's AlexNet; taps by module index (``features`` and ``classifier`` of ``torchvision.models``)."""

    #: tap -> (``features`` or ``classifier``, index of the module whose output is the tap)
    TAPS: dict[str, tuple[str, int]] = {
        "conv1": ("features", 1), "conv2": ("features", 4), "conv3": ("features", 7), "conv4": ("features", 9),
        "conv5": ("features", 11), "pool5": ("features", 12), "fc6": ("classifier", 2), "fc7": ("classifier", 5),
    }

    def trunk_cut(self, dropout: float = 0.5) -> TrunkCut:
        """``features`` (+ its adaptive 6x6 pool) as one ``conv`` stage, ``classifier[0:3]`` as fc6 and
        ``classifier[3:6]`` as fc7 (with their own dropouts, p = 0.5)."""
        net = self.backbone
        cls = net.classifier
        return TrunkCut("torchvision_alexnet", OrderedDict(features=net.features, avgpool=net.avgpool),
                        OrderedDict(fc6=nn.Sequential(OrderedDict(flatten=nn.Flatten(), drop=cls[0], fc=cls[1],
                                                                  relu=cls[2])),
                                    fc7=nn.Sequential(OrderedDict(drop=cls[3], fc=cls[4], relu=cls[5]))),
                        None, self.default_crop,
                        next(m for m in reversed(net.features) if isinstance(m, nn.Conv2d)).out_channels,
                        cls[4].out_features)

    def taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        want = {self.TAPS[n]: n for n in layers}
        last = max(want, key=lambda t: (t[0] == "classifier", t[1]))
        out: dict[str, torch.Tensor] = {}
        net = self.backbone
        for i, module in enumerate(net.features):
            x = module(x)
            if ("features", i) in want:
                out[want[("features", i)]] = x
            if last == ("features", i):
                return out
        x = torch.flatten(net.avgpool(x), 1)
        for i, module in enumerate(net.classifier):
            x = module(x)
            if ("classifier", i) in want:
                out[want[("classifier", i)]] = x
            if last == ("classifier", i):
                break
        return out


class TimmEncoder(NormalizedRGBEncoder):
    """A timm model; taps are its ``feature_info`` entries (by module name).

    With ``forward_intermediates`` (most timm models) the backbone is the full model and the taps are computed with
    ``forward_intermediates(x, indices, stop_early=True, intermediates_only=True)``; otherwise the backbone is a
    ``features_only`` network returning every tap.
    """

    def __init__(self, *, intermediates: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.intermediates = intermediates

    def taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        idx = sorted({self.layer_names.index(n) for n in layers})
        if self.intermediates:
            outs = self.backbone.forward_intermediates(x, indices=idx, stop_early=True, intermediates_only=True)
            got = dict(zip(idx, outs))
        else:
            got = dict(enumerate(self.backbone(x)))
        return {n: got[self.layer_names.index(n)] for n in layers}


# --------------------------------------------------------------------------------------------------------------
# Options and spec parsing


@dataclass
class EncoderRequest:
    """What :func:`load_encoder` was asked for, passed to the builder of the spec's kind."""

    spec: str
    kind: str
    arg: str  # the spec after ``kind:`` (a path, a model name, options)
    input_mode: str | None
    geometry: str
    seed: int
    init_data: InitData = None
    options: dict[str, str] = field(default_factory=dict)


def _parse_options(text: str, spec: str, allowed: Sequence[str]) -> dict[str, str]:
    """``"width=0.25,foo=1"`` -> dict; unknown keys are an error naming the allowed ones."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[,:]", text))):
        if "=" not in part:
            raise UserError(f"encoder {spec!r}: expected key=value options, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in allowed:
            raise UserError(f"encoder {spec!r}: unknown option {key!r}; options: {', '.join(allowed)}")
        out[key] = value
    return out


def _float_option(options: Mapping[str, str], key: str, default: float, spec: str) -> float:
    try:
        value = float(options.get(key, default))
    except ValueError:
        raise UserError(f"encoder {spec!r}: option {key} must be a number, got {options[key]!r}") from None
    if not value > 0:
        raise UserError(f"encoder {spec!r}: option {key} must be > 0, got {value}")
    return value


def _unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """A state_dict from a weight file: the mapping itself, or under ``state_dict`` / ``model`` / ``module.``."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{where}: not a state_dict (a mapping of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str, what: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"{where}: weights do not fit {what}: {str(err).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{where}: weights do not fit {what}: missing keys {result.missing_keys[:6]}, "
                        f"unexpected keys {result.unexpected_keys[:6]}")


# --------------------------------------------------------------------------------------------------------------
# The AlexNet family (ours)


def _alexnet_layers(backbone: nn.Module) -> tuple[str, ...]:
    return tuple(backbone.layer_names)


def _alexnet_encoder(req: EncoderRequest, backbone: nn.Module, name: str, input_mode: str,
                     weights_path: str | None, info: dict[str, Any]) -> Encoder:
    from xchannel.models.alexnet import TRANSFER_INPUT

    crop = TRANSFER_INPUT if getattr(backbone, "geometry", "transfer") == "transfer" else 180
    return LabAlexNetEncoder(name=name, spec=req.spec, backbone=backbone, input_mode=input_mode,
                             layer_names=_alexnet_layers(backbone), default_crop=crop, weights_path=weights_path,
                             info=info)


def _adapt_alexnet(model: nn.Module, input_mode: str | None, geometry: str, where: str) -> tuple[nn.Module, str]:
    """Convert an AlexNet to ``geometry`` and to the requested input (see the module docstring)."""
    from xchannel.convert import alexnet_to_geometry
    from xchannel.models import AlexNet, to_color_input

    assert isinstance(model, AlexNet)
    native = "gray" if model.in_channels == 1 else "color"
    mode = input_mode or native
    if mode == "rgb":
        raise UserError(f"{where}: an xchannel AlexNet takes L or Lab input; input mode must be gray or color")
    if model.geometry != geometry:
        model = alexnet_to_geometry(model, geometry)
    if mode == "color" and native == "gray":
        model = to_color_input(model)
    elif mode == "gray" and native == "color":
        gray = AlexNet(**{**model.hparams, "in_channels": 1})
        state = model.state_dict()
        state["conv1.conv.weight"] = state["conv1.conv.weight"][:, :1].clone()
        gray.load_state_dict(state)
        model = gray
    return model.eval(), mode


def checkpoint_name(path: Path) -> str:
    """A row name for a checkpoint file: ``<run folder> (step N)`` for a training run's ``ckpt_<N>.pt`` (whose
    file name alone says nothing about the run), else the file's stem."""
    stem = path.stem
    if stem.startswith("ckpt_") and stem[5:].isdigit():
        return f"{path.resolve().parent.name} (step {int(stem[5:])})"
    return stem


def _build_checkpoint(req: EncoderRequest) -> Encoder:
    from xchannel.checkpoints import load_network
    from xchannel.models import AlexNet, VGGColorizer, backbone_from_entry
    from xchannel.train.checkpoint import list_checkpoints

    path = Path(req.arg)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path}: a folder without training checkpoints (ckpt_*.pt)")
        path = found[0][1]
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    state = safe_torch_load(path)
    if isinstance(state, dict) and "backbone" in state:  # a self-describing checkpoint: its backbone entry
        model = backbone_from_entry(state["backbone"], str(path)).eval()
        stages = state.get("pretrained_stages")
        base = {"source": "xchannel", "step": state.get("step"), "task": state.get("task"),
                "pretrained_stages": list(stages) if stages is not None else None}
    else:  # an xchannel checkpoint from before backbone entries (colorization), or the released ECCV16 colorizer
        model, info = load_network(path, state)
        stages = None
        base = {"source": info.get("source"), "step": info.get("step"), "loss_kind": info.get("loss_kind"),
                "task": "colorization"}
    if stages is None:  # colorization (the only task before backbone entries) trains every stage
        base["pretrained_stages"] = [s for s in getattr(model, "stage_names", getattr(model, "layer_names", ()))
                                     if s != "fc8" and not s.startswith("pool")]
    if isinstance(model, AlexNet):
        hparams_in = dict(model.hparams)
        model, mode = _adapt_alexnet(model, req.input_mode, req.geometry, str(path))
        base["reinitialised"] = _reinitialise_untrained(model, base["pretrained_stages"], mode, req)
        return _alexnet_encoder(req, model, name=checkpoint_name(path) + ("" if mode == "gray" else f" ({mode})"),
                                input_mode=mode, weights_path=str(path),
                                info={**base, "arch": "alexnet", "trained_hparams": hparams_in,
                                      "hparams": dict(model.hparams), "geometry": model.geometry})
    if isinstance(model, VGGColorizer):
        if req.input_mode not in (None, "gray"):
            raise UserError(f"{path}: the VGG colorizer takes L only; input mode must be gray, "
                            f"got {req.input_mode!r}")
        return LabAlexNetEncoder(name=checkpoint_name(path), spec=req.spec, backbone=model.eval(), input_mode="gray",
                                 layer_names=model.layer_names, default_crop=224, weights_path=str(path),
                                 info={**base, "arch": "vgg_colorizer", "hparams": dict(model.hparams)})
    raise UserError(f"{path}: holds a {type(model).__name__}, which is not an encoder this loader knows")


@torch.no_grad()
def _reinitialise_untrained(model: nn.Module, pretrained: Sequence[str], mode: str, req: EncoderRequest) -> list[str]:
    """Draw the AlexNet stages that the pretext task did not train (conv1 ... fc7 not in ``pretrained``) as
    Table 2's "*" rows were: with Krähenbühl et al.'s k-means initialisation on ``req.init_data`` when given (the
    layers below them as trained), else Gaussian (seeded by ``req.seed``); their BatchNorm is reset to the identity.
    Returns the re-initialised stages."""
    from xchannel.models.init import gaussian_init_, kmeans_init_

    stages = [s for s in model.stage_names if s != "fc8" and not s.startswith("pool")]
    redo = [s for s in stages if s not in set(pretrained)]
    if not redo:
        return []
    for s in redo:
        for m in getattr(model, s).modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
                m.reset_running_stats()
        gaussian_init_(getattr(model, s), seed=req.seed, zero_ab=False)
    if req.init_data is not None:
        probe = LabAlexNetEncoder(name="", spec=req.spec, backbone=model, input_mode=mode,
                                  layer_names=_alexnet_layers(model), default_crop=0)
        batches = _init_batches(req.init_data, f"encoder {req.spec!r}")
        x = torch.cat([probe.prepare(b) for b in batches])
        try:
            fc_ok = model.output_size(int(x.shape[-1])) == 1 or model.geometry == "pretext"
        except ValueError:
            fc_ok = False  # fc6 needs a 6x6 pool5: the fc layers keep their Gaussian draw
        layers = [f"{s}.{'conv' if s.startswith('conv') else 'fc'}" for s in redo if fc_ok or s.startswith("conv")]
        if layers:
            kmeans_init_(model, x, layers=layers, seed=req.seed, progress=False)
    return redo


def _random_alexnet(req: EncoderRequest) -> tuple[nn.Module, str, float]:
    from xchannel.models import AlexNet

    options = _parse_options(req.arg, req.spec, ("width",))
    width = _float_option(options, "width", 1.0, req.spec)
    mode = req.input_mode or "gray"
    if mode == "rgb":
        raise UserError(f"encoder {req.spec!r}: an xchannel AlexNet takes L or Lab input; "
                        f"input mode must be gray or color")
    model = AlexNet(in_channels=1 if mode == "gray" else 3, width=width, geometry=req.geometry, batchnorm=False,
                    seed=req.seed, zero_init_ab=False)
    return model.eval(), mode, width


def _build_gaussian(req: EncoderRequest) -> Encoder:
    model, mode, width = _random_alexnet(req)
    return _alexnet_encoder(req, model, name=f"Gaussian ({mode})", input_mode=mode, weights_path=None,
                            info={"arch": "alexnet", "init": "gaussian", "seed": req.seed, "width": width,
                                  "hparams": dict(model.hparams)})


def _init_batches(init_data: InitData, where: str) -> list[torch.Tensor]:
    """``init_data`` as a list of float RGB batches in [0, 1]."""
    if init_data is None:
        raise UserError(f"{where}: k-means initialisation needs images (init_data); the probe passes its training "
                        f"images")
    data = init_data() if callable(init_data) and not isinstance(init_data, torch.Tensor) else init_data
    batches = [data] if isinstance(data, torch.Tensor) else list(data)
    out = []
    for b in batches:
        if isinstance(b, Mapping):
            if "image" not in b:  # a batch of nothing but skipped images
                continue
            b = b["image"]
        if isinstance(b, (list, tuple)):
            b = b[0]
        out.append(_as_float_rgb(b))
    if not out:
        raise UserError(f"{where}: init_data yielded no images")
    return out


def _build_kmeans(req: EncoderRequest) -> Encoder:
    from xchannel.models.alexnet import POOL5_SIZE
    from xchannel.models.init import affine_layers, kmeans_init_

    model, mode, width = _random_alexnet(req)
    batches = _init_batches(req.init_data, f"encoder {req.spec!r}")
    sizes = {tuple(b.shape[-2:]) for b in batches}
    if len(sizes) != 1:
        raise UserError(f"encoder {req.spec!r}: init_data images must share one size, got {sorted(sizes)}")
    probe = LabAlexNetEncoder(name="", spec=req.spec, backbone=model, input_mode=mode,
                              layer_names=_alexnet_layers(model), default_crop=0)
    x = torch.cat([probe.prepare(b) for b in batches])
    layers = [n for n, _ in affine_layers(model) if not n.startswith("fc8")]
    side = next(iter(sizes))[0]
    if req.geometry == "transfer":
        try:
            fc_ok = model.output_size(side) == 1
        except ValueError:
            fc_ok = False
        if not fc_ok:  # fc6 needs a 6x6 pool5: initialise the convolutions only, fc layers stay Gaussian
            layers = [n for n in layers if n.startswith("conv")]
    kmeans_init_(model, x, layers=layers, seed=req.seed, progress=False)
    return _alexnet_encoder(req, model.eval(), name=f"k-means ({mode})", input_mode=mode, weights_path=None,
                            info={"arch": "alexnet", "init": "kmeans", "seed": req.seed, "width": width,
                                  "init_images": int(x.shape[0]), "init_size": side, "kmeans_layers": layers,
                                  "pool5_size": POOL5_SIZE, "hparams": dict(model.hparams)})


# --------------------------------------------------------------------------------------------------------------
# torchvision and timm


def _rgb_mode(req: EncoderRequest) -> str:
    mode = req.input_mode or "rgb"
    if mode not in ("rgb", "gray"):
        raise UserError(f"encoder {req.spec!r}: an RGB network takes input mode rgb or gray, got {mode!r}")
    return mode


def _build_torchvision_alexnet(req: EncoderRequest) -> Encoder:
    import torchvision

    if not req.arg:
        raise UserError(f"encoder {req.spec!r}: give the weight file, torchvision-alexnet:PATH")
    path = Path(req.arg)
    state = _unwrap_state_dict(safe_torch_load(path), str(path))
    model = torchvision.models.alexnet(weights=None)
    _load_strict(model, state, str(path), "torchvision's AlexNet (64-192-384-256-256 channels)")
    mode = _rgb_mode(req)
    return TorchvisionAlexNetEncoder(
        name=f"torchvision AlexNet ({mode})", spec=req.spec, backbone=model.eval(), input_mode=mode,
        layer_names=tuple(TorchvisionAlexNetEncoder.TAPS), default_crop=224, weights_path=str(path),
        info={"arch": "torchvision_alexnet", "channels": [64, 192, 384, 256, 256],
              "note": "torchvision's one-tower AlexNet, not CaffeNet (96-256-384-384-256, grouped)"})


def _build_timm(req: EncoderRequest) -> Encoder:
    import timm

    name, _, weights = req.arg.partition(":")
    if not name:
        raise UserError(f"encoder {req.spec!r}: give a timm model name, timm:NAME[:PATH]")
    mode = _rgb_mode(req)

    def create(**kwargs: Any) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(req.seed)
            try:
                return timm.create_model(name, pretrained=False, **kwargs)
            except RuntimeError as err:  # timm's "Unknown model"
                raise UserError(f"encoder {req.spec!r}: {err}") from None

    model = create()
    state = None
    if weights:
        state = _unwrap_state_dict(safe_torch_load(weights), weights)
        _load_strict(model, state, weights, f"timm model {name}")
    info_list = list(model.feature_info) if hasattr(model, "feature_info") else []
    intermediates = hasattr(model, "forward_intermediates") and bool(info_list)
    if not intermediates:
        model = create(features_only=True)
        info_list = [{"module": m, "num_chs": c, "reduction": r} for m, c, r in
                     zip(model.feature_info.module_name(), model.feature_info.channels(),
                         model.feature_info.reduction())]
        if state is not None:
            own = model.state_dict()
            _load_strict(model, {k: v for k, v in state.items() if k in own}, weights,
                         f"timm model {name} (features_only)")
    layers = tuple(str(i["module"]) for i in info_list)
    if not layers:
        raise UserError(f"encoder {req.spec!r}: timm model {name} reports no feature_info; it cannot be probed")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    crop = int((cfg.get("input_size") or (3, 224, 224))[-1])
    return TimmEncoder(
        name=f"{name} ({mode})", spec=req.spec, backbone=model.eval(), input_mode=mode, layer_names=layers,
        default_crop=crop, weights_path=weights or None, intermediates=intermediates,
        mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD),
        info={"arch": f"timm:{name}", "timm_version": timm.__version__, "seed": None if weights else req.seed,
              "feature_info": [{"module": str(i["module"]), "channels": int(i["num_chs"]),
                                "reduction": int(i["reduction"])} for i in info_list]})


# --------------------------------------------------------------------------------------------------------------
# Plain state_dicts onto our AlexNet

_ALEXNET_AFFINE = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
_INDEXED = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias)$")
_CAFFE = re.compile(r"^(conv[1-5]|fc[678])\.(weight|bias)$")


def map_alexnet_state_dict(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Rename a plain AlexNet state_dict to our AlexNet's keys (``conv1.conv.weight``, ``fc6.fc.bias``, ...).

    Accepted layouts (one per file):

    * ours: ``convN.conv.*``, ``convN.bn.*``, ``fcN.fc.*``, ``fcN.bn.*`` (kept as they are);
    * Caffe-style: ``conv1.weight`` ... ``conv5.bias``, ``fc6.weight`` ... ``fc8.bias``;
    * torchvision-style: ``features.N.*`` and ``classifier.N.*``. Only the positions of the affine layers matter:
      the i-th weighted module of ``features`` (by index N) is conv i, the i-th of ``classifier`` is fc(5 + i).

    fc8 (the pre-training task's classifier: 313 colours or 1000 classes) is not part of an encoder and is
    dropped; fc6 given as a 6x6 convolution kernel is flattened to the Linear form. Any other key is an error that
    names it.
    """
    keys = list(state)
    if any(k.startswith(("conv1.conv.", "conv1.bn.")) for k in keys):
        return {k: v for k, v in state.items() if not k.startswith("fc8.")}
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    indexed: dict[str, dict[int, dict[str, torch.Tensor]]] = {"features": {}, "classifier": {}}
    for k in keys:
        if m := _CAFFE.match(k):
            layer, kind = m.groups()
            out[f"{layer}.{'conv' if layer.startswith('conv') else 'fc'}.{kind}"] = state[k]
        elif m := _INDEXED.match(k):
            part, idx, kind = m.groups()
            indexed[part].setdefault(int(idx), {})[kind] = state[k]
        else:
            unmapped.append(k)
    convs = [indexed["features"][i] for i in sorted(indexed["features"])]
    fcs = [indexed["classifier"][i] for i in sorted(indexed["classifier"])]
    if len(convs) > 5 or len(fcs) > 3:
        raise UserError(f"{where}: torchvision-style keys hold {len(convs)} convolutions and {len(fcs)} linear "
                        f"layers; an AlexNet has 5 and 3")
    for name, params in [*zip(_ALEXNET_AFFINE[:5], convs), *zip(_ALEXNET_AFFINE[5:], fcs)]:
        for kind, value in params.items():
            out[f"{name}.{'conv' if name.startswith('conv') else 'fc'}.{kind}"] = value
    if unmapped:
        raise UserError(f"{where}: cannot map key(s) {unmapped[:6]} onto AlexNet (expected conv1.weight ... "
                        f"fc8.bias, features.N.* / classifier.N.*, or xchannel's conv1.conv.weight ...)")
    return {k: v for k, v in out.items() if not k.startswith("fc8.")}


def _alexnet_from_state_dict(state: Mapping[str, torch.Tensor], req: EncoderRequest, where: str) -> nn.Module:
    from xchannel.models import AlexNet

    mapped = map_alexnet_state_dict(state, where)
    w1 = mapped.get("conv1.conv.weight")
    if w1 is None or w1.ndim != 4:
        raise UserError(f"{where}: no conv1 weight (N x C x 11 x 11) found")
    if w1.shape[0] == 64 and w1.shape[1] == 3:
        raise UserError(f"{where}: conv1 has 64 filters: torchvision's one-tower AlexNet, not CaffeNet; load it with "
                        f"torchvision-alexnet:{where}")
    if w1.shape[1] not in (1, 3):
        raise UserError(f"{where}: conv1 takes {w1.shape[1]} channels; our AlexNet takes L (1) or Lab (3)")
    width = w1.shape[0] / 96.0
    batchnorm = any(".bn." in k for k in mapped)
    model = AlexNet(in_channels=int(w1.shape[1]), width=width, geometry="transfer", batchnorm=batchnorm, seed=0)
    target = model.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    for k, v in mapped.items():
        if k in target and v.shape != target[k].shape and v.numel() == target[k].numel() and k.startswith("fc"):
            v = v.reshape(target[k].shape)  # fc6/fc7 stored as convolutions
        fixed[k] = v
    for k in target:  # fc8 and BatchNorm counters keep the fresh model's values
        if k.startswith("fc8.") or k.endswith("num_batches_tracked"):
            fixed.setdefault(k, target[k])
    _load_strict(model, fixed, where, f"an AlexNet (CaffeNet grouping, width {width:g}, "
                                      f"in_channels {int(w1.shape[1])}, batchnorm {batchnorm})")
    return model


#: ARCH of ``state_dict:PATH[:ARCH]`` -> builder ``(state, request, where) -> model``.
STATE_DICT_ARCHS: dict[str, Callable[[Mapping[str, torch.Tensor], EncoderRequest, str], nn.Module]] = {
    "alexnet": _alexnet_from_state_dict,
}


def _build_state_dict(req: EncoderRequest) -> Encoder:
    path, arch = req.arg, "alexnet"
    head, sep, tail = req.arg.rpartition(":")
    if sep and tail in STATE_DICT_ARCHS:
        path, arch = head, tail
    elif sep and not Path(req.arg).exists() and Path(head).exists():
        raise UserError(f"encoder {req.spec!r}: unknown architecture {tail!r}; known: "
                        f"{', '.join(STATE_DICT_ARCHS)}")
    if not path:
        raise UserError(f"encoder {req.spec!r}: give the weight file, state_dict:PATH[:ARCH]")
    state = _unwrap_state_dict(safe_torch_load(path), path)
    model = STATE_DICT_ARCHS[arch](state, req, path)
    model, mode = _adapt_alexnet(model, req.input_mode, req.geometry, path)
    return _alexnet_encoder(req, model, name=Path(path).stem + ("" if mode == "gray" else f" ({mode})"),
                            input_mode=mode, weights_path=path,
                            info={"arch": arch, "hparams": dict(model.hparams), "geometry": model.geometry})


# --------------------------------------------------------------------------------------------------------------
# The registry and the entry point

#: spec kind -> builder. ``checkpoint`` is also used for a spec that is an existing path.
ENCODERS: dict[str, Callable[[EncoderRequest], Encoder]] = OrderedDict(
    checkpoint=_build_checkpoint,
    gaussian=_build_gaussian,
    kmeans=_build_kmeans,
    **{"torchvision-alexnet": _build_torchvision_alexnet},
    timm=_build_timm,
    state_dict=_build_state_dict,
)

SPEC_HELP = ("PATH (xchannel checkpoint or run folder), gaussian[:width=W], kmeans[:width=W], "
             "torchvision-alexnet:PATH, timm:NAME[:PATH], state_dict:PATH[:ARCH]")


def parse_spec(spec: str) -> tuple[str, str]:
    """``spec`` -> (kind, argument). An existing path is a checkpoint; otherwise ``kind[:argument]``."""
    spec = str(spec).strip()
    if not spec:
        raise UserError(f"empty encoder spec; give one of: {SPEC_HELP}")
    if Path(spec).exists():
        return "checkpoint", spec
    kind, _, arg = spec.partition(":")
    if kind in ENCODERS:
        return kind, arg
    looks_like_path = os.sep in spec or spec.endswith((".pt", ".pth", ".ckpt", ".bin"))
    why = "no such file" if looks_like_path else f"unknown encoder kind {kind!r}"
    raise UserError(f"encoder {spec!r}: {why}; give one of: {SPEC_HELP}")


def load_encoder(spec: str, input_mode: str | None = None, geometry: str = "transfer", seed: int = 0,
                 init_data: InitData = None) -> Encoder:
    """The :class:`Encoder` described by ``spec`` (see the module docstring for every kind), in eval mode.

    Parameters stay trainable (fine-tuning benchmarks train ``backbone``); probes call :meth:`Encoder.freeze`.

    Args:
        spec: what to load (a checkpoint path, ``gaussian``, ``kmeans``, ``torchvision-alexnet:PATH``,
            ``timm:NAME[:PATH]``, ``state_dict:PATH[:ARCH]``).
        input_mode: ``"gray"`` (L), ``"color"`` (Lab) or ``"rgb"``; None takes the network's native input
            (the checkpoint's channels; gray for the random AlexNets; rgb for torchvision/timm networks).
        geometry: AlexNet geometry, ``"transfer"`` (227 px CaffeNet, the benchmarks) or ``"pretext"``.
        seed: seed of random initialisations (Gaussian, k-means, timm without weights).
        init_data: images for the k-means initialisation (see :data:`InitData`).
    """
    from xchannel.models.alexnet import GEOMETRIES

    if input_mode is not None and input_mode not in INPUT_MODES:
        raise UserError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
    if geometry not in GEOMETRIES:
        raise UserError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    kind, arg = parse_spec(spec)
    req = EncoderRequest(spec=str(spec), kind=kind, arg=arg, input_mode=input_mode, geometry=geometry,
                         seed=int(seed), init_data=init_data)
    return ENCODERS[kind](req).eval()


__all__ = ["ENCODERS", "Encoder", "EncoderRequest", "INPUT_MODES", "LabAlexNetEncoder", "NormalizedRGBEncoder",
           "STATE_DICT_ARCHS", "TimmEncoder", "TorchvisionAlexNetEncoder", "TrunkCut", "gray_as_rgb", "load_encoder",
           "map_alexnet_state_dict", "parse_spec"]
