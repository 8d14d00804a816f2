"""The Caffe-style fine-tuning machinery the PASCAL tasks share: freezing, parameter groups with Caffe's
``lr_mult``/``decay_mult``, the ``step`` learning-rate policy, gradient clipping, endless data iteration, the device
and the precision (``auto`` resolved by :mod:`xchannel.runtime`).

Learning rates follow Caffe's ``step`` policy, ``lr(it) = base_lr * gamma ** floor(it / stepsize)``
(:func:`step_lr`), with per-group multipliers set on every step (:func:`set_lr`). Frozen groups get
``requires_grad = False`` and their BatchNorm layers (if any) keep their statistics (:func:`set_train_mode`);
dropout runs in training mode everywhere, as in Caffe, where a layer with ``lr_mult: 0`` still runs its
train-phase dropout. :func:`describe_param_groups` is what every result records of its groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from xchannel import runtime
from xchannel.errors import UserError
from xchannel.pascal.trunk import Trunk


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast on ``device`` for a resolved ``precision`` (Lab conversion should stay outside it)."""
    return runtime.autocast(device, precision)


def resolve_precision(cfg: Any, device: torch.device) -> tuple[Any, dict]:
    """``cfg`` with its ``precision`` resolved for ``device`` (``auto`` -> bf16 where native, else fp32), and the
    record (requested, resolved, why) that the result JSON keeps."""
    record = runtime.precision_record(cfg.precision, device)
    if getattr(cfg, "progress", False):
        print(runtime.describe_precision(record), flush=True)
    return dataclasses.replace(cfg, precision=record["resolved"]), record



def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    from xchannel.train.engine import resolve_device as _resolve

    try:
        return _resolve(name)
    except RuntimeError as err:
        raise UserError(f"device {name!r}: {err}") from None




def endless_batches(dataset: Dataset, batch_size: int, seed: int, workers: int = 0,
                    collate: Callable | None = None, counter: Any = None) -> Iterator[dict]:
    """Batches drawn forever, epoch after epoch, each epoch a permutation seeded by (seed, epoch), as Caffe's data
    layers wrap around. Whole batches only (when the set holds at least one). Batches of nothing but bad images
    are skipped; ``counter`` (a :class:`~xchannel.data.images.SkipCounter`) records every bad image."""
    from xchannel.data.images import batch_size as good_samples, collate_skip

    if len(dataset) == 0:
        raise UserError("the training set is empty")
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers,
                            collate_fn=collate or collate_skip, drop_last=len(dataset) >= batch_size)
        for batch in loader:
            n = counter.update(batch) if counter is not None else good_samples(batch)
            if n:
                yield batch
        epoch += 1



def freeze_groups(trunk: Trunk, trainable: Sequence[str]) -> list[str]:
    """Freeze every group of the trunk not named in ``trainable`` (``requires_grad = False``); returns the frozen
    names. Unknown names are an error listing the groups."""
    groups = trunk.groups()
    unknown = [n for n in trainable if n not in groups]
    if unknown:
        raise UserError(f"unknown layer group(s) {unknown}; this encoder's groups: {', '.join(groups)}")
    frozen = []
    for name, module in groups.items():
        on = name in trainable
        for p in module.parameters():
            p.requires_grad_(on)
        if not on:
            frozen.append(name)
    return frozen


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen, which stay in eval mode (their
    running statistics are part of the frozen representation)."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def caffe_param_groups(modules: Sequence[tuple[str, nn.Module, float]], weight_decay: float,
                       bias_lr_mult: float = 2.0, bias_decay_mult: float = 1.0) -> list[dict]:
    """SGD parameter groups as Caffe's ``param { lr_mult decay_mult }``: for each (name, module, lr_mult), its
    weights at ``lr_mult`` and decay x 1, its biases (1-D parameters) at ``lr_mult * bias_lr_mult`` and decay x
    ``bias_decay_mult``. Each group carries ``name``, ``lr_mult`` and ``decay_mult`` (:func:`describe_param_groups`
    records them). Frozen parameters and parameters listed twice are left out. Use with :func:`set_lr`."""
    seen: set[int] = set()
    groups: list[dict] = []
    for name, module, mult in modules:
        weights, biases = [], []
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (biases if p.ndim == 1 else weights).append(p)
        if weights:
            groups.append({"params": weights, "name": f"{name}.weights", "lr_mult": float(mult),
                           "decay_mult": 1.0, "weight_decay": weight_decay})
        if biases:
            groups.append({"params": biases, "name": f"{name}.biases", "lr_mult": float(mult) * bias_lr_mult,
                           "decay_mult": float(bias_decay_mult), "weight_decay": weight_decay * bias_decay_mult})
    return groups


def describe_param_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every parameter group's name, learning-rate and decay multipliers and parameter count, as the result JSON
    records them (the rates actually used, so a wrong multiplier shows in the record)."""
    return [{"name": g.get("name", f"group{i}"), "lr_mult": g.get("lr_mult", 1.0),
             "decay_mult": g.get("decay_mult", 1.0), "parameters": int(sum(p.numel() for p in g["params"]))}
            for i, g in enumerate(optimizer.param_groups)]


def step_lr(base_lr: float, iteration: int, stepsize: int, gamma: float) -> float:
    """Caffe's ``step`` policy: ``base_lr * gamma ** floor(iteration / stepsize)`` (``stepsize <= 0``: fixed)."""
    if stepsize <= 0:
        return base_lr
    return base_lr * gamma ** (iteration // stepsize)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group["lr_mult"]``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Caffe's ``clip_gradients``: scale all gradients by ``max_norm / ||g||`` when their global L2 norm exceeds
    ``max_norm`` (``max_norm <= 0``: no clipping). Returns the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm <= 0:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def check_finite(loss: torch.Tensor, iteration: int, task: str) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"{task}: the loss became {float(loss)} at iteration {iteration}; lower the learning rate "
                        f"(optim.lr) or check the data")


__all__ = ["autocast", "resolve_precision", "caffe_param_groups", "check_finite", "clip_gradients", "describe_param_groups",
           "endless_batches", "freeze_groups", "resolve_device", "set_lr", "set_train_mode", "step_lr",
           "trainable_parameters"]
