"""Pretext tasks: what a self-supervised network is trained to do.

A task turns a batch of RGB images into the model's input and a loss, builds its model, and validates it. The
training engine (:mod:`xchannel.train.engine`) knows nothing else about the task, so a new pretext task is one new
module plus one entry here.
"""

from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "colorization": "xchannel.pretext.colorization:ColorizationTask",
}


def get_task(name: str):
    if name not in TASKS:
        raise KeyError(f"unknown pretext task {name!r}; known: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
