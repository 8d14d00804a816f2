"""``xchannel train CONFIG [key=value ...]``: train a pretext network (colorization by default)."""

from __future__ import annotations

import argparse
import json

from xchannel.configs import named_configs, resolve
from xchannel.train.config import TrainConfig
from xchannel.utils.config import build_config

NAME = "train"
HELP = "train a network on a pretext task (colorization, rotation, ...; --list-tasks)"
DESCRIPTION = f"""Train a pretext network from a YAML config, with key=value overrides.

CONFIG is a YAML file or a shipped config name ({', '.join(named_configs())}).
Overrides use dotted keys and YAML values, e.g.:

  xchannel train alexnet-imagenet data.train=/data/imagenet/train pretext.loss.lam=1.0 out=runs/class
  xchannel train vgg-imagenet pretext.loss.kind=l2 model.init_from=runs/vgg/ckpt_00450000.pt   # Ours (L2, ft)

Table 1 variants: pretext.loss.lam=0.5 (full), pretext.loss.lam=1.0 (class, no rebalancing), pretext.loss.kind=l2 (L2).
Other pretext tasks: task=NAME with its options under pretext.* (xchannel train --list-tasks).
The run folder (out=) receives config.json, checkpoints, metrics.jsonl, sample grids and summary.json.
Under torchrun or SLURM with several tasks the run is DistributedDataParallel."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file or shipped config name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in out=")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-tasks", action="store_true", help="print every pretext task and its paper, then exit")


def run(args: argparse.Namespace) -> int:
    from xchannel.errors import UserError
    from xchannel.train.engine import train

    if args.list_tasks:
        from xchannel.pretext import describe_tasks

        for name, description, paper in describe_tasks():
            print(f"{name:<14} {description}\n{'':<14} ({paper})")
        return 0
    if args.config is None:
        raise UserError("give a CONFIG (a YAML file or a shipped config name), or --list-tasks")
    cfg = build_config(TrainConfig, resolve(args.config), args.overrides)
    summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({k: summary.get(k) for k in ("status", "step", "first_loss", "last_loss", "val")}, indent=2))
    return 0 if summary.get("status") in ("finished", "already-finished") else 3
