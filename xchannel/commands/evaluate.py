"""``xchannel evaluate TARGET ...``: score saved results against a benchmark's ground truth.

Each target is an evaluator module listed in :data:`EVALUATORS`; the module provides ``HELP`` (one line),
optional ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``. Adding an evaluator (for example
``xchannel evaluate colorization ...``) is one new entry in the dict and one new module; nothing else changes.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

NAME = "evaluate"
HELP = "Score saved results against a benchmark's ground truth (voc-det: PASCAL VOC detection AP/mAP)."
DESCRIPTION = """\
Score saved results against a benchmark's ground truth.

Targets:
  voc-det   PASCAL VOC detection: per-class AP and mAP of standard comp4_det_<split>_<class>.txt result files,
            with the VOC devkit's protocol (11-point AP for VOC2007, difficult objects ignored).

Run `xchannel evaluate TARGET --help` for a target's options.
"""

#: Target name -> module providing ``HELP``, ``add_arguments(parser)`` and ``run(args)``.
EVALUATORS: dict[str, str] = {
    "voc-det": "xchannel.metrics.voc_det_cli",
    "colorization": "xchannel.evaluation.colorization",
    "temperature-grid": "xchannel.evaluation.temperature",
}


def _load(target: str) -> ModuleType:
    mod = importlib.import_module(EVALUATORS[target])
    for attr in ("HELP", "add_arguments", "run"):
        if not hasattr(mod, attr):
            raise AttributeError(f"evaluator module {mod.__name__} (target {target!r}) lacks {attr}")
    return mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for target in EVALUATORS:
        mod = _load(target)
        p = sub.add_parser(target, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_evaluate=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._evaluate(args) or 0)
