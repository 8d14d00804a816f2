"""Encoder preparation for the PASCAL tasks (:func:`prepare_encoder`).

1. :func:`xchannel.features.load_encoder` builds the encoder of the spec (any spec ``xchannel-probe`` accepts) in
   the requested input mode: ``gray`` (L), ``color`` (Lab; for a gray-trained network conv1 gets ab weights
   initialised to zero, the paper's "Ours (color)") or ``rgb``. A ``kmeans`` spec is initialised with
   Krähenbühl et al.'s k-means scheme on training images of the task (the k-means rows of Table 2).
2. :func:`~xchannel.pascal.encoder_cut.build_trunk` cuts it into a :class:`~xchannel.pascal.trunk.Trunk`. Our
   AlexNet's BatchNorm is folded into the layers (:func:`xchannel.convert.fold_batchnorm`, exact in eval mode):
   the paper's PASCAL nets are plain CaffeNets, and the rescaling below is defined for networks without it.
3. :func:`rescale_trunk` applies the data-dependent between-layer rescaling of Krähenbühl, Doersch, Donahue,
   Darrell (ICLR 2016; the paper's ref. [36]): Sec. 3.2, "We use the method from [36], which rescales the layers
   so they 'learn' at the same rate" (:func:`xchannel.models.init.rescale_`). The Gaussian baseline first gets
   their within-layer initialisation (``rescale.within_layer``, :func:`xchannel.models.init.normalise_layers_`),
   without which its activations vanish (fc7 ~1e-7) and it cannot learn. For the color variant of a gray
   network (conv1's ab weights exactly zero) the gray network is rescaled, so that "Ours (color)" starts from the
   same rescaled weights as "Ours (gray)".
4. With ``ab_branch`` (color input only) conv1 is split into the L convolution and a separate, bias-free ab
   convolution (:class:`~xchannel.pascal.trunk.SplitInputConv`), as in the authors' color-input segmentation
   nets: it computes the same function as the single Lab convolution but its parameters form their own group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from xchannel.errors import UserError
from xchannel.features.encoders import Encoder, load_encoder, parse_spec
from xchannel.pascal.config import INPUT_MODES, RescaleConfig
from xchannel.pascal.encoder_cut import build_trunk
from xchannel.pascal.trunk import SplitInputConv, Trunk


def dataset_name(voc_root: str | Path) -> str:
    """``"embedded"`` for a VOCdevkit written by :func:`xchannel.data.synthetic.make_dataset` (its
    ``manifest.json`` sits next to ``VOCdevkit``), else ``"PASCAL VOC"``. Table 2 labels our rows with it."""
    root = Path(voc_root)
    for cand in (root, root.parent, root.parent.parent):
        manifest = cand / "manifest.json"
        if manifest.is_file():
            try:
                gen = json.loads(manifest.read_text()).get("generator", "")
            except (OSError, ValueError):
                continue
            if str(gen).startswith("xchannel.data.synthetic"):
                return "embedded"
    return "PASCAL VOC"


def load_init_images(voc_root: str | Path, year: str | int, split: str, count: int, size: int,
                     seed: int = 0, image_set: str = "Main",
                     files: Sequence[tuple[str, Path]] | None = None) -> tuple[torch.Tensor, dict]:
    """``count`` images of ``ImageSets/<image_set>/<split>.txt`` (a seeded random choice), each resized so that its
    shorter side is ``size`` and center-cropped to ``size`` x ``size``: float RGB in [0, 1], N x 3 x size x size.

    The data of the rescaling and of the k-means initialisation. Unreadable images are skipped and counted.
    Returns the batch and ``{"split", "requested", "used", "ids", "skipped"}``.
    """
    from xchannel.data.images import BadImageError, ResizeCenterCrop, SkipCounter, load_rgb
    from xchannel.data.voc import read_image_set, resolve_root

    if files is None:
        ids = read_image_set(voc_root, year, split, image_set)
        if not ids:
            raise UserError(f"{resolve_root(voc_root, year) / 'ImageSets' / image_set / f'{split}.txt'}: no images")
        folder = resolve_root(voc_root, year) / "JPEGImages"
        paths = [folder / f"{i}.jpg" for i in ids]
        name = f"VOC{year} {image_set}/{split}"
    else:  # the task's own training images (e.g. SBD's), named by ``split``
        ids, paths, name = [i for i, _ in files], [Path(f) for _, f in files], split
        folder = paths[0].parent if paths else Path(voc_root)
    if not ids:
        raise UserError(f"{folder}: no images for the rescaling")
    order = np.random.default_rng([seed, 7]).permutation(len(ids))
    transform = ResizeCenterCrop(size, resize=size, dtype=torch.float32)
    counter = SkipCounter()
    images, used = [], []
    for i in order:
        if len(images) == count:
            break
        try:
            images.append(transform(load_rgb(paths[i], upright=False)))  # stored pixels, as the tasks read them
            used.append(ids[i])
        except BadImageError as err:
            counter.add(err.path, err.reason)
    if not images:
        raise UserError(f"{folder}: none of the {split} images could be read")
    return torch.stack(images), {"split": name, "requested": count, "used": len(images),
                                 "ids": used, **counter.summary()}


def add_ab_branch(trunk: Trunk) -> None:
    """Split conv1 of a Lab AlexNet trunk into an L convolution and a separate ab branch (:class:`SplitInputConv`).
    The function is unchanged; the ab branch becomes the ``conv1_ab`` group."""
    if trunk.kind != "alexnet":
        raise UserError("the separate ab branch applies to xchannel AlexNets with color (Lab) input")
    conv1 = trunk.conv.conv1
    if not isinstance(conv1.conv, nn.Conv2d) or conv1.conv.in_channels != 3:
        raise UserError("the separate ab branch needs color (Lab) input: use input_mode=color")
    conv1.conv = SplitInputConv(conv1.conv)


def _ab_weights_zero(trunk: Trunk) -> bool:
    conv = trunk.input_conv()
    return isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and bool((conv.weight[:, 1:] == 0).all())


def within_layer_applies(spec_kind: str, cfg: RescaleConfig) -> bool:
    """Whether :func:`rescale_trunk` runs the within-layer initialisation for an encoder of kind ``spec_kind``
    (the part of the spec before ``:``): ``always``; or ``auto`` and a Gaussian random initialisation (k-means
    normalises its layers itself; a trained network's scales are part of what it learned)."""
    return cfg.within_layer == "always" or (cfg.within_layer == "auto" and spec_kind == "gaussian")


def rescale_trunk(trunk: Trunk, x: torch.Tensor, cfg: RescaleConfig, within_layer: bool = False) -> dict:
    """Krähenbühl et al.'s data-dependent rescaling of the trunk's affine layers (conv1 ... fc7), in place, on the
    prepared input ``x``.

    1. With ``within_layer``, their within-layer initialisation (:func:`xchannel.models.init.normalise_layers_`):
       layer by layer, every output channel's pre-activation gets mean 0 and variance 1 on ``x``.
    2. Their between-layer scale adjustment (:func:`xchannel.models.init.rescale_`): the rate of layer k,
       C_k = E[||grad W_k||^2] / ||W_k||^2 for the loss eta . fc7(x) with a fixed random direction eta, is made
       equal for all layers; fc7's output is unchanged.

    For a Lab conv1 whose ab weights are all zero (a gray network given color input) the L-only network is
    rescaled, on the L channel of ``x``, and the ab weights stay zero: the color variant starts from exactly the
    rescaled gray network. Returns the report of ``rescale_`` plus ``{"on": "gray network" | "as loaded"}`` and,
    with ``within_layer``, ``"within_layer"`` (the median channel std of each layer's output before it was
    normalised).
    """
    from xchannel.models.init import normalise_layers_, rescale_

    if trunk.kind not in ("alexnet", "torchvision_alexnet"):
        raise UserError("the data-dependent rescaling applies to AlexNet-family encoders without BatchNorm "
                        "(xchannel AlexNets, gaussian, kmeans, torchvision-alexnet); for this encoder use --no-rescale "
                        "(rescale.enabled=false)")

    def adjust(model: nn.Module, data: torch.Tensor) -> dict:
        within = normalise_layers_(model, data) if within_layer else None
        report = rescale_(model, data, iters=cfg.iterations, alpha=cfg.alpha, tol=cfg.tol, seed=cfg.seed)
        if within is not None:
            report["within_layer"] = {"method": "Krähenbühl et al. 2016, within-layer initialisation (mean 0, "
                                                "variance 1 per channel)", "std_before": within["std_before"]}
        return report

    conv1 = trunk.conv.conv1 if trunk.kind == "alexnet" else None
    if conv1 is not None and _ab_weights_zero(trunk):
        lab = conv1.conv
        gray = nn.Conv2d(1, lab.out_channels, lab.kernel_size, stride=lab.stride, padding=lab.padding,
                         groups=lab.groups).to(lab.weight.device, lab.weight.dtype)
        with torch.no_grad():
            gray.weight.copy_(lab.weight[:, :1])
            gray.bias.copy_(lab.bias)
        conv1.conv = gray
        normalize = trunk._normalize
        trunk._normalize = lambda t: normalize(t)[:, :1]  # the gray network sees the normalised L channel
        try:
            report = adjust(trunk, x)
        finally:
            conv1.conv = lab
            trunk._normalize = normalize
        with torch.no_grad():
            lab.weight[:, :1].copy_(gray.weight)
            lab.bias.copy_(gray.bias)
        report["on"] = "gray network (conv1's ab weights are zero and stay zero)"
    else:
        report = adjust(trunk, x)
        report["on"] = "as loaded"
    return report


@dataclass
class PreparedEncoder:
    """What :func:`prepare_encoder` returns: the encoder (for ``prepare`` and identity), its trunk, and the
    record of what was done to it (``encoder`` in the result JSON)."""

    encoder: Encoder
    trunk: Trunk
    record: dict[str, Any] = field(default_factory=dict)


def prepare_encoder(spec: str, input_mode: str | None, *, voc_root: str | Path, year: str | int, split: str,
                    rescale: RescaleConfig, seed: int = 0, ab_branch: bool = False, dropout: float = 0.5,
                    device: torch.device | str = "cpu", image_set: str = "Main",
                    files: Sequence[tuple[str, Path]] | None = None) -> PreparedEncoder:
    """Load, cut, (k-means initialise,) rescale and (ab-branch) an encoder for fine-tuning (module docstring).

    ``voc_root``/``year``/``image_set``/``split`` name the training images used for the k-means initialisation
    and the rescaling (``rescale.images`` of them, center crops at the trunk's input size); ``files`` ((id, path)
    pairs, e.g. SBD's training images) replaces that image set, ``split`` then names it.
    """
    if input_mode is not None and input_mode not in INPUT_MODES:
        raise UserError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
    if ab_branch and input_mode != "color":
        raise UserError("ab_branch=true needs input_mode=color (the ab branch sees the ab channels)")
    rescale.validate()
    kind, _ = parse_spec(spec)
    cache: dict[int, tuple[torch.Tensor, dict]] = {}

    def images(size: int) -> tuple[torch.Tensor, dict]:
        if size not in cache:
            cache[size] = load_init_images(voc_root, year, split, rescale.images, size, seed=rescale.seed,
                                           image_set=image_set, files=files)
        return cache[size]

    init_info = None
    if kind == "kmeans":
        from xchannel.models.alexnet import TRANSFER_INPUT

        x0, init_info = images(TRANSFER_INPUT)
        encoder = load_encoder(spec, input_mode=input_mode, geometry="transfer", seed=seed, init_data=x0)
    else:
        encoder = load_encoder(spec, input_mode=input_mode, geometry="transfer", seed=seed)
    record = encoder.describe()
    steps: list[dict[str, Any]] = []
    if init_info is not None:
        steps.append({"step": "kmeans_init", "images": {k: v for k, v in init_info.items() if k != "ids"}})
    trunk = build_trunk(encoder, dropout=dropout)
    if trunk.kind == "alexnet" and record.get("hparams", {}).get("batchnorm"):
        steps.append({"step": "fold_batchnorm"})
    trunk = trunk.to(device)
    if rescale.enabled:
        x, info = images(trunk.crop)
        with torch.no_grad():
            prepared = encoder.prepare(x.to(device))
        within = within_layer_applies(kind, rescale)
        report = rescale_trunk(trunk, prepared, rescale, within_layer=within)
        method = "Krähenbühl et al. 2016, " + ("within-layer initialisation, then " if within else "")
        steps.append({"step": "rescale", "method": method + "between-layer scale adjustment",
                      **report, "images": {k: v for k, v in info.items() if k != "ids"}})
    if ab_branch:
        add_ab_branch(trunk)
        steps.append({"step": "ab_branch", "note": "conv1 split into L and a separate bias-free ab branch"})
    record["preparation"] = steps
    record["trunk"] = {"kind": trunk.kind, "crop": trunk.crop, "groups": list(trunk.groups()),
                       "conv_dim": trunk.conv_dim, "fc_dim": trunk.fc_dim}
    return PreparedEncoder(encoder=encoder.to(device), trunk=trunk, record=record)


__all__ = ["PreparedEncoder", "add_ab_branch", "dataset_name", "load_init_images", "prepare_encoder", "rescale_trunk",
           "within_layer_applies"]
