"""The demo's PASCAL stage: Table 2 (Sec. 3.2) end to end on the embedded data set.

:func:`pascal_stage` fine-tunes, each task with its ``demo`` preset (short schedules, small scales; the protocol's
code and configuration otherwise):

* the demo's AlexNet cross-channel encoder (the colorization stage's) with gray (L) input on every column, and with
  color input (Lab, zero-initialised ab weights) on classification with all layers fine-tuned;
* the calibration encoders, gray input, on every column: a supervised AlexNet trained on the embedded labels (the
  ``supervised`` stage; the "ImageNet labels" row) above, and a Gaussian AlexNet of the same width below, which
  every method is read against;
* a k-means initialised AlexNet on classification (all layers), the paper's k-means row.

The columns are classification with fc8, fc6-8 and all layers fine-tuned (% mAP), Fast R-CNN detection (% mAP)
and FCN-32s segmentation (% mIU). Every encoder is prepared as for the paper's Table 2: BatchNorm folded,
Krähenbühl et al.'s data-dependent rescaling (for the Gaussian network with their within-layer initialisation
first, without which its activations vanish). The runs go to ``workers`` processes of one thread each (two on a
2-core machine: more work per second than one process of two threads on these small batches); detection's
selective-search boxes are computed once before them. The result JSON files go to ``results/demo/pascal/`` and
Table 2, the published rows beside ours, to ``results/demo/table2.md``, ``.csv`` and ``.json``
(:mod:`xchannel.reports.table2`). Each run's wall-clock and CPU seconds are recorded in ``table2.json`` and in the
stage's summary, with its headline's 95 % interval over the test images, what that bootstrap cost
(``bootstrap_seconds``) and, for classification, the mAP of random scores on the same labels.
"""

from __future__ import annotations

import dataclasses
import importlib
import resource
import shutil
import time
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.pascal import TASK_MODULES
from xchannel.pascal.record import TABLE2_COLUMNS
from xchannel.utils.io import atomic_write_json, slug

ALL_COLUMNS: tuple[tuple[str, str], ...] = (("cls", "fc8"), ("cls", "fc6-8"), ("cls", "all"), ("det", ""),
                                           ("seg", ""))
#: (role, input mode, runs): the demo encoder and the calibration encoders on every column; the color variant
#: and the k-means row on the all-layers classification (the comparison sweep runs every column of every row).
RUN_PLAN: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("supervised", "gray", ALL_COLUMNS),
    ("gaussian", "gray", ALL_COLUMNS),
    ("ours", "gray", ALL_COLUMNS),
    ("ours", "color", (("cls", "all"),)),
    ("kmeans", "gray", (("cls", "all"),)),
)

#: Rough seconds of one run per task on one core (AVX2, fp32; table2.json's ``runs``): the stage starts the long
#: runs first so that no process idles at the end while another works through a detection run.
RUN_SECONDS = {"det": 120.0, "seg": 90.0, "cls": 30.0}


@dataclass(frozen=True)
class DemoRun:
    """One fine-tuning run of the stage: task (cls, det, seg), encoder spec, input mode, classification layers,
    and the encoder's name in file names."""

    task: str
    encoder: str
    input_mode: str
    layers: str = ""
    label: str = ""

    @property
    def name(self) -> str:
        encoder = self.label or self.encoder.split(":")[0]
        parts = [self.task + (f"-{self.layers}" if self.layers else ""), encoder, self.input_mode]
        return "_".join(slug(p) for p in parts)


def demo_runs(encoder: str, width: float, supervised: str | None = None, baselines: bool = True) -> list[DemoRun]:
    """The stage's runs (:data:`RUN_PLAN`): ``encoder`` is the demo AlexNet's checkpoint, ``supervised`` the
    supervised calibration encoder's (its rows are left out when None); the Gaussian and k-means networks have
    ``width``. ``baselines=False`` keeps the demo encoder's runs alone."""
    specs = {"ours": (encoder, "demo-alexnet"), "supervised": (supervised, "supervised"),
             "gaussian": (f"gaussian:width={width:g}", ""), "kmeans": (f"kmeans:width={width:g}", "")}
    runs = []
    for role, mode, columns in RUN_PLAN:
        spec, label = specs[role]
        if spec is None or (role != "ours" and not baselines):
            continue
        runs += [DemoRun(task, spec, mode, layers, label) for task, layers in columns]
    return runs


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_config(run: DemoRun, voc: Path, out: Path, seed: int, progress: bool) -> Any:
    """The task configuration of ``run``: the task's ``demo`` preset with the run's encoder, input and output."""
    fields: dict[str, Any] = {"encoder": run.encoder, "input_mode": run.input_mode, "voc": str(voc),
                              "out": str(out), "seed": seed, "progress": progress}
    if run.task == "cls":
        fields["layers"] = run.layers
    if run.task == "det":
        fields["save_model"] = False
    return importlib.import_module(TASK_MODULES[run.task]).config("demo", **fields)


def _encoder_width(checkpoint: str) -> float:
    from xchannel.checkpoints import load_network

    model, _ = load_network(checkpoint)
    width = getattr(model, "hparams", {}).get("width")
    if width is None:
        raise UserError(f"{checkpoint}: the PASCAL stage expects the demo AlexNet (a width hyperparameter)")
    return float(width)


def _interval_summary(headline: dict[str, Any]) -> dict[str, Any]:
    """The headline's 95 % interval over test images (and, for classification, the random-score mAP) and what
    computing them cost."""
    ci = headline["uncertainty"]
    out = {"ci95": ci["ci95"], "half_width": ci["half_width"], "bootstrap_seconds": ci["bootstrap"]["seconds"]}
    if "chance" in headline:
        out["chance"] = {"mean": headline["chance"]["mean"], "range95": headline["chance"]["range95"]}
    return out


