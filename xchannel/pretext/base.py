"""What every pretext task provides to the training engine, and what its checkpoints tell the benchmarks.

A task (one module of :mod:`xchannel.pretext`, registered in :data:`xchannel.pretext.TASKS`) subclasses
:class:`PretextTask` and supplies:

* ``Config``: a dataclass of its options, read from the ``pretext:`` section of the training config (unknown keys
  are errors that name them);
* :meth:`~PretextTask.build_model`: its network, a registered **backbone** (:mod:`xchannel.models`; e.g. the
  AlexNet trunk conv1 ... fc7 with its input space) plus the task's **heads**;
* :meth:`~PretextTask.prepare`: a collated batch (uint8 RGB ``image``, ``label``, ``has_color``, ``index``) and a
  generator seeded by (seed, step, rank) -> the task's inputs and targets on its device, all randomness from that
  generator (so a resumed run draws what the uninterrupted run drew);
* :meth:`~PretextTask.loss`: a dict of named scalar losses (the engine back-propagates their sum and logs each);
* :meth:`~PretextTask.validate`: the task's held-out metric(s) with the chance level beside them;
* :meth:`~PretextTask.export`: the checkpoint entries the benchmarks read (:func:`export_entries`).

A *stateful* task (one that keeps something besides its network's weights, e.g. a memory bank of image
embeddings) also uses the hooks that default to doing nothing:

* :meth:`~PretextTask.set_training_data`: the training set's size and labels, once, before the first step (item
  ``i`` of the set arrives with ``batch["index"] == i``);
* :meth:`~PretextTask.after_step`: called with each prepared batch after the optimiser step;
* :meth:`~PretextTask.state_dict` / :meth:`~PretextTask.load_state_dict`: the task's state, written into every
  checkpoint (``task_state``) and restored on resume, so a resumed run goes on exactly as the uninterrupted one.

The engine knows nothing else about a task, so a new task is one module plus one registry entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from xchannel.utils.config import from_dict, to_dict

#: Checkpoint format written by the engine: 2 adds ``task``, ``backbone``, ``heads`` and ``pretrained_stages``.
CHECKPOINT_FORMAT = 2
#: The scales every task ships a training config for: the embedded data set (minutes on a CPU) and ImageNet.
SCALES: tuple[str, ...] = ("demo", "imagenet")


@dataclass
class NoOptions:
    """A task without options."""


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of a task's on-device randomness at ``step`` (0-based) on ``rank``: a function of those
    alone, so a resumed run draws exactly what the uninterrupted run drew."""
    state = np.random.SeedSequence([int(seed), int(step), int(rank), 0x5EED]).generate_state(1, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> 1))


