"""The networks, by name.

Every model takes Lab in natural units (L in [0, 100], ab in [-110, 110]) and exposes

* ``forward(x) -> logits`` of its classifier: the Q = 313 ab bins for the colorizers, N x 313 x h x w (an AlexNet's
  ``fc8_outputs`` sets it for other pretext tasks; 0 leaves the backbone conv1 ... fc7 alone);
* ``predict_ab(x, T=0.38)`` -> N x 2 x H x W annealed-mean ab at the input resolution (Sec. 2.3);
* ``features(x, layers) -> dict[name, tensor]`` and ``layer_names`` (the feature taps), stopping after the
  deepest requested layer;
* ``hparams``: the constructor arguments that rebuild it (``build_model(name, **hparams)``).

A new backbone is one module plus one entry in :data:`MODELS`. Training checkpoints also hold a ``backbone`` entry
(the network without its task head, :func:`backbone_from_entry`), which is what the benchmarks read.

Checkpoints of a bare model are ``{"model": name, "hparams": {...}, "state_dict": {...}}``
(:func:`model_checkpoint`, :func:`model_from_checkpoint`); trainers may add keys of their own.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from xchannel.errors import UserError
from xchannel.models.alexnet import AlexNet, to_color_input
from xchannel.models.vgg_colorizer import VGGColorizer

MODELS: dict[str, type[nn.Module]] = {
    "vgg_colorizer": VGGColorizer,
    "alexnet": AlexNet,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the registered model ``name`` with constructor arguments ``kwargs``.

    An unknown name or argument is a :class:`UserError` that lists the valid ones.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise UserError(f"model {name!r}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                        f"its arguments: {', '.join(params)}")
    return cls(**kwargs)


def model_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """A self-describing checkpoint of ``model`` (save it with :func:`xchannel.utils.io.atomic_torch_save`)."""
    name = getattr(model, "registry_name", None)
    if name not in MODELS:
        raise ValueError(f"{type(model).__name__} is not a registered model")
    return {"model": name, "hparams": dict(model.hparams), "state_dict": model.state_dict(), **extra}


def model_from_checkpoint(ckpt: Any, where: str = "checkpoint") -> nn.Module:
    """Rebuild a model from :func:`model_checkpoint`'s dict (e.g. loaded with ``safe_torch_load``).

    ``where`` (usually the file name) prefixes every error message.
    """
    if not isinstance(ckpt, dict) or not {"model", "hparams", "state_dict"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{where}: not a model checkpoint (needs keys 'model', 'hparams', 'state_dict'; has {keys})")
    try:
        model = build_model(ckpt["model"], **ckpt["hparams"])
    except UserError as err:
        raise UserError(f"{where}: {err}") from err
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"{where}: weights do not match a {ckpt['model']} with {ckpt['hparams']}: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{where}: weights do not match a {ckpt['model']} with {ckpt['hparams']}: "
                        f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model


def backbone_from_entry(entry: Any, where: str = "checkpoint") -> nn.Module:
    """Rebuild the backbone of a training checkpoint's ``backbone`` entry (``{"arch", "hparams", "input_space",
    "state_dict"}``, see :func:`xchannel.pretext.base.export_entries`): the network without its task head."""
    if not isinstance(entry, dict) or not {"arch", "hparams", "state_dict"} <= set(entry):
        raise UserError(f"{where}: a 'backbone' entry needs keys 'arch', 'hparams', 'state_dict'")
    return model_from_checkpoint({"model": entry["arch"], "hparams": entry["hparams"],
                                  "state_dict": entry["state_dict"]}, where)


__all__ = ["MODELS", "AlexNet", "VGGColorizer", "backbone_from_entry", "build_model", "model_checkpoint", "model_from_checkpoint",
           "to_color_input"]
