"""``make demo``: the main job on the embedded default data set, end to end.

Stages run in order; each is a function ``stage(ctx) -> dict`` named in :data:`STAGES` (``"module:function"``), so
a new benchmark adds one entry. Every stage writes its numbers and figures under ``ctx.results`` (the committed
``results/demo/``) and its bulky intermediates (data, checkpoints) under ``ctx.work`` (``runs/demo/``, ignored).
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from xchannel.reports.format import plus_minus
from xchannel.utils.io import atomic_write_json, atomic_write_text


@dataclass
class DemoContext:
    results: Path
    work: Path
    seed: int = 0
    progress: bool = True
    threads: int = 1  # the cores the stages may use (torch threads, or processes of one thread)
    vgg: bool = False  # also train the VGG colorizer (--vgg)
    outputs: dict = field(default_factory=dict)  # what earlier stages produced (paths, numbers)

    @property
    def data(self) -> Path:
        return self.work / "data"


STAGES: list[tuple[str, str]] = [
    ("data", "xchannel.demo:make_data_stage"),
    ("colorization", "xchannel.demo:colorization_stage"),
    ("supervised", "xchannel.demo:supervised_stage"),
    ("probes", "xchannel.probe.demo:probe_stage"),
    ("pascal", "xchannel.pascal.demo:pascal_stage"),
    ("table1", "xchannel.evaluation.demo:table1_stage"),
]


def make_data_stage(ctx: DemoContext) -> dict:
    """The embedded data set (ImageFolder + VOCdevkit trees), drawn afresh from its seed (VOC2012, which no demo
    protocol reads, left out)."""
    from xchannel.data.synthetic import SyntheticSpec, make_dataset

    manifest = make_dataset(ctx.data, SyntheticSpec(seed=ctx.seed, voc2012=False), overwrite=True,
                            progress=ctx.progress, workers=ctx.threads)
    return {"path": str(ctx.data), "counts": manifest.get("counts", {})}


def _train_demo(ctx: DemoContext, name: str, overrides: tuple[str, ...] = (), run: str = "") -> dict:
    from xchannel.configs import resolve
    from xchannel.train.config import TrainConfig
    from xchannel.train.engine import train
    from xchannel.utils.config import build_config

    out = ctx.work / (run or name)
    if out.exists():
        shutil.rmtree(out)
    cfg = build_config(TrainConfig, resolve(name), [f"data.train={ctx.data / 'imagenet' / 'train'}",
                                                    f"data.val={ctx.data / 'imagenet' / 'val'}",
                                                    f"out={out}", f"seed={ctx.seed}", *overrides])
    summary = train(cfg, progress=ctx.progress)
    samples = sorted((out / "samples").glob("samples_*.png"))
    if samples:
        shutil.copyfile(samples[-1], ctx.results / f"{run or name}_samples.png")
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in losses if "loss" in r]
    return {"config": name, "checkpoint": summary["checkpoint"], "steps": summary["step"],
            "loss_first": losses[0]["loss"] if losses else None,
            "loss_last": losses[-1]["loss"] if losses else None, "images_per_s": summary["images_per_s"],
            "val": summary["val"], "data": summary["data"]}


#: Networks the colorization stage trains: the AlexNet cross-channel encoder always; the VGG colorizer with --vgg
#: (326 of the stage's 502 s on 2 cores without native bf16, which with the calibration encoders would take the demo
#: past 15 minutes there).
def colorization_stage(ctx: DemoContext) -> dict:
    """Train the AlexNet cross-channel encoder (and with ``ctx.vgg`` the VGG colorizer) briefly; show that they
    learned."""
    out = {name: _train_demo(ctx, name) for name in ("demo-alexnet", "demo-vgg") if name != "demo-vgg" or ctx.vgg}
    rows = ["| network | steps | loss (first log → last) | AuC raw | AuC rebal | gray AuC raw | gray AuC rebal |",
            "|---|---|---|---|---|---|---|"]
    for name, r in out.items():
        v = r["val"]
        cells = [plus_minus(100 * v[k], 50 * (v["ci95"][k][1] - v["ci95"][k][0])) if "ci95" in v else
                 f"{100 * v[k]:.1f}" for k in ("auc", "auc_rebal", "gray_auc", "gray_auc_rebal")]
        rows.append(f"| {name} | {r['steps']} | {r['loss_first']:.3f} → {r['loss_last']:.3f} | "
                    + " | ".join(cells) + " |")
    images = next(iter(out.values()))["val"].get("val_images")
    atomic_write_text(ctx.results / "colorization.md",
                      f"Colorization on the embedded data set ({images} held-out val images; AuC in %, annealed mean "
                      "T = 0.38; the gray baseline predicts a = b = 0; ± is the half-width of the 95 % interval of "
                      "a bootstrap over the images)\n\n" + "\n".join(rows) + "\n")
    ctx.outputs["encoder_checkpoint"] = out["demo-alexnet"]["checkpoint"]
    if "demo-vgg" in out:
        ctx.outputs["colorizer_checkpoint"] = out["demo-vgg"]["checkpoint"]
    return out


#: The supervised calibration encoder: ``demo-supervised`` trained on L (Fig. 7's gray "ImageNet labels" line), as
#: the demo encoder sees L, 450 steps (73 % val top-1 on 800 val images, 16 classes, chance 6 %; see the config).
SUPERVISED_OVERRIDES = ("pretext.input=gray",)


def supervised_stage(ctx: DemoContext) -> dict:
    """Train the supervised calibration encoder on the embedded labels: the ceiling every self-supervised row of
    Fig. 7 and Table 2 is read against (the Gaussian network is the floor)."""
    out = _train_demo(ctx, "demo-supervised", SUPERVISED_OVERRIDES, run="demo-supervised-gray")
    ctx.outputs["supervised_checkpoint"] = out["checkpoint"]
    return out


def _reuse_trained(ctx: DemoContext) -> None:
    """Let later stages run on their own (``--only probes``) with the networks an earlier demo trained."""
    from xchannel.train.checkpoint import list_checkpoints

    for key, name in (("encoder_checkpoint", "demo-alexnet"), ("colorizer_checkpoint", "demo-vgg"),
                      ("supervised_checkpoint", "demo-supervised-gray")):
        found = list_checkpoints(ctx.work / name) if (ctx.work / name).is_dir() else []
        if found:
            ctx.outputs[key] = str(found[0][1])


def choose_machine_settings(threads: int | None) -> dict:
    """Threads (given, or chosen from the machine's load: :func:`xchannel.runtime.choose_threads`) and what the
    runs' ``precision: auto`` resolves to here; printed and kept in ``summary.json``."""
    import torch

    from xchannel import runtime

    why = "--threads"
    if threads is None:
        threads, why = runtime.choose_threads()
    torch.set_num_threads(threads)
    precision = runtime.precision_record("auto", "cpu")
    print(f"== demo on {threads} thread(s) ({why}); {runtime.describe_precision(precision)}", flush=True)
    return {"threads": threads, "threads_why": why, "precision": precision, "cpu": runtime.cpu_capability()}


def run_demo(results: Path, work: Path, only: list[str] | None = None, seed: int = 0, progress: bool = True,
             threads: int | None = None, vgg: bool = False) -> dict:
    results.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    machine = choose_machine_settings(threads)
    ctx = DemoContext(results=results, work=work, seed=seed, progress=progress, threads=machine["threads"], vgg=vgg)
    _reuse_trained(ctx)
    report: dict = {}
    for name, target in STAGES:
        if only and name not in only and name != "data":
            continue
        module, fn = target.split(":")
        t0 = time.perf_counter()
        print(f"== demo stage: {name}", flush=True)
        out = getattr(importlib.import_module(module), fn)(ctx)
        report[name] = {**out, "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_json(results / f"{name}.json", report[name])
    # a run of some stages (--only) keeps the other stages' entries from an earlier run, marked as such
    summary = {name: {**entry, "earlier_run": True} for name, entry in _read_summary(results).items()
               if name not in report}
    summary.update({k: {"seconds": v["seconds"]} for k, v in report.items()})
    atomic_write_json(results / "summary.json", {**{name: summary[name] for name, _ in STAGES if name in summary},
                                                 "machine": machine})
    return report


def _read_summary(results: Path) -> dict:
    """The stage entries of an earlier run's ``summary.json`` (empty when there is none or it is unreadable)."""
    try:
        old = json.loads((results / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in old.items() if isinstance(v, dict)} if isinstance(old, dict) else {}
