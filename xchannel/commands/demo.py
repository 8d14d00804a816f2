"""``xchannel demo``: the main job on the embedded default data set (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the whole pipeline on the embedded data set (results/demo/)"
DESCRIPTION = """Generate the embedded data set, train the AlexNet cross-channel encoder (and, with --vgg, the VGG
colorizer) and the supervised calibration encoder briefly, then benchmark the encoder as the paper does; numbers and
figures go to --out (results/demo/), data and checkpoints to --work (runs/demo/)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from xchannel.demo import STAGES

    p.add_argument("--out", default="results/demo", help="results folder (default results/demo)")
    p.add_argument("--work", default="runs/demo", help="folder for data and checkpoints (default runs/demo)")
    p.add_argument("--only", nargs="*", choices=[name for name, _ in STAGES], help="run only these stages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: OMP_NUM_THREADS, else one per core that other processes leave "
                        "free, looked at for a second at the start)")
    p.add_argument("--vgg", action="store_true",
                   help="also train the VGG colorizer (Fig. 2; demo-vgg.yaml, about 5.5 min on 2 cores without "
                        "native bf16) and add it to Table 1; without it, an earlier run's VGG is used when found")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from xchannel.demo import run_demo

    report = run_demo(Path(args.out), Path(args.work), args.only, args.seed, not args.no_progress, args.threads,
                      vgg=args.vgg)
    print("demo finished: " + ", ".join(f"{k} ({v['seconds']} s)" for k, v in report.items()))
    print(f"results in {args.out}")
    return 0
