"""Training checkpoints: written atomically, found and validated on resume.

A checkpoint is ``ckpt_<step>.pt`` in the run folder, a dict of tensors and plain values only (so it loads with
``weights_only=True``): what the pretext task exports (``format``, ``task``, ``options``, ``backbone`` with its
``arch``, ``hparams``, ``input_space`` and ``state_dict``, ``heads``, ``pretrained_stages``: see
:func:`xchannel.pretext.base.export_entries`), the whole trained network's ``state_dict`` (with ``model`` and
``hparams`` when it is one registered network, as :func:`xchannel.models.model_checkpoint` writes it),
``task_state`` (what a stateful task keeps besides its network, e.g. a memory bank),
``optimizer``, ``scheduler``, ``step``, ``rng`` (torch, numpy and Python RNG
states, the latter two encoded as tensors/lists), ``sampler`` (epoch and position) and ``config``.
Writes go through a temporary file and a rename, so a SIGKILL during a write leaves the previous checkpoints as they
were (the killed write's temporary ``.ckpt_<step>.pt.*.tmp`` is never taken for a checkpoint, and the next save
deletes it); a file that does not load (a torn copy from elsewhere, or a pickle that would run code) is skipped with
a warning and the next older is used.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xchannel.errors import UserError
from xchannel.utils.io import atomic_torch_save, safe_torch_load

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``run_dir``, newest first."""
    out = []
    for p in Path(run_dir).glob("ckpt_*.pt"):
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``ckpt_<step>.pt`` atomically, then delete all but the ``keep`` newest checkpoints and any temporary
    file that a killed earlier write left behind (only one process writes a run's checkpoints)."""
    path = checkpoint_path(run_dir, step)
    atomic_torch_save(state, path)
    for _, old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    for stale in Path(run_dir).glob(".ckpt_*.pt.*.tmp"):  # see xchannel.utils.io.atomic_write's temporary names
        stale.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint that loads, or None when there is none."""
    for step, path in list_checkpoints(run_dir):
        try:
            state = safe_torch_load(path)
        except UserError as err:
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", stacklevel=2)
            continue
        if not isinstance(state, dict) or "state_dict" not in state or state.get("step") != step:
            warnings.warn(f"skipping {path}: not a complete xchannel training checkpoint", stacklevel=2)
            continue
        return state
    return None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[-2], tuple(p[:-2]), p[-1]))
