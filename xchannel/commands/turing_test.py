"""``xchannel turing-test``: the colorization Turing test (paper Sec. 3.1, Table 1's AMT column)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xchannel.errors import UserError

NAME = "turing-test"
HELP = "colorization Turing test: make the image pairs, serve the real-vs-fake experiment, report fool rates"
DESCRIPTION = """\
The real-vs-fake experiment of Colorful Image Colorization (Sec. 3.1): each trial shows a real photo and a
recoloured version side by side for 1 s; the participant clicks the one with fake colours. 10 practice trials
with feedback, then 40 test trials (4 of them attention checks: ground truth vs Random); one method per
participant, one session per participant.

  make-pairs  write a pairs folder: DIR/real/<id>.png, DIR/random/<id>.png, DIR/<method>/<id>.png (256x256)
  serve       run the web experiment on a pairs folder; answers go to SQLite as they arrive
  report      fool rate per method (bootstrap SE over participants) beside the paper's Table 1

example:
  xchannel turing-test make-pairs --real photos/ --method ours_full=colorized/full --out pairs/
  xchannel turing-test serve --pairs pairs/ --db answers.sqlite --port 8000
  xchannel turing-test report --db answers.sqlite
"""


def _method_arg(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FOLDER, e.g. ours_full=colorized/full")
    return name, folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="turing_command", metavar="ACTION", required=True)

    mk = sub.add_parser("make-pairs", help="write a pairs folder from real photos and colorized folders")
    mk.add_argument("--real", required=True, type=Path, help="folder of ground-truth colour photos (PNG/JPEG)")
    mk.add_argument("--method", action="append", default=[], type=_method_arg, metavar="NAME=FOLDER",
                    help="a method's colorizations, one per real photo with the same file stem (repeatable); "
                         "paper names: ours_full, ours_class, l2, l2_ft, larsson, dahl")
    mk.add_argument("--out", required=True, type=Path, help="pairs folder to write")
    mk.add_argument("--size", type=int, default=256, help="image side in pixels (default 256, as in the paper)")
    mk.add_argument("--seed", type=int, default=0, help="seed choosing each Random image's colour donor")
    mk.add_argument("--ground-truth", action="store_true",
                    help="also write the ground_truth/ control method (the real photo against itself: 50%% expected)")
    mk.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

    sv = sub.add_parser("serve", help="serve the experiment (stop with Ctrl-C)")
    sv.add_argument("--pairs", required=True, type=Path, help="pairs folder (see make-pairs)")
    sv.add_argument("--db", type=Path, default=Path("answers.sqlite"), help="answers database (created if absent)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    sv.add_argument("--display-ms", type=int, default=1000, help="how long each pair is shown (paper: 1000)")
    sv.add_argument("--practice", type=int, default=10, help="practice trials per session (paper: 10)")
    sv.add_argument("--test", type=int, default=40, help="test trials per session (paper: 40)")
    sv.add_argument("--attention-fraction", type=float, default=0.1,
                    help="fraction of test trials that are attention checks (paper: 0.1)")
    sv.add_argument("--methods", default=None,
                    help="comma-separated method folders to test (default: all but real/, random included)")
    sv.add_argument("--seed", type=int, default=None, help="seed for method assignment and session plans")
    sv.add_argument("--quiet", action="store_true", help="no per-request log lines")

    rp = sub.add_parser("report", help="fool rates with bootstrap standard errors")
    rp.add_argument("--db", type=Path, default=Path("answers.sqlite"), help="answers database")
    rp.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    rp.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap replicates B (default 10000)")
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    rp.add_argument("--include-incomplete", action="store_true",
                    help="also count answers of sessions not finished (default: completed sessions only)")
    rp.add_argument("--out", type=Path, default=None,
                    help="also write turing_report.md and turing_report.json into this folder")


def _make_pairs(args: argparse.Namespace) -> int:
    from xchannel.turing.pairs import make_pairs

    methods = dict(args.method)
    if len(methods) != len(args.method):
        raise UserError("--method: a method name is given twice")
    manifest = make_pairs(args.real, methods, args.out, size=args.size, seed=args.seed,
                          ground_truth=args.ground_truth, overwrite=args.overwrite)
    print(f"wrote {len(manifest['ids'])} photos x {len(manifest['methods'])} methods "
          f"({', '.join(manifest['methods'])}) to {args.out}")
    for name, gap in manifest["mean_lightness_gap"].items():
        print(f"  {name}: mean |L - L_real| = {gap:.2f}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from xchannel.turing.protocol import ProtocolConfig
    from xchannel.turing.server import build_server, serve

    try:
        cfg = ProtocolConfig(n_practice=args.practice, n_test=args.test,
                             attention_fraction=args.attention_fraction, display_ms=args.display_ms)
    except ValueError as err:
        raise UserError(f"protocol options: {err}") from err
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    server = build_server(args.pairs, args.db, host=args.host, port=args.port, cfg=cfg, methods=methods,
                          seed=args.seed, quiet=args.quiet)
    app = server.app
    for line in app.pairs.skipped:
        print(f"skipped {line}", file=sys.stderr)
    counts = ", ".join(f"{m} ({len(app.pairs.ids_for(m))})" for m in app.methods)
    print(f"turing-test: methods {counts}; {cfg.n_practice} practice + {cfg.n_test} test trials "
          f"({cfg.n_attention} attention checks), {cfg.display_ms} ms display; answers -> {args.db}")
    print(f"turing-test: serving {server.url}  (Ctrl-C to stop)", flush=True)
    serve(server)
    return 0


def _report(args: argparse.Namespace) -> int:
    from xchannel.turing.report import markdown, summarize_db
    from xchannel.utils.io import atomic_write_json, atomic_write_text

    if args.bootstrap < 2:
        raise UserError(f"--bootstrap {args.bootstrap}: need at least 2 replicates")
    summary = summarize_db(args.db, n_boot=args.bootstrap, seed=args.seed,
                           include_incomplete=args.include_incomplete)
    summary["config"] = {"db": str(args.db), "bootstrap": args.bootstrap, "seed": args.seed,
                         "include_incomplete": args.include_incomplete}
    text = markdown(summary)
    if args.out is not None:
        atomic_write_text(args.out / "turing_report.md", text)
        atomic_write_json(args.out / "turing_report.json", summary)
    print(json.dumps(summary, indent=2) if args.json else text, end="" if not args.json else "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"make-pairs": _make_pairs, "serve": _serve, "report": _report}[args.turing_command](args)
