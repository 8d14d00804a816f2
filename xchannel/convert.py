"""Weight conversions: the authors' released colorizer, and AlexNet checkpoints between geometries.

Released ECCV16 colorizer
-------------------------
The authors' PyTorch release (``colorization_release_v2-9b330a0b.pth``, a converted copy of their Caffe model) is
a state_dict of an ``nn.Sequential`` per block: ``model1.0`` conv, ``model1.1`` ReLU, ``model1.2`` conv,
``model1.3`` ReLU, ``model1.4`` BatchNorm, ..., ``model3.0/.2/.4`` convs and ``model3.6`` BatchNorm, ...,
``model8.0`` the transposed conv, ``model8.2`` and ``model8.4`` convs, ``model8.6`` the 313-way 1x1 conv, and
``model_out`` a 1x1 conv 313 -> 2 without bias. Its forward pass is::

    ab = 110 * upsample4(model_out(softmax(model8(...model1((L - 50) / 100)))))

with bilinear ``Upsample(scale_factor=4)`` (``align_corners=False``). :class:`~xchannel.models.VGGColorizer`
stores the same blocks under ``block1`` ... ``block8`` (same indices) and ``classifier``.

The annealing temperature (Sec. 2.3) is folded into the released weights: the Caffe deploy net multiplies the
313 logits by 2.606 (layer ``conv8_313_rh``, i.e. T = 1 / 2.606 = 0.3837) before its softmax, and the PyTorch
copy has that factor inside ``model8.6``; ``model_out`` holds the bin centres / 110. Our models instead keep raw
logits and decode with ``annealed_mean(T)``. The import keeps the released forward identical by

* multiplying ``model8.6``'s weight and bias by T_FOLDED = 0.38, so that
  ``softmax(logits / 0.38) = softmax(released logits)`` (exactly, up to float rounding), and
* setting the model's ``ab_projection`` buffer (Q x 2) to ``110 * model_out.weight[:, :, 0, 0].T``,

so ``predict_ab(L)`` at its default T = 0.38 (``upsample4(softmax(logits / T) @ ab_projection)``) is the
released output. The imported logits are the Caffe net's pre-scale logits times 0.38 x 2.606 = 0.990: within 1%
of the trained ones, so other temperatures and the loss behave as for a model trained here.
:func:`to_official_eccv16` inverts the mapping.

AlexNet geometries
------------------
The pretext (colorization) and transfer (CaffeNet, 227 px) geometries of :class:`~xchannel.models.AlexNet`
share every weight; only fc6-fc8 change form: the 6x6 dilation-2 convolution fc6 becomes ``Linear(C*36, 4096)``
(the kernel flattened in C, H, W order, as ``nn.Flatten`` lays out pool5), fc7 and fc8 1x1 convolutions become
``Linear`` layers. The dilated kernel over the stride-1 pool5 is the "a trous" form of the undilated kernel over
the stride-2 pool5: on the same conv5 map, pretext fc6 at the centre cell equals transfer fc6. For transfer,
BatchNorm can be folded into the preceding conv / fc layer (:func:`fold_batchnorm`; exact in eval mode).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from xchannel.errors import UserError
from xchannel.models import AlexNet, VGGColorizer, model_checkpoint, model_from_checkpoint
from xchannel.models.alexnet import GEOMETRIES
from xchannel.utils.io import atomic_torch_save, safe_torch_load

T_FOLDED = 0.38
AB_NORM = 110.0
OFFICIAL_ECCV16_FILE = "colorization_release_v2-9b330a0b.pth"
_OPTIONAL = "num_batches_tracked"


# --------------------------------------------------------------------------------------------------------------
# Released ECCV16 colorizer


def _official_name(ours: str) -> str:
    """Our state_dict key -> the release's (``block3.6.weight`` -> ``model3.6.weight``,
    ``classifier.bias`` -> ``model8.6.bias``)."""
    if ours.startswith("classifier."):
        return "model8.6." + ours.split(".", 1)[1]
    return "model" + ours[len("block"):]


def from_official_eccv16(state_dict: Mapping[str, Any], where: str = "state_dict",
                         width: float | None = None) -> VGGColorizer:
    """Build a :class:`VGGColorizer` from the authors' released state_dict (see the module docstring).

    The width is read from ``model1.0.weight`` unless given. Missing, unexpected or mis-shaped keys are a
    :class:`UserError` naming them (prefixed by ``where``, e.g. the file name). The model is returned in eval mode.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{where}: not a state_dict (a mapping of names to tensors)")
    for key in ("model1.0.weight", "model_out.weight"):
        if key not in state_dict:
            raise UserError(f"{where}: no {key!r}: not the released ECCV16 colorizer "
                            f"(keys start with {sorted(state_dict)[:4]})")
    if width is None:
        width = state_dict["model1.0.weight"].shape[0] / 64.0
    model = VGGColorizer(width=width)
    ours = model.state_dict()
    wanted = {_official_name(k): k for k in ours if k != "ab_projection"}
    missing = [k for k in wanted if k not in state_dict and not k.endswith(_OPTIONAL)]
    unexpected = [k for k in state_dict if k not in wanted and k != "model_out.weight"]
    if missing or unexpected:
        raise UserError(f"{where}: does not match the released ECCV16 layout: missing {missing[:6]}, "
                        f"unexpected {unexpected[:6]}")
    new_state: dict[str, torch.Tensor] = {}
    for official, key in wanted.items():
        if official not in state_dict:  # an optional BatchNorm counter
            new_state[key] = ours[key]
            continue
        value = state_dict[official]
        if value.shape != ours[key].shape:
            raise UserError(f"{where}: {official} has shape {tuple(value.shape)}, expected "
                            f"{tuple(ours[key].shape)} for width {width:g}")
        new_state[key] = value.detach().to(ours[key].dtype).clone()
    new_state["classifier.weight"] = new_state["classifier.weight"] * T_FOLDED
    new_state["classifier.bias"] = new_state["classifier.bias"] * T_FOLDED
    proj = state_dict["model_out.weight"]
    if proj.shape != (2, ours["ab_projection"].shape[0], 1, 1):
        raise UserError(f"{where}: model_out.weight has shape {tuple(proj.shape)}, expected (2, 313, 1, 1)")
    new_state["ab_projection"] = proj[:, :, 0, 0].T.to(torch.float32) * AB_NORM
    model.load_state_dict(new_state)
    return model.eval()


