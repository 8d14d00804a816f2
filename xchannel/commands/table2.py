"""``xchannel table2 RESULT... [-o DIR]``: the paper's Table 2 with the published rows beside ours.

See :mod:`xchannel.reports.table2`: the published numbers of ``xchannel/reports/published/table2.json`` and one
measured row per encoder, input mode and data set from the PASCAL task results (files, or folders searched for
them).
Writes ``DIR/table2.md`` and ``DIR/table2.csv`` and prints the markdown.
"""

from __future__ import annotations

import argparse

NAME = "table2"
HELP = "render Table 2 (PASCAL classification / detection / segmentation): published rows beside ours"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="*", metavar="RESULT",
                        help="result JSON files of `xchannel pascal cls|det|seg`, or folders holding them "
                             "(none: the published rows only)")
    parser.add_argument("-o", "--out", default="results", metavar="DIR",
                        help="folder for table2.md and table2.csv (default: results)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")


def run(args: argparse.Namespace) -> int:
    from xchannel.reports.table2 import write_table2

    out = write_table2(args.results, args.out)
    if not args.quiet:
        print(out["markdown"])
    print(f"wrote {out['markdown_path']} and {out['csv_path']} ({len(out['rows'])} measured row(s))")
    return 0
