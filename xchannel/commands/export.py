"""``xchannel export FORMAT ENCODER -o FILE``: write an encoder in another framework's weight-file format.

The formats are the modules of :data:`xchannel.export.FORMATS` (each provides ``HELP``, optional ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args)``); adding a format adds nothing here.
"""

from __future__ import annotations

import argparse

from xchannel.cli import add_module_subcommands, run_subcommand

from xchannel.export import FORMATS

NAME = "export"
HELP = "write an encoder in another framework's weight format (detectron2: a .pkl for DetectionCheckpointer)"
DESCRIPTION = """\
Write an encoder in another framework's weight-file format.

Formats:
  detectron2   the pickle detectron2's DetectionCheckpointer loads (MODEL.WEIGHTS), conv1-conv5 as
               backbone.convN.*, fc6/fc7 as the box head's fc1/fc2; weights as float32 numpy arrays

Run `xchannel export FORMAT --help` for a format's options."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_module_subcommands(parser, FORMATS, dest="format", metavar="FORMAT")


run = run_subcommand