def load_official_eccv16(path: str | os.PathLike) -> VGGColorizer:
    """Read the released weight file (``weights_only`` loading) and import it with :func:`from_official_eccv16`."""
    return from_official_eccv16(safe_torch_load(path), where=str(path))


def to_official_eccv16(model: VGGColorizer) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_official_eccv16`: a state_dict in the release's layout whose released forward
    pass equals ``model.predict_ab(L, T=0.38)``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key == "ab_projection":
            continue
        value = value.detach().clone()
        if key.startswith("classifier."):
            value = value / T_FOLDED
        out[_official_name(key)] = value
    out["model_out.weight"] = (model.ab_projection / AB_NORM).T[:, :, None, None].contiguous().clone()
    return out


# --------------------------------------------------------------------------------------------------------------
# AlexNet: BatchNorm folding and geometry conversion

_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def _affine_key(stage: str) -> str:
    return f"{stage}.conv" if stage.startswith("conv") else f"{stage}.fc"


@torch.no_grad()
def fold_batchnorm(model: AlexNet) -> AlexNet:
    """The same network without BatchNorm: each BN (eval-mode statistics) folded into the layer before it.

    y = gamma (W x + b - mu) / sqrt(var + eps) + beta  =>  W' = W g, b' = (b - mu) g + beta, g = gamma / sqrt(var +
    eps), per output channel. Exact in eval mode; the result has ``batchnorm=False`` and is in eval mode.
    """
    if not isinstance(model, AlexNet):
        raise UserError(f"fold_batchnorm: expected an AlexNet, got {type(model).__name__}")
    folded = AlexNet(**{**model.hparams, "batchnorm": False})
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for stage in _LAYERS[: len(_LAYERS) - (0 if model.fc8_outputs else 1)]:
        key = _affine_key(stage)
        w, b = state[f"{key}.weight"], state[f"{key}.bias"]
        bn = getattr(model, stage)._modules.get("bn")
        if model.batchnorm and isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = (w.double() * g.view(-1, *([1] * (w.ndim - 1)))).to(w.dtype)
            b = ((b.double() - bn.running_mean.double()) * g + bn.bias.double()).to(b.dtype)
        new[f"{key}.weight"], new[f"{key}.bias"] = w.clone(), b.clone()
    folded.load_state_dict(new)
    return folded.to(state["conv1.conv.weight"].device).eval()


@torch.no_grad()
def alexnet_to_geometry(model: AlexNet, geometry: str, fold_bn: bool = False,
                        dropout: float | None = None) -> AlexNet:
    """The same weights in the other geometry (``"pretext"`` or ``"transfer"``; see the module docstring).

    fc6's (O, C, 6, 6) kernel <-> (O, C*36) matrix, fc7/fc8 (O, I, 1, 1) <-> (O, I); everything else is copied.
    ``fold_bn`` also folds BatchNorm (:func:`fold_batchnorm`); ``dropout`` overrides the dropout probability.
    The result keeps the source's train/eval mode (eval when folded).
    """
    if not isinstance(model, AlexNet):
        raise UserError(f"alexnet_to_geometry: expected an AlexNet, got {type(model).__name__}")
    if geometry not in GEOMETRIES:
        raise UserError(f"alexnet_to_geometry: geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    hparams = {**model.hparams, "geometry": geometry}
    if dropout is not None:
        hparams["dropout"] = float(dropout)
    target = AlexNet(**hparams)
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    state = {k: v.detach().clone().reshape(shapes[k]) for k, v in model.state_dict().items()}
    target.load_state_dict(state)
    target = target.to(model.conv1.conv.weight.device).train(model.training)
    return fold_batchnorm(target) if fold_bn else target


# --------------------------------------------------------------------------------------------------------------
# File-level conversions


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, geometry: str | None = None,
                       fold_bn: bool = False) -> AlexNet:
    """Read an AlexNet model checkpoint (:func:`xchannel.models.model_checkpoint` format), convert it to
    ``geometry`` and/or fold its BatchNorm, and write the result atomically to ``dst``."""
    model = model_from_checkpoint(safe_torch_load(src), where=str(src))
    if not isinstance(model, AlexNet):
        raise UserError(f"{src}: holds a {model.registry_name}; geometry conversion applies to alexnet checkpoints")
    if geometry is not None:
        model = alexnet_to_geometry(model, geometry)
    if fold_bn:
        model = fold_batchnorm(model)
    atomic_torch_save(model_checkpoint(model), dst)
    return model


def import_official_eccv16(src: str | os.PathLike, dst: str | os.PathLike) -> VGGColorizer:
    """Convert the released ECCV16 weight file into a :func:`~xchannel.models.model_checkpoint` at ``dst``."""
    model = load_official_eccv16(src)
    atomic_torch_save(model_checkpoint(model, source=os.path.basename(str(src))), dst)
    return model
