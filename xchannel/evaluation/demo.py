"""The demo's Table 1 stage: colorization quality of the demo networks on the embedded data set, and Fig. 4.

Rows: the demo VGG colorizer (Fig. 2's network at reduced width; when trained, ``xchannel demo --vgg``), the demo
AlexNet cross-channel encoder used as a colorizer, and the paper's Gray and Random baselines, beside the references Ground Truth and Gray. The
"VGG Top-1" column uses the embedded data set's fixed classifier (:mod:`xchannel.evaluation.classifier`), trained
briefly on the colour training images and cached beside them; its Ground Truth and Gray entries are its accuracy on
the colour val images and on their gray versions. Images are evaluated whole (center crop of the shorter side)
at the scale the VGG colorizer was trained and validated at (:func:`training_scale`: 96 px with ``demo-vgg.yaml``;
without a VGG, the AlexNet's 128 px), and Fig. 4 likewise (of the VGG, else of the AlexNet). The VGG is sensitive to object scale: at the images' native 160 px, 1.7x its training scale,
its rebalanced AuC fell below the gray baseline's (README, "What `make demo` shows").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xchannel.errors import UserError

FIG4_IMAGES = 4


def _figure4_images(val: Path, n: int) -> list[Path]:
    """The first image of each of the first ``n`` classes (sorted), for a varied Fig. 4."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out = []
    for cls in sorted(p for p in val.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
        if files:
            out.append(files[0])
        if len(out) == n:
            break
    return out


def training_scale(checkpoint: str | Path, default: int = 160) -> int:
    """The shorter side that a training run's images were resized to (``data.resize``, else ``data.crop``), read from
    the ``config.json`` beside its checkpoint; ``default`` when there is none."""
    try:
        data = json.loads((Path(checkpoint).parent / "config.json").read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return int(data.get("resize") or data.get("crop") or default)


def _finished_checkpoint(run_dir: Path) -> str | None:
    """The final checkpoint of a finished training run in ``run_dir`` (from its summary.json), if any."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    ckpt = summary.get("checkpoint") if summary.get("status") == "finished" else None
    return ckpt if ckpt and Path(ckpt).is_file() else None


#: Val images Table 1 scores, evenly spaced over the 16 class folders (30 per class; the full 2400 would cost
#: the stage 15x its time for a table of single numbers).
TABLE1_IMAGES = 480


def table1_stage(ctx: Any) -> dict:
    """Table 1 (``results/demo/table1.{md,csv,json}``) and Fig. 4 (``results/demo/figure4.png``)."""
    from xchannel.evaluation.colorization import Table1Config, run_table1
    from xchannel.evaluation.temperature import make_figure4

    vgg = ctx.outputs.get("colorizer_checkpoint") or _finished_checkpoint(ctx.work / "demo-vgg")
    alexnet = ctx.outputs.get("encoder_checkpoint") or _finished_checkpoint(ctx.work / "demo-alexnet")
    if not alexnet:
        raise UserError(f"the table1 stage evaluates the checkpoints of the colorization stage, not found in "
                        f"{ctx.work}: run that stage first (xchannel demo --only colorization table1)")
    data = ctx.data / "imagenet"
    colorizer = vgg or alexnet  # the scale and Fig. 4: the VGG's when there is one (xchannel demo --vgg)
    size = training_scale(colorizer)
    rows = ([f"VGG colorizer (demo)={vgg}"] if vgg else []) + [f"AlexNet colorizer (demo)={alexnet}", "random"]
    cfg = Table1Config(data=str(data / "val"), train=str(data / "train"), checkpoints=rows,
                       classifier="embedded", size=size, resize=None, workers=0, batch_size=16, seed=ctx.seed,
                       max_images=TABLE1_IMAGES, out=str(ctx.results))
    result = run_table1(cfg, progress=ctx.progress)
    name = "VGG colorizer" if vgg else "AlexNet cross-channel encoder"
    fig = make_figure4(colorizer, _figure4_images(data / "val", FIG4_IMAGES), ctx.results / "figure4.png",
                       size=size, max_images=FIG4_IMAGES, show_truth=True,
                       title=f"Annealed mean of the demo {name} at decreasing T (Fig. 4); last: ground truth")
    table = json.loads(Path(result["paths"]["json"]).read_text())
    rows = {r["name"]: r for r in table["rows"]}
    ctx.outputs["table1"] = result["paths"]
    return {**table, "figure4": fig,
            "summary": {name: {"auc_nonrebal": r["auc_nonrebal"], "auc_rebal": r["auc_rebal"],
                               "top1": r["vgg_top1"]} for name, r in rows.items()}}
