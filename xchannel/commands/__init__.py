"""Subcommands of the ``xchannel`` CLI: one module each (see :mod:`xchannel.cli`)."""
