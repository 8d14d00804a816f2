"""Pretext tasks: what a self-supervised network is trained to do.

Each task is one module here plus one entry in :data:`TASKS`; :mod:`xchannel.pretext.base` says what a task
provides. The training engine (:mod:`xchannel.train.engine`) and the benchmarks know nothing else about it.
"""

from __future__ import annotations

import importlib

from xchannel.errors import UserError

TASKS: dict[str, str] = {
    "colorization": "xchannel.pretext.colorization:ColorizationTask",
    "rotation": "xchannel.pretext.rotation:RotationTask",
    "supervised": "xchannel.pretext.supervised:SupervisedTask",
    "autoencoder": "xchannel.pretext.autoencoder:AutoencoderTask",
    "splitbrain": "xchannel.pretext.splitbrain:SplitBrainTask",
    "jigsaw": "xchannel.pretext.jigsaw:JigsawTask",
    "context": "xchannel.pretext.context:ContextTask",
    "instance": "xchannel.pretext.instance:InstanceTask",
}


def get_task(name: str):
    """The task class registered as ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    if name not in TASKS:
        raise UserError(f"unknown pretext task {name!r}; known: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def describe_tasks() -> list[tuple[str, str, str]]:
    """(name, one-line description, paper) of every registered task."""
    return [(name, get_task(name).description, get_task(name).paper) for name in TASKS]


def task_config(name: str, scale: str) -> str:
    """The shipped training config (:mod:`xchannel.configs`) of task ``name`` at ``scale`` (``demo``: the embedded
    data set; ``imagenet``: the full protocol), e.g. ``demo-rotation``; a :class:`UserError` when the task or the
    config is unknown."""
    from xchannel.configs import named_configs
    from xchannel.pretext.base import SCALES

    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; scales: {', '.join(SCALES)}")
    config = get_task(name).named_config(scale)
    if config not in named_configs():
        raise UserError(f"pretext task {name!r}: no shipped training config {config!r} for scale {scale!r} "
                        f"(xchannel/configs/{config}.yaml; or set the task's `configs`)")
    return config
