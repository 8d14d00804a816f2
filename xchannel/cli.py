"""The ``xchannel`` console entry point.

Every subcommand is one module in :mod:`xchannel.commands` that defines

* ``NAME`` (the subcommand, e.g. ``"make-data"``) and ``HELP`` (one line),
* ``add_arguments(parser)`` and ``run(args) -> int``.

Adding a capability means adding one such file: the modules are discovered, nothing else is edited.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from types import ModuleType

from xchannel import __version__
from xchannel.errors import UserError


def _command_modules() -> list[ModuleType]:
    import xchannel.commands as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{pkg.__name__}.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xchannel",
        description="Cross-channel encoders (Colorful Image Colorization, ECCV 2016): "
        "train colorizers, probe and fine-tune encoders, run sweeps, report results.",
    )
    parser.add_argument("--version", action="version", version=f"xchannel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def add_module_subcommands(parser: argparse.ArgumentParser, registry: dict[str, str], dest: str, metavar: str,
                           required: tuple[str, ...] = ("HELP", "add_arguments", "run"),
                           skip_missing: bool = False) -> None:
    """Second-level subcommands (``xchannel evaluate TARGET``, ``export FORMAT``, ``pascal TASK``): one module per
    name in ``registry`` (name -> module path) providing ``required`` attributes, optional ``DESCRIPTION``.

    ``skip_missing``: a name whose module is not installed is not offered. ``args._subcommand_run`` is set.
    """
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=True)
    for name, module in registry.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if skip_missing and err.name == module:
                continue
            raise
        missing = [a for a in required if not hasattr(mod, a)]
        if missing:
            raise AttributeError(f"module {module} ({metavar} {name!r}) lacks {', '.join(missing)}")
        help_line = getattr(mod, "HELP", None) or (mod.__doc__ or name).strip().splitlines()[0]
        # argparse %-formats help strings: a literal "%" (as in "% mAP") must be doubled
        p = sub.add_parser(name, help=help_line.replace("%", "%%"), description=getattr(mod, "DESCRIPTION", help_line),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_subcommand_run=mod.run)


def run_subcommand(args: argparse.Namespace) -> int:
    return int(args._subcommand_run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as err:  # a problem with the user's input: say it plainly, no traceback
        print(f"xchannel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk is not a bug either: say which file and what is kept
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"xchannel {args.command}: error: {err.strerror or err}"
              + (f": {err.filename}" if err.filename else ""), file=sys.stderr)
        return 1


def probe_main(argv: list[str] | None = None) -> int:
    """``xchannel-probe`` is ``xchannel probe``."""
    return main(["probe", *(sys.argv[1:] if argv is None else argv)])
