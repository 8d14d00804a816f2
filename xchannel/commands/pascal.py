"""``xchannel pascal TASK ...``: the PASCAL benchmarks of Table 2 (classification, detection, segmentation).

Each task is a module listed in :data:`TASKS` (:data:`xchannel.pascal.TASK_MODULES`) exposing ``Config`` (a dataclass), ``HELP`` (one line), optional
``DESCRIPTION``, ``add_arguments(parser)``, ``run(args) -> int`` and ``run_task(cfg) -> result dict``. Adding a
task is one entry here and one module.
"""

from __future__ import annotations

import argparse

from xchannel.cli import add_module_subcommands, run_subcommand
from xchannel.pascal import TASK_MODULES

NAME = "pascal"
HELP = "fine-tune an encoder on PASCAL VOC: cls (VOC07 classification), det (Fast R-CNN), seg (FCN-32s)"
DESCRIPTION = """\
Fine-tune an encoder on PASCAL VOC as in Table 2 of the paper (Sec. 3.2):

  cls   VOC2007 classification, fine-tuning fc8, fc6-8 or all layers (% mAP)
  det   VOC2007 detection with Fast R-CNN (% mAP, VOC07 11-point)
  seg   segmentation with FCN-32s, SBD train -> VOC2011 seg11valid (% mean IU)

Every task takes any encoder `xchannel-probe` accepts, gray (L) or color (Lab) input, rescales the encoder first
(Krähenbühl et al. 2016), and writes a JSON result with its protocol, config and code version.
Run `xchannel pascal TASK --help` for a task's options."""

#: Task name -> module implementing it.
TASKS = TASK_MODULES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_module_subcommands(parser, TASKS, dest="task", metavar="TASK",
                           required=("Config", "add_arguments", "run", "run_task"))


run = run_subcommand