def run_one(run: DemoRun, voc: Path, out_dir: Path, seed: int, progress: bool, threads: int = 0) -> dict[str, Any]:
    """Fine-tune and score one run (in this process, or in a worker of :func:`pascal_stage` with ``threads``
    torch threads); its summary entry."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    cfg = run_config(run, voc, out_dir / f"{run.name}.json", seed, progress)
    result = importlib.import_module(TASK_MODULES[run.task]).run_task(cfg)
    return {"run": run.name, "task": run.task, "encoder": result["row"]["encoder"], "input_mode": run.input_mode,
            "layers": run.layers or None, "column": result["table2_column"], "metric": result["headline"]["metric"],
            "value": result["headline"]["value"], "result": result["output"], **_interval_summary(result["headline"]),
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(_cpu_seconds() - c0, 1)}


def warm_proposals(voc: Path, workers: int, progress: bool) -> dict[str, Any]:
    """Compute (or find in the cache) the selective-search boxes of detection's demo splits once, in ``workers``
    processes, so that the detection runs find them cached instead of each computing them."""
    from xchannel.data.voc import VOCDetection
    from xchannel.pascal.detection.data import proposals_for

    cfg = run_config(DemoRun("det", "gaussian", "gray"), voc, Path("unused.json"), 0, progress)
    cfg.proposals.workers = max(1, workers)
    info = {}
    for which, split in (("train", cfg.train_split), ("test", cfg.test_split)):
        _, info[which] = proposals_for(cfg, VOCDetection(cfg.voc, cfg.year, split, clip_boxes=True), which)
    return info


def pascal_stage(ctx: Any, baselines: bool = True) -> dict:
    """Run every PASCAL task on the demo encoder and the calibration encoders, then write Table 2 (module
    docstring).

    ``ctx`` is the demo's :class:`~xchannel.demo.DemoContext`: ``ctx.data`` holds the embedded data set,
    ``ctx.outputs["encoder_checkpoint"]`` the demo AlexNet, ``ctx.outputs.get("supervised_checkpoint")`` the
    supervised calibration encoder, ``ctx.threads`` the cores to use; ``ctx.results`` receives the files.
    """
    from concurrent.futures import ProcessPoolExecutor

    from xchannel.reports.table2 import load_published, write_table2

    checkpoint = ctx.outputs.get("encoder_checkpoint")
    if not checkpoint:
        raise UserError("the PASCAL stage needs the demo AlexNet: run the colorization stage first "
                        "(xchannel demo --only colorization pascal)")
    voc = Path(ctx.data) / "VOCdevkit"
    out_dir = Path(ctx.results) / "pascal"
    if out_dir.exists():  # results of an earlier demo (another encoder) would add stale rows to the table
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    runs = demo_runs(str(checkpoint), _encoder_width(str(checkpoint)), ctx.outputs.get("supervised_checkpoint"),
                     baselines)
    workers = max(1, min(ctx.threads, len(runs)))
    runs.sort(key=lambda r: -RUN_SECONDS[r.task])  # longest first: the processes finish together
    t0 = time.perf_counter()
    proposals = warm_proposals(voc, workers, ctx.progress) if any(r.task == "det" for r in runs) else {}
    proposal_seconds = round(time.perf_counter() - t0, 1)
    print(f"   pascal: {len(runs)} runs in {workers} process(es) of one thread", flush=True)
    summary: list[dict[str, Any]] = []
    if workers == 1:
        done = (run_one(run, voc, out_dir, ctx.seed, ctx.progress) for run in runs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        done = pool.map(partial(run_one, voc=voc, out_dir=out_dir, seed=ctx.seed, progress=False, threads=1), runs)
    try:
        for i, entry in enumerate(done, 1):
            summary.append(entry)
            print(f"   pascal {i}/{len(runs)}: {entry['run']}: {entry['metric']} {entry['value']:.1f} "
                  f"± {entry['half_width']:.1f} (95 % over test images) in {entry['seconds']:.0f} s", flush=True)
    finally:
        if workers > 1:
            pool.shutdown()
    per_task = {task: {"seconds": round(sum(r["seconds"] for r in summary if r["task"] == task), 1),
                       "cpu_seconds": round(sum(r["cpu_seconds"] for r in summary if r["task"] == task), 1),
                       "bootstrap_seconds": round(sum(r["bootstrap_seconds"] for r in summary
                                                      if r["task"] == task), 3)}
                for task in TASK_MODULES}
    results = Path(ctx.results)
    table = write_table2([out_dir], results)
    atomic_write_json(results / "table2.json", {
        "dataset": "embedded (xchannel make-data): not comparable with the published PASCAL VOC numbers",
        "columns": {key: heading for key, (_, heading) in TABLE2_COLUMNS.items()},
        "published": load_published(),
        "measured": [dataclasses.asdict(r) for r in table["rows"]],
        "runs": summary,
        "seconds_per_task": per_task,
        "workers": workers,
        "proposals": {"seconds": proposal_seconds, **proposals},
    })
    return {"runs": summary, "seconds_per_task": per_task, "workers": workers, "proposal_seconds": proposal_seconds,
            "table2": table["markdown_path"], "table2_csv": table["csv_path"],
            "table2_json": str(results / "table2.json")}


__all__ = ["ALL_COLUMNS", "DemoRun", "RUN_PLAN", "RUN_SECONDS", "demo_runs", "pascal_stage", "run_config", "run_one",
           "warm_proposals"]
