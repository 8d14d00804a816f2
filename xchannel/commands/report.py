"""``xchannel report SWEEP_DIR [-o OUT]``: collect a sweep's results into the paper's figures and tables.

From the finished jobs of the sweep in SWEEP_DIR (``xchannel sweep``) it writes, into OUT (default
``results/<sweep name>/``): the Figure 7 plot and table (probe jobs), Table 2 as markdown and CSV (PASCAL jobs), a
training summary (train jobs), ``jobs.csv`` and a ``README.md``, with the published numbers beside ours. Jobs
that have not finished are listed, not waited for: run it again when they have. See :mod:`xchannel.reports.sweep`.
"""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "collect a sweep's results: Figure 7 plot, Table 2 markdown/CSV, published numbers beside ours"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep folder (e.g. runs/sweeps/demo)")
    parser.add_argument("-o", "--out", help="output folder (default: results/<sweep name>)")


def run(args: argparse.Namespace) -> int:
    from xchannel.reports.sweep import write_report

    info = write_report(args.sweep_dir, args.out)
    c = info["counts"]
    print(f"sweep {info['sweep']}: {c['done']} of {sum(c.values())} jobs finished; wrote {info['out']}/")
    for name, made in info["made"].items():
        files = [v for k, v in made.items() if k in ("plot", "markdown", "csv", "json")]
        print(f"  {name}: {', '.join(files)}")
    for note in info["notes"]:
        print(f"  note: {note}")
    return 0
