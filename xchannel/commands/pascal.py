"""``xchannel pascal TASK ...``: the PASCAL benchmarks of Table 2 (classification, detection, segmentation).

Each task is a module listed in :data:`TASKS` exposing ``Config`` (a dataclass), ``HELP`` (one line), optional
``DESCRIPTION``, ``add_arguments(parser)``, ``run(args) -> int`` and ``run_task(cfg) -> result dict``. Adding a
task is one entry here and one module.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

NAME = "pascal"
HELP = "fine-tune an encoder on PASCAL VOC: cls (VOC07 classification), det (Fast R-CNN), seg (FCN-32s)"
DESCRIPTION = """\
Fine-tune an encoder on PASCAL VOC as in Table 2 of the paper (Sec. 3.2):

  cls   VOC2007 classification, fine-tuning fc8, fc6-8 or all layers (% mAP)
  det   VOC2007 detection with Fast R-CNN (% mAP, VOC07 11-point)
  seg   VOC2012 segmentation with FCN-32s (% mean IU)

Every task takes any encoder `xchannel-probe` accepts, gray (L) or color (Lab) input, rescales the encoder first
(Krähenbühl et al. 2016), and writes a JSON result with its protocol, config and code version.
Run `xchannel pascal TASK --help` for a task's options."""

#: Task name -> module implementing it.
TASKS: dict[str, str] = {
    "cls": "xchannel.pascal.classification",
    "seg": "xchannel.pascal.segmentation",
    "det": "xchannel.pascal.detection",
}


def load_task(name: str) -> ModuleType | None:
    """The module of task ``name``, or None when that module is not installed (the task is then not offered)."""
    module = TASKS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return None
        raise
    for attr in ("Config", "add_arguments", "run", "run_task"):
        if not hasattr(mod, attr):
            raise AttributeError(f"PASCAL task module {module} (task {name!r}) lacks {attr}")
    return mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in TASKS:
        mod = load_task(name)
        if mod is None:
            continue
        help_line = getattr(mod, "HELP", (mod.__doc__ or name).strip().splitlines()[0])
        # argparse %-formats help strings: a literal "%" (as in "% mAP") must be doubled
        p = sub.add_parser(name, help=help_line.replace("%", "%%"), description=getattr(mod, "DESCRIPTION", help_line),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_task_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._task_run(args) or 0)
