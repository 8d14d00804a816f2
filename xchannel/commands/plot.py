"""``xchannel plot NAME RESULT... -o FILE``: figures from result JSON files (a registry of plots).

Plots:

``figure7``
    Linear-probe accuracy per layer (Fig. 7), from ``xchannel probe`` results (:mod:`xchannel.reports.figure7`):
    one line per encoder, gray-input encoders dotted and color/RGB-input encoders solid (the paper's convention),
    the gray and color versions of one encoder in the same colour; error bars are the results' 95 % intervals
    (``top1_ci``) where recorded. When a result's data set is ImageNet (recorded by the probe), or with
    ``--published always``, the published numbers (``xchannel/reports/published/figure7.json``) are overlaid (thin
    lines, x markers).

A new plot is one function ``(result paths, out, title=, metric=, published=) -> written path`` in its report
module plus one entry in :data:`PLOTS` (and, for its own options, a line in ``add_arguments``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xchannel.reports import figure7

NAME = "plot"
HELP = "draw a figure (figure7: probe accuracy per layer) from result JSON files"
DESCRIPTION = __doc__

#: plot name -> function (result paths, out, **options) that draws the plot and writes it
PLOTS: dict[str, Callable[..., Path]] = {
    "figure7": figure7.write_plot,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plot", choices=sorted(PLOTS), help="which figure")
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result JSON files")
    parser.add_argument("-o", "--out", required=True, help="output image (.png, .pdf, .svg)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--metric", choices=["top1", "top5"], default="top1", help="figure7: accuracy to plot")
    parser.add_argument("--published", choices=["auto", "always", "never"], default="auto",
                        help="figure7: overlay the published ImageNet numbers (auto: when the data set is ImageNet)")


def run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"title": args.title, "metric": args.metric, "published": args.published}
    out = PLOTS[args.plot](args.results, args.out, **options)
    print(f"wrote {out}")
    return 0
