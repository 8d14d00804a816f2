"""``xchannel export FORMAT ENCODER -o FILE``: write an encoder in another framework's weight-file format.

The formats are the modules of :data:`xchannel.export.FORMATS` (each provides ``HELP``, optional ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args)``); adding a format adds nothing here.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from xchannel.export import FORMATS

NAME = "export"
HELP = "write an encoder in another framework's weight format (detectron2: a .pkl for DetectionCheckpointer)"
DESCRIPTION = """\
Write an encoder in another framework's weight-file format.

Formats:
  detectron2   the pickle detectron2's DetectionCheckpointer loads (MODEL.WEIGHTS), conv1-conv5 as
               backbone.convN.*, fc6/fc7 as the box head's fc1/fc2; weights as float32 numpy arrays

Run `xchannel export FORMAT --help` for a format's options."""


def _load(name: str) -> ModuleType:
    mod = importlib.import_module(FORMATS[name])
    for attr in ("HELP", "add_arguments", "run"):
        if not hasattr(mod, attr):
            raise AttributeError(f"export format module {mod.__name__} (format {name!r}) lacks {attr}")
    return mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name in FORMATS:
        mod = _load(name)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_export=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._export(args) or 0)