class PretextTask:
    """Base of the pretext tasks (see the module docstring); subclasses set the class attributes and implement
    :meth:`build_model`, :meth:`prepare`, :meth:`loss` and :meth:`validate`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for ``xchannel train --list-tasks``
    paper: ClassVar[str]  # the paper the task comes from
    Config: ClassVar[type] = NoOptions
    #: The task's shipped training configs (:mod:`xchannel.configs`) by scale, where they are not named
    #: ``demo-<name>`` (the embedded data set) and ``<name>-imagenet`` (the full protocol): see :meth:`named_config`.
    configs: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def named_config(cls, scale: str) -> str:
        """The name of the task's shipped training config for ``scale`` (one of :data:`SCALES`): ``configs[scale]``,
        else ``demo-<name>`` / ``<name>-imagenet``."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        return cls.configs.get(scale) or (f"demo-{cls.name}" if scale == "demo" else f"{cls.name}-{scale}")

    def __init__(self, cfg: Any, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.opt = from_dict(self.Config, dict(getattr(cfg, "pretext", {}) or {}), where=f"pretext ({self.name})")

    # -- model ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module:
        """The registered backbone inside ``model`` (default: the model itself, an AlexNet whose fc8 is the head)."""
        return model

    def kmeans_init(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        """Krähenbühl et al.'s initialisation of ``model`` on ``images`` (uint8 RGB batches)."""
        from xchannel.models.init import kmeans_init_

        kmeans_init_(model, [self.init_inputs(b) for b in images])

    def init_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The network input for uint8 RGB ``images`` (the k-means initialisation's data)."""
        raise NotImplementedError

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the configured memory format (channels_last for 4-d inputs when ``cfg.channels_last``)."""
        if getattr(self.cfg, "channels_last", False) and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- data and objective --------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, Any], gen: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validate(self, model: nn.Module, batches, out_dir: Path, step: int, max_images: int) -> dict:
        raise NotImplementedError

    # -- training data and task state (stateful tasks; the defaults keep none) -------------------------------------
    def set_training_data(self, size: int, labels: Sequence[int]) -> None:
        """The training set, told once before the first step: its ``size`` and the class label of each position
        (``-1`` where there is none); a batch's ``index`` entries are positions in it."""

    def after_step(self, batch: Any) -> None:
        """Called after each optimiser step with what :meth:`prepare` made for that step (and :meth:`loss` read)."""

    def state_dict(self) -> dict[str, Any]:
        """The task's state besides the network (tensors and plain values): saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (on resume)."""
        if state:
            raise ValueError(f"task {self.name} keeps no state, but the checkpoint holds {', '.join(sorted(state))}")

    # -- export --------------------------------------------------------------------------------------------------
    def pretrained_stages(self, model: nn.Module) -> list[str]:
        """The backbone stages (with weights) this task trains: every one, by default."""
        from xchannel.models.alexnet import AlexNet

        net = self.backbone(model)
        if isinstance(net, AlexNet):
            return [s for s in net.stage_names if s != "fc8" and not s.startswith("pool")]
        return list(getattr(net, "layer_names", ()))

    def heads(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]] | None:
        """The task heads' weights by name, when they are not the backbone's fc8 (which is the default head)."""
        return None

    def export(self, model: nn.Module) -> dict[str, Any]:
        """The self-describing entries of a checkpoint (:func:`export_entries` of the backbone)."""
        entries = export_entries(self.name, self.backbone(model), self.pretrained_stages(model), to_dict(self.opt))
        heads = self.heads(model)
        if heads is not None:
            entries["heads"] = heads
        return entries


class ClassificationTask(PretextTask):
    """Base of the tasks whose pretext is an N-way classification (the image-level and the patch tasks): chance is
    ``1 / num_classes()``, and the network is our AlexNet."""

    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes()

    def require_alexnet(self) -> None:
        """A :class:`~xchannel.errors.UserError` unless the config trains the AlexNet backbone."""
        from xchannel.errors import UserError

        if self.cfg.model.name != "alexnet":
            raise UserError(f"task {self.name}: trains the AlexNet backbone (model.name: alexnet), "
                            f"got {self.cfg.model.name!r}")


class HeldOut:
    """The validation batches of :meth:`PretextTask.validate`, up to ``max_images`` images, with ``model`` in eval
    mode while they are read (train mode again after); :attr:`seen` counts the images read."""

    def __init__(self, model: nn.Module, batches, max_images: int) -> None:
        self.model, self.batches, self.max_images, self.seen = model, batches, max_images, 0

    def __iter__(self):
        self.model.eval()
        try:
            for batch in self.batches:
                yield batch
                self.seen += int(batch["image"].shape[0])
                if self.seen >= self.max_images:
                    break
        finally:
            self.model.train()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def export_entries(task: str, backbone: nn.Module, stages: list[str], options: dict) -> dict[str, Any]:
    """``{"format", "task", "options", "backbone", "heads", "pretrained_stages"}`` for a trained network.

    ``backbone`` is ``{"arch", "hparams", "input_space", "state_dict"}``: the registered network without its task
    head (an AlexNet's fc8), which is what :func:`xchannel.models.backbone_from_entry` and the benchmarks read;
    ``heads`` holds the head's weights (``{"fc8": {...}}``), so the file alone says what was trained and how.
    """
    from xchannel.models import MODELS

    arch = getattr(backbone, "registry_name", None)
    if arch not in MODELS:
        raise ValueError(f"{type(backbone).__name__} is not a registered backbone")
    state = backbone.state_dict()
    head_keys = [k for k in state if k.startswith("fc8.")] if hasattr(backbone, "fc8_outputs") else []
    hparams = dict(backbone.hparams)
    if head_keys:
        hparams["fc8_outputs"] = 0
    return {"format": CHECKPOINT_FORMAT, "task": task, "options": options,
            "backbone": {"arch": arch, "hparams": hparams, "input_space": getattr(backbone, "input_space", "L"),
                         "state_dict": {k: v for k, v in state.items() if k not in head_keys}},
            "heads": {"fc8": {k[len("fc8."):]: state[k] for k in head_keys}} if head_keys else {},
            "pretrained_stages": list(stages)}
