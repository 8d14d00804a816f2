"""``xchannel sweep SPEC``: run a grid of jobs (Figure 7, Table 2, ...) here, in-process, or as SLURM job arrays.

SPEC is a named sweep (figure7, table2, pretexts, demo), a YAML spec file (format: ``xchannel.sweep.spec``), or a sweep
folder (its recorded jobs). Every job gets a folder SWEEP_DIR/<job id>/ with its config, logs, checkpoints and, when
it finished, result.json. Running the same sweep again runs only the jobs without a result that are not pending or
running: finished jobs are kept, failed and interrupted ones resume from their checkpoints.

Examples::

    xchannel sweep demo                                    # on this machine (submitit's local executor)
    xchannel sweep demo --status                           # job states; failed jobs with the end of their error
    xchannel sweep pretexts                                # every pretext task + baselines on the embedded data
    xchannel sweep pretexts --var imagenet=/data/imagenet --var voc=/data/VOCdevkit --cluster slurm \
        --profile slurm/my-cluster.yaml                    # the same on ImageNet and PASCAL VOC
    xchannel sweep figure7 --var imagenet=/data/imagenet --var colorization=runs/colorization \\
        --var supervised=torchvision-alexnet:/models/alexnet.pth --cluster slurm --profile slurm/my-cluster.yaml
    srun xchannel sweep runs/sweeps/table2 --cluster here --job 'cls-fc8-*'   # inside an existing allocation
    xchannel report runs/sweeps/demo                       # figures and tables into results/demo/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xchannel.errors import UserError

NAME = "sweep"
HELP = "run a sweep of jobs (figure7, table2, demo or a YAML grid) locally, in-process or on SLURM"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a named sweep (figure7, table2, pretexts, demo), a spec file, "
                                                     "or a sweep folder")
    parser.add_argument("--dir", help="the sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable of the spec (repeatable)")
    parser.add_argument("--cluster", choices=["local", "debug", "slurm", "here"], default="local",
                        help="local: subprocesses on this machine (default); debug: in this process via submitit; "
                             "slurm: job arrays; here: in this process / inside an existing allocation")
    parser.add_argument("--profile", metavar="FILE", help="cluster profile YAML (see slurm/README.md)")
    parser.add_argument("--profile-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the profile (repeatable), e.g. timeout_min=120")
    parser.add_argument("--parallel", type=int, help="local: jobs at once (default: the profile's "
                                                     "array_parallelism, or 1 without a profile)")
    parser.add_argument("--job", action="append", default=[], metavar="PATTERN",
                        help="only jobs whose id matches this shell pattern (repeatable)")
    parser.add_argument("--status", action="store_true", help="print the state of every job and exit")
    parser.add_argument("--tail", type=int, default=10, help="--status: lines of error shown per failed job")
    parser.add_argument("--list", action="store_true", help="print the expanded jobs and their configs, run nothing")
    parser.add_argument("--wait", action="store_true", help="slurm: wait until the submitted jobs end, then print "
                                                            "the status")
    parser.add_argument("--pdb", action="store_true", help="debug: post-mortem debugger when a job fails")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _sweep_dir(args: argparse.Namespace, name: str) -> Path:
    from xchannel.sweep.runner import default_sweep_dir

    return Path(args.dir) if args.dir else default_sweep_dir(name)


def load(args: argparse.Namespace, need_expansion: bool):
    """(sweep, sweep folder). A sweep folder as SPEC, or ``--status`` on a named spec, reads ``sweep.json``;
    otherwise the spec is expanded with the ``--var`` values."""
    from xchannel.sweep.runner import is_sweep_dir, load_sweep
    from xchannel.sweep.spec import load_spec, parse_var_overrides, spec_name

    if is_sweep_dir(args.spec):
        if args.var:
            raise UserError(f"{args.spec} is a sweep folder: its variables are fixed; --var applies to spec files")
        if args.dir and Path(args.dir).resolve() != Path(args.spec).resolve():
            raise UserError("--dir and a sweep folder as SPEC name different folders")
        return load_sweep(Path(args.spec)), Path(args.spec)
    if not need_expansion:
        folder = _sweep_dir(args, spec_name(args.spec))
        return load_sweep(folder), folder
    sweep = load_spec(args.spec, parse_var_overrides(args.var))
    return sweep, _sweep_dir(args, sweep.name)


def run(args: argparse.Namespace) -> int:
    from xchannel.sweep.cluster import load_profile
    from xchannel.sweep.jobs import read_json
    from xchannel.sweep.runner import SWEEP_FILE, format_status, job_states, select_jobs, submit_sweep

    if args.status:
        sweep, folder = load(args, need_expansion=False)
        print(f"sweep {sweep.name} in {folder}")
        print(format_status(job_states(sweep, folder, select_jobs(sweep, args.job)), tail=args.tail))
        stale = (read_json(folder / SWEEP_FILE) or {}).get("stale_jobs", [])
        if stale:
            print(f"({len(stale)} job folder(s) made by an earlier version of the spec are not part of it any more: "
                  f"{', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''})")
        return 0
    sweep, folder = load(args, need_expansion=True)
    if args.list:
        import json

        for job in select_jobs(sweep, args.job):
            print(f"{job.id}  ({job.kind})")
            print("  " + json.dumps(job.config, sort_keys=True))
        print(f"{len(select_jobs(sweep, args.job))} jobs; folder {folder}")
        return 0
    if args.profile_set and not args.profile:
        raise UserError("--profile-set needs --profile")
    if args.pdb and args.cluster != "debug":
        raise UserError("--pdb works with --cluster debug only")
    profile = load_profile(args.profile, args.profile_set) if args.profile else None
    report = submit_sweep(sweep, folder, args.cluster, profile, jobs=args.job or None, parallel=args.parallel,
                          wait=args.wait, pdb=args.pdb, progress=not args.no_progress and sys.stderr.isatty())
    if args.cluster == "slurm":
        if report.submitted and not args.wait:
            print(f"follow them with: xchannel sweep {folder} --status")
        if args.wait:
            print(format_status(job_states(sweep, folder, select_jobs(sweep, args.job)), tail=args.tail))
    elif report.submitted:
        print(f"{len(report.succeeded)} finished, {len(report.failed)} failed"
              + (f", {len(report.blocked)} blocked by a dependency without a result" if report.blocked else "")
              + (f"; see: xchannel sweep {folder} --status" if report.failed else ""))
    if not report.submitted:
        print(f"sweep {sweep.name}: nothing to run ({len(report.done)} done, {len(report.active)} pending or "
              f"running" + (f", {len(report.blocked)} blocked" if report.blocked else "") + ")")
    failed = report.failed or report.blocked or (args.wait and any(s.state == "failed"
                                                                   for s in job_states(sweep, folder)))
    return 1 if failed else 0
