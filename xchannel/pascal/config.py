"""The configuration the PASCAL tasks share and the one preset mechanism.

:class:`FinetuneConfig` holds what every fine-tuning run has (encoder, input mode, data, rescaling, solver,
device, output); each task's ``Config`` subclasses it and adds only its own fields. :class:`CaffeSolver` is the
one solver description of the three tasks (Caffe's ``solver.prototxt`` fields and the parameter multipliers);
each task sets its reference defaults. A task's ``PRESETS`` maps a name to ``key=value`` overrides of its
defaults (``paper``: the published protocol, the defaults; ``demo``: the embedded data set in minutes);
:func:`preset_config` and :func:`config_from_args` apply them, under ``--config``, the flags and ``--set``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from xchannel.errors import UserError
from xchannel.metrics.uncertainty import BootstrapConfig
from xchannel.utils.config import add_config_arguments, build_config, from_dict, merge, to_dict

T = TypeVar("T")

INPUT_MODES = ("gray", "color", "rgb")


# --------------------------------------------------------------------------------------------------------------
# Configuration pieces shared by the tasks


#: ``rescale.within_layer`` values: ``auto`` normalises the layers of randomly initialised encoders whose
#: initialisation does not (the ``gaussian`` spec); ``always`` / ``never`` force it on / off.
WITHIN_LAYER = ("auto", "always", "never")


@dataclass
class RescaleConfig:
    """Krähenbühl et al.'s data-dependent rescaling before fine-tuning (the paper's Table 2 numbers use it).

    ``images`` training images (one center crop each at the trunk's input size) are the data of the rescaling
    and, for a ``kmeans`` encoder, of its k-means initialisation. ``iterations``, ``alpha`` and ``tol`` are those
    of the between-layer scale adjustment :func:`xchannel.models.init.rescale_` (with ``alpha = 1`` one step
    equalises an exactly homogeneous net). ``within_layer`` (one of :data:`WITHIN_LAYER`) first applies their
    within-layer initialisation (:func:`xchannel.models.init.normalise_layers_`: every channel's pre-activation
    to mean 0, variance 1 on the images), which the random Gaussian baseline needs: the between-layer step alone
    keeps the network's output scale, ~1e-7 for Gaussian weights through seven layers. ``enabled=false`` skips
    both steps.
    """

    enabled: bool = True
    images: int = 64
    iterations: int = 10
    alpha: float = 1.0
    tol: float = 0.01
    seed: int = 0
    within_layer: Literal["auto", "always", "never"] = "auto"

    def validate(self, where: str = "rescale") -> None:
        if self.within_layer not in WITHIN_LAYER:
            raise UserError(f"{where}.within_layer must be one of {', '.join(WITHIN_LAYER)} "
                            f"(got {self.within_layer!r})")
        if self.images < 1:
            raise UserError(f"{where}.images must be >= 1 (got {self.images})")
        if self.iterations < 0:
            raise UserError(f"{where}.iterations must be >= 0 (got {self.iterations})")
        if not 0 < self.alpha <= 1:
            raise UserError(f"{where}.alpha must be in (0, 1] (got {self.alpha})")


@dataclass
class CaffeSolver:
    """SGD as Caffe's solver runs it: ``lr * lr_gamma ** floor(it / lr_step)`` (``lr_step <= 0``: fixed), momentum,
    weight decay, ``iterations`` updates of ``batch_size`` x ``iter_size`` images (gradients accumulated over
    ``iter_size`` forward passes), gradients clipped to a global L2 norm of ``clip_gradients`` (0: none).
    Multipliers, as ``param { lr_mult decay_mult }``: every trained layer at lr x 1 and decay x 1; its biases at
    lr x ``bias_lr_mult`` and decay x ``bias_decay_mult``; a separate conv1 ab branch at lr x ``ab_lr_mult``."""

    iterations: int = 1
    batch_size: int = 1
    iter_size: int = 1
    lr: float = 1e-3
    lr_step: int = 0
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0
    clip_gradients: float = 0.0
    ab_lr_mult: float = 1.0

    def problems(self) -> list[str]:
        out = []
        if self.iterations < 0 or self.batch_size < 1 or self.iter_size < 1:
            out.append(f"optim.iterations must be >= 0, optim.batch_size and optim.iter_size >= 1 (got "
                       f"{self.iterations}, {self.batch_size}, {self.iter_size})")
        if not self.lr > 0:
            out.append(f"optim.lr must be > 0 (got {self.lr})")
        return out

    def describe(self) -> dict[str, Any]:
        """The solver as a result records it."""
        policy = "fixed" if self.lr_step <= 0 else f"step: x{self.lr_gamma} every {self.lr_step} iterations"
        return {"type": "SGD", "momentum": self.momentum, "base_lr": self.lr, "lr_policy": policy,
                "iterations": self.iterations, "images_per_update": self.batch_size * self.iter_size,
                "weight_decay": self.weight_decay, "clip_gradients": self.clip_gradients,
                "multipliers": {"weights": "lr x1, decay x1", "biases": f"lr x{self.bias_lr_mult:g}, decay "
                                f"x{self.bias_decay_mult:g}", "conv1_ab": f"lr x{self.ab_lr_mult:g}"}}


@dataclass
class FinetuneConfig:
    """What every PASCAL fine-tuning run has (saved in its result JSON). ``voc``: the VOCdevkit folder (or its
    parent); ``ab_branch``: color input with conv1's ab weights as a separate group; ``dropout``: CaffeNet's drop6
    and drop7; ``workers``: data-loading processes; ``bootstrap``: the resamples and seed of the 95 % intervals
    over test images (:mod:`xchannel.metrics.uncertainty`); ``out``: the result JSON (default
    ``results/pascal/<task>_<encoder>_<input mode>.json``)."""

    encoder: str = ""
    input_mode: Literal["gray", "color", "rgb"] | None = None
    ab_branch: bool = False
    voc: str = ""
    dropout: float = 0.5
    rescale: RescaleConfig = field(default_factory=RescaleConfig)
    optim: CaffeSolver = field(default_factory=CaffeSolver)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)  # the intervals over test images
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where native, else fp32 (xchannel.runtime)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    out: str = ""
    save_model: bool = False
    log_every: int = 200
    progress: bool = True

    def check(self, task: str, extra: Sequence[str] = ()) -> None:
        """Raise one :class:`UserError` listing every problem of the shared fields and ``extra``."""
        problems = []
        if not self.encoder:
            problems.append("encoder is not set")
        if not self.voc:
            problems.append("voc is not set: give the VOCdevkit folder (--voc)")
        problems += self.optim.problems()
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.workers < 0:
            problems.append(f"workers must be >= 0 (got {self.workers})")
        problems += list(extra)
        if problems:
            raise UserError(f"{task} config: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Presets and the command line


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments every ``xchannel pascal TASK`` takes; flags override the ``--config`` YAML, ``--set`` overrides
    everything."""
    from xchannel.features.encoders import SPEC_HELP

    p.add_argument("encoder", nargs="?", help=f"encoder spec: {SPEC_HELP}")
    p.add_argument("--voc", help="VOCdevkit folder (or its parent)")
    p.add_argument("--input-mode", choices=list(INPUT_MODES),
                   help="gray (L), color (Lab; a gray network gets zero-initialised ab weights) or rgb "
                        "(default: the encoder's own)")
    p.add_argument("--iterations", type=int, help="training iterations")
    p.add_argument("--no-rescale", action="store_true", help="skip the data-dependent rescaling")
    p.add_argument("--within-layer", choices=list(WITHIN_LAYER),
                   help="before the rescaling, normalise every channel to mean 0, variance 1 (Krähenbühl et al.'s "
                        "within-layer initialisation); auto (default): for the gaussian spec only")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", "-o", help="result JSON (default results/pascal/<task>_<encoder>_<mode>.json)")
    add_config_arguments(p, "task Config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def add_preset_argument(p: argparse.ArgumentParser, presets: Mapping[str, Sequence[str]]) -> None:
    """``--preset NAME``: a named configuration (``paper``: the published protocol; ``demo``: the embedded data
    set in minutes), applied under ``--config``, the flags and ``--set``."""
    p.add_argument("--preset", choices=sorted(presets), default="paper",
                   help="paper (default): the published protocol; demo: small scales and few iterations for the "
                        "embedded data set")


def preset_config(cls: type[T], presets: Mapping[str, Sequence[str]], name: str, overrides: Sequence[str] = (),
                  **fields: Any) -> T:
    """Config ``cls`` of preset ``name`` (a list of ``key=value`` overrides of the defaults), then ``overrides``,
    then top-level ``fields`` (e.g. ``voc=..., encoder=..., out=...``)."""
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    cfg = build_config(cls, None, list(overrides), base=build_config(cls, None, list(presets[name])))
    data = to_dict(cfg)
    for key, value in fields.items():
        if key not in data:
            raise UserError(f"{cls.__module__}.{cls.__name__} has no field {key!r}")
        data[key] = value
    return from_dict(cls, data)


def config_from_args(cls: type[T], args: argparse.Namespace, flags: Mapping[str, str],
                     presets: Mapping[str, Sequence[str]]) -> T:
    """Defaults <- the preset ``args.preset`` of ``presets`` (default ``paper``) <- ``--config`` YAML <- flags
    (``flags`` maps argparse attribute -> dotted config key; flags left unset are ignored) <- ``--set``
    overrides. The common flags map onto ``encoder``, ``voc``, ``input_mode``, ``optim.iterations``,
    ``rescale.enabled``, ``rescale.within_layer``, ``seed``, ``device``, ``out`` and ``progress``."""
    name = getattr(args, "preset", None) or "paper"
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    common = {"encoder": "encoder", "voc": "voc", "input_mode": "input_mode", "iterations": "optim.iterations",
              "within_layer": "rescale.within_layer", "seed": "seed", "device": "device", "out": "out"}
    base = build_config(cls, None, list(presets[name]))
    data = to_dict(build_config(cls, getattr(args, "config", None), base=base))
    for attr, key in {**common, **flags}.items():
        value = getattr(args, attr, None)
        if value is not None:
            data = merge(data, _nest(key, value))
    if getattr(args, "no_rescale", False):
        data = merge(data, _nest("rescale.enabled", False))
    if getattr(args, "no_progress", False):
        data = merge(data, {"progress": False})
    cfg = from_dict(cls, data)
    return build_config(cls, None, getattr(args, "overrides", []) or [], base=cfg)


def add_clip_boxes_argument(p: argparse.ArgumentParser) -> None:
    """``--clip-boxes`` of the tasks that train on VOC annotations (classification, detection)."""
    p.add_argument("--clip-boxes", action="store_true", default=None,
                   help="clip ground-truth boxes that start at 0 or reach past the image (as annotation tools "
                        "write them) to the image instead of stopping with an error naming the file")


__all__ = ["CaffeSolver", "FinetuneConfig", "INPUT_MODES", "RescaleConfig", "WITHIN_LAYER", "add_clip_boxes_argument",
           "add_common_arguments", "add_preset_argument", "config_from_args", "preset_config"]
