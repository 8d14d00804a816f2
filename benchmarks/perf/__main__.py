"""``python -m benchmarks.perf [--short | --smoke] [--only NAME ...]``: run the performance benchmarks, print each
one's figures against its baseline and one summary table, write ``results/perf/<name>.json`` and
``results/perf/summary.json`` (all checks and the machine) and ``results/perf/table.md``; after ``--only``, they keep
the other benchmarks' earlier results of the same mode (``run_now`` names what ran).

These are benchmarks, not tests: a missed target is reported, never an error (the exit status is 0 unless a
benchmark crashed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from benchmarks.perf import BENCHMARKS
from benchmarks.perf.common import Settings, check_lines, describe_machine, format_table, machine
from xchannel.utils.io import atomic_write_json, atomic_write_text


def _with_earlier(records: list[dict], settings: Settings) -> list[dict]:
    """``records`` (this run's) and, for the benchmarks ``--only`` left out, their earlier results of the same mode
    in ``settings.out``, in :data:`BENCHMARKS` order: the summary and the table stay whole after a partial run."""
    fresh = {r["benchmark"]: r for r in records}
    out = []
    for name in BENCHMARKS:
        rec = fresh.get(name)
        if rec is None:
            try:
                rec = json.loads((settings.out / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
            if rec.get("mode") != settings.mode or rec.get("benchmark") != name:
                continue
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="the make bench setting: a few minutes in all")
    size.add_argument("--smoke", action="store_true", help="tiny workloads: only proves every benchmark runs")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--out", default="results/perf", help="where the JSON results go (default results/perf)")
    p.add_argument("--work", default="runs/perf", help="scratch folder: the embedded data set, probe caches")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "short" if args.short else "full"
    settings = Settings(mode=mode, out=Path(args.out), work=Path(args.work), progress=not args.no_progress,
                        threads=args.threads)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    m = machine()
    print(f"performance benchmarks ({mode}) on {describe_machine(m)}; load average {m['load_average']}", flush=True)
    context: dict = {}
    records = []
    t0 = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"benchmarks.perf.{name}")
        print(f"\n[{name}] {module.TITLE}", flush=True)
        rec = module.run(settings, context)
        context[name] = rec
        records.append(rec)
        print("\n".join(check_lines(rec)), f"\n  ({rec['seconds']:.0f} s; {settings.out / (name + '.json')})",
              flush=True)
    measured = [c for r in records for c in r["checks"] if c["met"] is not None]
    print(f"\n{format_table(records)}\n\n{sum(c['met'] for c in measured)} of {len(measured)} targets met in "
          f"{time.perf_counter() - t0:.0f} s")
    records = _with_earlier(records, settings)
    table = format_table(records)
    summary = {"mode": mode, "machine": m, "benchmarks": [r["benchmark"] for r in records], "run_now": names,
               "checks": [{"benchmark": r["benchmark"], **c} for r in records for c in r["checks"]],
               "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(settings.out / "summary.json", summary)
    atomic_write_text(settings.out / "table.md", f"Measured on {describe_machine(m)} ({mode} run).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
