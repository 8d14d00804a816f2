"""The demo's PASCAL stage: Table 2 (Sec. 3.2) end to end on the embedded data set.

:func:`pascal_stage` fine-tunes the demo's AlexNet cross-channel encoder (trained by the colorization stage) with
gray (L) and color (Lab, zero-initialised ab weights) input on every PASCAL task, each with its ``demo`` preset
(few iterations, small scales; the protocol's code and configuration otherwise):

* classification on VOC2007 with fc8, fc6-8 and all layers fine-tuned (% mAP);
* detection with Fast R-CNN on VOC2007 (% mAP), when :mod:`xchannel.pascal.detection` is installed;
* segmentation with FCN-32s on VOC2012 (% mIU);

then, as baselines of the same width, a Gaussian and a k-means initialised AlexNet (gray input, classification
with all layers fine-tuned; their other columns are left out to keep the stage within minutes). The result JSON
files go to ``results/demo/pascal/`` and
Table 2 — the published rows beside ours, ours labelled "embedded" — to ``results/demo/table2.md``, ``.csv`` and
``.json`` (:mod:`xchannel.pascal.table2`).
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.pascal.common import TABLE2_COLUMNS, slug
from xchannel.utils.io import atomic_write_json

TASK_MODULES = {"cls": "xchannel.pascal.classification", "det": "xchannel.pascal.detection",
                "seg": "xchannel.pascal.segmentation"}


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


def available_tasks() -> list[str]:
    """The PASCAL tasks whose modules are installed (detection is a separate module)."""
    out = []
    for task, module in TASK_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        out.append(task)
    return out


def demo_runs(encoder: str, width: float, tasks: list[str], baselines: bool = True) -> list[DemoRun]:
    """The stage's runs: the encoder in gray and color on every task (classification in its three layer modes),
    then the Gaussian and k-means baselines (gray; classification with all layers)."""
    runs: list[DemoRun] = []
    for mode in ("gray", "color"):
        if "cls" in tasks:
            runs += [DemoRun("cls", encoder, mode, layers) for layers in ("fc8", "fc6-8", "all")]
        runs += [DemoRun(task, encoder, mode) for task in ("det", "seg") if task in tasks]
    if baselines:
        for base in (f"gaussian:width={width:g}", f"kmeans:width={width:g}"):
            if "cls" in tasks:
                runs.append(DemoRun("cls", base, "gray", "all"))
    return runs


def run_config(run: DemoRun, voc: Path, out: Path, seed: int, progress: bool) -> Any:
    """The task configuration of ``run``: the task's ``demo`` preset with the run's encoder, input and output."""
    fields: dict[str, Any] = {"encoder": run.encoder, "input_mode": run.input_mode, "voc": str(voc),
                              "out": str(out), "seed": seed, "progress": progress}
    if run.task == "cls":
        from xchannel.pascal.classification import config

        return config("demo", layers=run.layers, **fields)
    if run.task == "seg":
        from xchannel.pascal.segmentation import config

        return config("demo", **fields)
    from xchannel.pascal.detection import preset_config

    return preset_config("demo", save_model=False, **fields)


def _encoder_width(checkpoint: str) -> float:
    from xchannel.checkpoints import load_network

    model, _ = load_network(checkpoint)
    width = getattr(model, "hparams", {}).get("width")
    if width is None:
        raise UserError(f"{checkpoint}: the PASCAL stage expects the demo AlexNet (a width hyperparameter)")
    return float(width)


def pascal_stage(ctx: Any, baselines: bool = True) -> dict:
    """Run every PASCAL task on the demo encoder and the baselines, then write Table 2 (module docstring).

    ``ctx`` is the demo's :class:`~xchannel.demo.DemoContext`: ``ctx.data`` holds the embedded data set,
    ``ctx.outputs["encoder_checkpoint"]`` the demo AlexNet, ``ctx.results`` receives the files.
    """
    from xchannel.pascal.table2 import load_published, write_table2

    checkpoint = ctx.outputs.get("encoder_checkpoint")
    if not checkpoint:
        raise UserError("the PASCAL stage needs the demo AlexNet: run the colorization stage first "
                        "(xchannel demo --only colorization pascal)")
    voc = Path(ctx.data) / "VOCdevkit"
    out_dir = Path(ctx.results) / "pascal"
    if out_dir.exists():  # results of an earlier demo (another encoder) would add stale rows to the table
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tasks = available_tasks()
    runs = demo_runs(str(checkpoint), _encoder_width(str(checkpoint)), tasks, baselines)
    summary: list[dict[str, Any]] = []
    for i, run in enumerate(runs, 1):
        print(f"   pascal {i}/{len(runs)}: {run.name}", flush=True)
        t0 = time.perf_counter()
        cfg = run_config(run, voc, out_dir / f"{run.name}.json", ctx.seed, ctx.progress)
        result = importlib.import_module(TASK_MODULES[run.task]).run_task(cfg)
        summary.append({"run": run.name, "task": run.task, "encoder": result["row"]["encoder"],
                        "input_mode": run.input_mode, "layers": run.layers or None,
                        "column": result["table2_column"], "metric": result["headline"]["metric"],
                        "value": result["headline"]["value"], "result": result["output"],
                        "seconds": round(time.perf_counter() - t0, 1)})
    results = Path(ctx.results)
    table = write_table2([out_dir], results)
    atomic_write_json(results / "table2.json", {
        "dataset": "embedded (xchannel make-data): not comparable with the published PASCAL VOC numbers",
        "columns": {key: heading for key, (_, heading) in TABLE2_COLUMNS.items()},
        "published": load_published(),
        "measured": [dataclasses.asdict(r) for r in table["rows"]],
        "runs": summary,
    })
    skipped = [t for t in TASK_MODULES if t not in tasks]
    return {"runs": summary, "tasks": tasks, "tasks_missing": skipped, "table2": table["markdown_path"],
            "table2_csv": table["csv_path"], "table2_json": str(results / "table2.json")}


__all__ = ["DemoRun", "available_tasks", "demo_runs", "pascal_stage", "run_config"]
