"""The demo's PASCAL stage: Table 2 (Sec. 3.2) end to end on the embedded data set.

:func:`pascal_stage` fine-tunes the demo's AlexNet cross-channel encoder (trained by the colorization stage) with
gray (L) and color (Lab, zero-initialised ab weights) input on every PASCAL task, each with its ``demo`` preset
(few iterations, small scales; the protocol's code and configuration otherwise):

* classification on VOC2007 with fc8, fc6-8 and all layers fine-tuned (% mAP);
* detection with Fast R-CNN on VOC2007 (% mAP);
* segmentation with FCN-32s on VOC2012 (% mIU);

then, as baselines of the same width, a Gaussian and a k-means initialised AlexNet (gray input) on the columns
of :data:`BASELINE_RUNS`. Every encoder is prepared as for the paper's Table 2: BatchNorm folded, Krähenbühl et
al.'s data-dependent rescaling (for the Gaussian network with their within-layer initialisation first, without
which its activations vanish). The result JSON files go to ``results/demo/pascal/`` and Table 2 — the published
rows beside ours, ours labelled "embedded" — to ``results/demo/table2.md``, ``.csv`` and ``.json``
(:mod:`xchannel.reports.table2`). Each run's wall-clock and CPU seconds (all threads of the process) are recorded
in ``table2.json`` and in the stage's summary, with its headline's 95 % interval over the test images, what that
bootstrap cost (``bootstrap_seconds``) and, for classification, the mAP of random scores on the same labels.
"""

from __future__ import annotations

import dataclasses
import importlib
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.pascal import TASK_MODULES
from xchannel.pascal.record import TABLE2_COLUMNS
from xchannel.utils.io import atomic_write_json, slug

#: The runs of each encoder: (task, classification layers); the baselines run a subset of them.
ENCODER_RUNS: tuple[tuple[str, str], ...] = (("cls", "fc8"), ("cls", "fc6-8"), ("cls", "all"), ("det", ""),
                                             ("seg", ""))
BASELINE_RUNS: tuple[tuple[str, str], ...] = (("cls", "all"), ("det", ""))


@dataclass(frozen=True)
class DemoRun:
    """One fine-tuning run of the stage: task (cls, det, seg), encoder spec, input mode, classification layers."""

    task: str
    encoder: str
    input_mode: str
    layers: str = ""

    @property
    def name(self) -> str:
        encoder = "demo-alexnet" if self.encoder.endswith(".pt") else self.encoder.split(":")[0]
        parts = [self.task + (f"-{self.layers}" if self.layers else ""), encoder, self.input_mode]
        return "_".join(slug(p) for p in parts)


def demo_runs(encoder: str, width: float, baselines: bool = True) -> list[DemoRun]:
    """The stage's runs: the encoder in gray and color on every task (:data:`ENCODER_RUNS`), then the Gaussian
    and k-means baselines of the same width (gray, :data:`BASELINE_RUNS`)."""
    runs = [DemoRun(task, encoder, mode, layers) for mode in ("gray", "color") for task, layers in ENCODER_RUNS]
    if baselines:
        for base in (f"gaussian:width={width:g}", f"kmeans:width={width:g}"):
            runs += [DemoRun(task, base, "gray", layers) for task, layers in BASELINE_RUNS]
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


def pascal_stage(ctx: Any, baselines: bool = True) -> dict:
    """Run every PASCAL task on the demo encoder and the baselines, then write Table 2 (module docstring).

    ``ctx`` is the demo's :class:`~xchannel.demo.DemoContext`: ``ctx.data`` holds the embedded data set,
    ``ctx.outputs["encoder_checkpoint"]`` the demo AlexNet, ``ctx.results`` receives the files.
    """
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
    runs = demo_runs(str(checkpoint), _encoder_width(str(checkpoint)), baselines)
    summary: list[dict[str, Any]] = []
    for i, run in enumerate(runs, 1):
        print(f"   pascal {i}/{len(runs)}: {run.name}", flush=True)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        cfg = run_config(run, voc, out_dir / f"{run.name}.json", ctx.seed, ctx.progress)
        result = importlib.import_module(TASK_MODULES[run.task]).run_task(cfg)
        summary.append({"run": run.name, "task": run.task, "encoder": result["row"]["encoder"],
                        "input_mode": run.input_mode, "layers": run.layers or None,
                        "column": result["table2_column"], "metric": result["headline"]["metric"],
                        "value": result["headline"]["value"], "result": result["output"],
                        **_interval_summary(result["headline"]),
                        "seconds": round(time.perf_counter() - t0, 1),
                        "cpu_seconds": round(_cpu_seconds() - c0, 1)})
        print(f"      {result['headline']['metric']} {result['headline']['value']:.1f} "
              f"± {summary[-1]['half_width']:.1f} (95 % over test images) in {summary[-1]['seconds']:.0f} s",
              flush=True)
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
    })
    return {"runs": summary, "seconds_per_task": per_task, "table2": table["markdown_path"],
            "table2_csv": table["csv_path"], "table2_json": str(results / "table2.json")}


__all__ = ["BASELINE_RUNS", "DemoRun", "ENCODER_RUNS", "demo_runs", "pascal_stage", "run_config"]
