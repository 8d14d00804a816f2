"""``xchannel evaluate TARGET ...``: score saved results against a benchmark's ground truth.

Each target is an evaluator module listed in :data:`EVALUATORS`; the module provides ``HELP`` (one line),
optional ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``. Adding an evaluator (for example
``xchannel evaluate colorization ...``) is one new entry in the dict and one new module; nothing else changes.
"""

from __future__ import annotations

import argparse

from xchannel.cli import add_module_subcommands, run_subcommand

NAME = "evaluate"
HELP = "score results: voc-det (VOC detection mAP), colorization (Table 1), temperature-grid (Fig. 4)"
DESCRIPTION = """\
Score saved results against a benchmark's ground truth.

Targets:
  voc-det   PASCAL VOC detection: per-class AP and mAP of standard comp4_det_<split>_<class>.txt result files,
            with the VOC devkit's protocol (11-point AP for VOC2007, difficult objects ignored).
  colorization      Table 1: raw and rebalanced AuC and classifier top-1 of colorizers and baselines.
  temperature-grid  Fig. 4: annealed-mean decodings at T = 1, 0.77, 0.58, 0.38, 0.29, 0.14 and -> 0.

Run `xchannel evaluate TARGET --help` for a target's options.
"""

#: Target name -> module providing ``HELP``, ``add_arguments(parser)`` and ``run(args)``.
EVALUATORS: dict[str, str] = {
    "voc-det": "xchannel.metrics.voc_det_cli",
    "colorization": "xchannel.evaluation.colorization",
    "temperature-grid": "xchannel.evaluation.temperature",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_module_subcommands(parser, EVALUATORS, dest="target", metavar="TARGET")


run = run_subcommand
