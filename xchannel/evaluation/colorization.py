"""``xchannel evaluate colorization``: Table 1 of the paper for any colorizer (Sec. 3.1, "Evaluating colorization
quality").

Columns (the paper's, in its order)
-----------------------------------
* **Params (MB), Feats (MB), Runtime (ms)**: the model's cost. Params: fp32 bytes of the weights (the paper's 129 MB
  is the 32.2 M parameters of the full network). Feats: fp32 bytes of the distinct activation tensors that the
  network's leaf modules output for one 256 x 256 input (in-place ReLUs add nothing), plus the input. Runtime: the
  median over a few timed forward passes + decoding of one 256 x 256 image on the evaluation device. The paper
  measured them with Caffe on a Titan X GPU: compare our rows with each other, not with the paper's.
* **AuC non-rebal (%)** and **AuC rebal (%)**: the area under the cumulative distribution of the per-pixel ab error
  over thresholds 0..150, normalised (Sec. 3.1, after Deshpande et al.); the rebalanced variant weights each pixel
  inversely to the probability of its ground-truth colour class (Eq. 4 with lambda = 0), by default with the
  authors' ImageNet prior (:class:`xchannel.metrics.colorization.AbAucMeter`).
* **VGG Top-1 Class Acc (%)**: semantic interpretability: the top-1 accuracy of a fixed classifier, trained on real
  colour photos, on the colorized images (:mod:`xchannel.evaluation.classifier`): torchvision's VGG-16 from a
  user-provided ImageNet weights file, or on the embedded data set a small CNN that xchannel trains on its colour
  training images. The paper: 68.3 on the ground-truth colour images, 52.7 on gray images.
* **AMT Labeled Real (%)**: the colorization Turing test (:mod:`xchannel.turing`); filled from a report of
  ``xchannel turing-test report --json`` given with ``--amt`` (method folder name = row name), else empty.

Rows are colorizer specs: a checkpoint path (an xchannel colorizer, classification or L2, or the authors' released
``colorization_release_v2`` weights), or the baselines ``gray`` (a = b = 0 everywhere) and ``random`` (the colours
of a random training image, as in the paper: the image keeps its own L and takes the ab of a training image drawn
with a seeded generator per evaluated image). ``NAME=SPEC`` sets a row's name. The reference rows Ground Truth and
Gray are always evaluated: the classifier column means something only beside them.

Protocol: every image of ``--data`` (an ImageFolder tree or an image list) is resized (shorter side ``--resize``,
PIL bicubic) and center-cropped to ``--size``; the network sees the crop's L (CIE Lab, D65) and predicts ab at the
crop's resolution (annealed mean, T = 0.38, Sec. 2.3; L2 models regress ab). Images without colour (the released
gray mask: no ``|a|`` or ``|b|`` above 5) have no colour to predict and are left out unless ``--keep-gray``;
unreadable images are skipped and counted. One streaming pass serves every row.

Output in ``--out``: ``table1.md`` and ``table1.csv`` (our rows, labelled with what they were measured on, then the
paper's rows with their source) and ``table1.json`` (numbers, counts, classifier, and the configuration of the run),
rendered by :mod:`xchannel.reports.table1`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from xchannel import color as C
from xchannel import runtime
from xchannel.color import ANNEAL_T
from xchannel.errors import UserError
from xchannel.evaluation.classifier import FixedClassifier
from xchannel.metrics.colorization import AbAucMeter
from xchannel.reports.table1 import write_table1
from xchannel.utils.config import to_dict

HELP = "Table 1: AuC (raw, class-rebalanced) and classifier top-1 on colorized images, beside the paper's numbers."
DESCRIPTION = __doc__

COST_INPUT = 256  # side of the image used for the Params / Feats / Runtime columns (the released pipeline's input)


# --------------------------------------------------------------------------------------------------------------
# Colorizers


@dataclass
class EvalBatch:
    """One batch of evaluated images on the evaluation device."""

    rgb: torch.Tensor  # N x 3 x H x W, sRGB in [0, 1]
    lab: torch.Tensor  # N x 3 x H x W, CIE Lab
    labels: torch.Tensor  # N, class index (-1: none)
    index: torch.Tensor  # N, index of each image in the data set

    @property
    def L(self) -> torch.Tensor:
        return self.lab[:, :1]

    @property
    def ab(self) -> torch.Tensor:
        return self.lab[:, 1:]


class Colorizer:
    """A named way to produce ab from a batch (a row of Table 1)."""

    kind = "network"

    def __init__(self, name: str) -> None:
        self.name = name

    def colorize(self, batch: EvalBatch) -> torch.Tensor:
        """Predicted ab, N x 2 x H x W (same size as the batch)."""
        raise NotImplementedError

    def lab(self, batch: EvalBatch, ab: torch.Tensor) -> torch.Tensor:
        """The colorized image in Lab: the image's own L with the predicted ab."""
        return torch.cat([batch.L, ab.to(batch.L.dtype)], dim=1)

    def rgb(self, batch: EvalBatch, ab: torch.Tensor) -> torch.Tensor:
        """The colorized image the classifier sees, in sRGB (out-of-gamut colours clipped)."""
        return C.lab_to_rgb(self.lab(batch, ab))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}


class GroundTruth(Colorizer):
    """The real colour image (AuC 100 by definition; the classifier's accuracy on real photos)."""

    kind = "reference"

    def __init__(self, name: str = "Ground Truth") -> None:
        super().__init__(name)

    def colorize(self, batch: EvalBatch) -> torch.Tensor:
        return batch.ab

    def rgb(self, batch: EvalBatch, ab: torch.Tensor) -> torch.Tensor:
        return batch.rgb


class Gray(Colorizer):
    """Table 1's Gray baseline: every pixel gets (a, b) = (0, 0)."""

    kind = "baseline"

    def __init__(self, name: str = "Gray") -> None:
        super().__init__(name)

    def colorize(self, batch: EvalBatch) -> torch.Tensor:
        return torch.zeros_like(batch.ab)


class RandomColors(Colorizer):
    """Table 1's Random baseline: "copies the colors from a random image from the training set".

    Evaluated image ``i`` keeps its L and takes the ab of training image :meth:`source_index` ``(i)``, drawn by a
    generator seeded with ``(seed, i)`` (independent of batching and workers). ``source`` must return images of the
    evaluated size (the same transform as the evaluated set); an unreadable source image is replaced by the next
    readable one.
    """

    kind = "baseline"

    def __init__(self, source: Dataset, seed: int = 0, name: str = "Random") -> None:
        super().__init__(name)
        if len(source) == 0:
            raise UserError("random baseline: the training set holds no images")
        self.source = source
        self.seed = int(seed)

    def source_index(self, i: int) -> int:
        """The training image whose colours evaluated image ``i`` receives (before skipping unreadable ones)."""
        return int(np.random.default_rng([self.seed, int(i)]).integers(len(self.source)))

    def source_ab(self, i: int) -> tuple[torch.Tensor, int]:
        """(ab 2 x H x W, index of the training image used) for evaluated image ``i``."""
        from xchannel.data.images import Skipped

        j = self.source_index(i)
        for k in range(len(self.source)):
            item = self.source[(j + k) % len(self.source)]
            if not isinstance(item, Skipped):
                img = item["image"]
                img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
                return C.rgb_to_lab(img[None])[0, 1:], (j + k) % len(self.source)
        raise UserError("random baseline: no readable image in the training set")

    def colorize(self, batch: EvalBatch) -> torch.Tensor:
        abs_ = [self.source_ab(int(i))[0] for i in batch.index]
        out = torch.stack([C.upsample_ab(ab[None], tuple(batch.ab.shape[-2:]))[0] for ab in abs_])
        return out.to(batch.ab.device, batch.ab.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed, "source_images": len(self.source)}


class NetworkColorizer(Colorizer):
    """A trained network: ab = annealed mean at temperature ``T`` (classification) or the regression (L2)."""

    def __init__(self, model: nn.Module, info: dict[str, Any], name: str, T: float = ANNEAL_T,
                 autocast: bool = False, path: str | None = None) -> None:
        super().__init__(name)
        self.model = model.eval()
        self.info = info
        self.T = float(T)
        self.autocast = autocast
        self.path = path

    @property
    def loss_kind(self) -> str:
        return str(self.info.get("loss_kind", "classification"))

    @torch.no_grad()
    def colorize(self, batch: EvalBatch) -> torch.Tensor:
        from xchannel.colorize import predict_ab

        L = batch.L.to(next(self.model.parameters()).device)
        with torch.autocast(L.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            ab = predict_ab(self.model, L, self.T, self.loss_kind)
        return ab.float().to(batch.ab.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "checkpoint": self.path, "source": self.info.get("source"),
                "loss_kind": self.loss_kind, "model": getattr(self.model, "registry_name", type(self.model).__name__),
                "hparams": dict(getattr(self.model, "hparams", {})),
                "temperature": self.T if self.loss_kind != "l2" else None}


BASELINES = ("gray", "random", "ground-truth")


def split_spec(spec: str) -> tuple[str | None, str]:
    """``"NAME=SPEC"`` -> (NAME, SPEC); a spec without ``=`` (or an existing file whose name holds one) has no
    name."""
    if "=" in spec and not Path(spec).exists():
        name, _, rest = spec.partition("=")
        if not name.strip() or not rest.strip():
            raise UserError(f"colorizer spec {spec!r}: expected NAME=SPEC with both parts non-empty")
        return name.strip(), rest.strip()
    return None, spec


def build_colorizer(spec: str, *, T: float = ANNEAL_T, device: torch.device | str = "cpu",
                    train_set: Dataset | None = None, seed: int = 0, autocast: bool = False) -> Colorizer:
    """A colorizer from a spec: ``gray``, ``random`` (needs ``train_set``), ``ground-truth``, or a checkpoint path
    (xchannel checkpoint or the released ECCV16 weights), each optionally prefixed by ``NAME=``."""
    name, what = split_spec(spec)
    key = what.lower()
    if key == "gray":
        return Gray(name or "Gray")
    if key in ("ground-truth", "gt"):
        return GroundTruth(name or "Ground Truth")
    if key == "random":
        if train_set is None:
            raise UserError("the random baseline copies colours from training images: give --train DIR (an "
                            "ImageFolder tree or image list of training images)")
        return RandomColors(train_set, seed, name or "Random")
    from xchannel.checkpoints import load_network

    path = Path(what)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint (a colorizer spec is a checkpoint file, 'gray' or 'random')")
    model, info = load_network(path)
    if getattr(model, "in_channels", 1) != 1:
        raise UserError(f"{path}: this network takes Lab input (in_channels={model.in_channels}); a colorizer "
                        f"takes L only")
    if getattr(model, "geometry", "pretext") != "pretext":
        raise UserError(f"{path}: an AlexNet in the {model.geometry} geometry has no dense colorization head")
    if name is None:
        name = (f"released weights ({path.name})" if info.get("source") == "official_eccv16"
                else f"{getattr(model, 'registry_name', 'network')} ({path.parent.name}/{path.name})")
    return NetworkColorizer(model.to(device), info, name, T, autocast, str(path))


# --------------------------------------------------------------------------------------------------------------
# Model cost (Params, Feats, Runtime)


@torch.no_grad()
def model_cost(colorizer: NetworkColorizer, size: int = COST_INPUT, repeats: int = 3) -> dict[str, float]:
    """Params (MB), Feats (MB) and Runtime (ms) of a network for one ``size`` x ``size`` image (see the module
    docstring for the definitions; MB = 10^6 bytes, fp32)."""
    from xchannel.colorize import predict_ab

    model = colorizer.model
    device = next(model.parameters()).device
    params_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    L = torch.full((1, 1, size, size), 50.0, device=device)
    # distinct storages (an in-place ReLU returns its input's); the tensors are held until the end of the pass so
    # that a freed activation's memory cannot be reused by a later one and be counted once for both
    kept: dict[int, torch.Tensor] = {L.untyped_storage().data_ptr(): L}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                kept.setdefault(t.untyped_storage().data_ptr(), t)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model(L)
    finally:
        for h in handles:
            h.remove()
    feats_mb = sum(t.untyped_storage().nbytes() // t.element_size() for t in kept.values()) * 4 / 1e6
    kept.clear()
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=colorizer.autocast):
            predict_ab(model, L, colorizer.T, colorizer.loss_kind)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r:  # the first pass is a warm-up
            times.append(1000 * (time.perf_counter() - t0))
    return {"params_mb": params_mb, "feats_mb": feats_mb, "runtime_ms": statistics.median(times)}


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def update_meters(meters: Sequence[AbAucMeter], preds: Sequence[torch.Tensor], true_ab: torch.Tensor) -> None:
    """``meters[i].update(preds[i], true_ab)`` for every i, finding the ground truth's colour classes (its nearest
    bins, the costly part) once for all rows instead of once per row."""
    classes = C.nearest_bins(true_ab.float(), 1)[0]
    for meter, pred in zip(meters, preds):
        meter.update(pred, true_ab, classes)


@dataclass
class RowResult:
    """One row of Table 1 as measured."""

    name: str
    kind: str
    auc_nonrebal: float  # in [0, 1]
    auc_rebal: float
    vgg_top1: float | None  # in [0, 1], None without classifier
    correct: int
    classified: int
    params_mb: float | None = None
    feats_mb: float | None = None
    runtime_ms: float | None = None
    amt_labeled_real: float | None = None  # in [0, 1]
    amt_se: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: the AuCs (in %) with their 95 % intervals over the images (Interval.to_dict); the rebalanced one is None
    #: when the weights come from the evaluated data (``prior="data"``, which the resampling would change)
    auc_nonrebal_ci: dict[str, Any] | None = None
    auc_rebal_ci: dict[str, Any] | None = None


def evaluate(dataset: Dataset, colorizers: Sequence[Colorizer], classifier: FixedClassifier | None = None, *,
             batch_size: int = 16, workers: int = 0, device: torch.device | str = "cpu", keep_gray: bool = False,
             max_images: int = 0, prior: torch.Tensor | str | None = None, autocast: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """One streaming pass over ``dataset`` (items ``{"image": uint8 or float 3 x H x W, "label", "has_color",
    "index"}``, bad ones :class:`~xchannel.data.images.Skipped`) scoring every colorizer.

    Returns ``{"rows": [RowResult...], "images", "gray_left_out", "skipped"...}``. ``prior`` is passed to
    :meth:`AbAucMeter.auc` for the rebalanced column (None: the authors' ImageNet prior; ``"data"``: the evaluated
    images' own class frequencies).
    """
    from tqdm import tqdm

    from xchannel.data.images import SkipCounter, collate_skip

    if not colorizers:
        raise UserError("nothing to evaluate: give at least one colorizer")
    names = [c.name for c in colorizers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two rows have the same name {', '.join(map(repr, dup))}: name them with NAME=SPEC")
    device = torch.device(device)
    if max_images and len(dataset) > max_images:  # evenly spaced, so that every class of a sorted folder is in it
        dataset = torch.utils.data.Subset(dataset, np.linspace(0, len(dataset) - 1, max_images).round().astype(int)
                                          .tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip)
    counter = SkipCounter()
    fixed_prior = prior if isinstance(prior, torch.Tensor) else None
    meters = {c.name: AbAucMeter(keep_images=True, prior=fixed_prior) for c in colorizers}
    correct = {c.name: 0 for c in colorizers}
    classified = 0
    n_images = gray_left_out = 0
    total = len(dataset) if not max_images else min(len(dataset), max_images)
    bar = tqdm(total=total, desc="Table 1", unit="img", disable=not progress, file=sys.stderr)
    for raw in loader:
        if counter.update(raw) == 0:
            continue
        img = raw["image"]
        rgb = (img.float() / 255.0 if img.dtype == torch.uint8 else img.float()).to(device)
        keep = torch.ones(rgb.shape[0], dtype=torch.bool) if keep_gray else torch.as_tensor(raw["has_color"])
        gray_left_out += int((~keep).sum())
        if max_images:
            room = max_images - n_images
            keep &= torch.cumsum(keep.long(), 0) <= room
        bar.update(rgb.shape[0])
        if not keep.any():
            if max_images and n_images >= max_images:
                break
            continue
        k = keep.to(device)
        rgb = rgb[k]
        batch = EvalBatch(rgb, C.rgb_to_lab(rgb), torch.as_tensor(raw["label"])[keep],
                          torch.as_tensor(raw["index"])[keep])
        n_images += rgb.shape[0]
        labelled = batch.labels >= 0
        if classifier is not None and bool((batch.labels >= classifier.num_classes).any()):
            bad = int(batch.labels.max())
            raise UserError(f"label {bad} of the evaluated data is outside the classifier's {classifier.num_classes} "
                            f"classes ({classifier.name})")
        preds = []
        for c in colorizers:
            ab = c.colorize(batch)
            if ab.shape != batch.ab.shape:
                raise RuntimeError(f"{c.name}: predicted ab of shape {tuple(ab.shape)} for images of shape "
                                   f"{tuple(batch.ab.shape)}")
            preds.append(ab)
            if classifier is not None and labelled.any():
                pred = classifier.predict(c.rgb(batch, ab)[labelled.to(device)], autocast=autocast).cpu()
                correct[c.name] += int((pred == batch.labels[labelled]).sum())
        update_meters([meters[c.name] for c in colorizers], preds, batch.ab)
        classified += int(labelled.sum())
        if max_images and n_images >= max_images:
            break
    bar.close()
    if n_images == 0:
        raise UserError("no image to evaluate: every image was unreadable"
                        + ("" if keep_gray else " or gray (use --keep-gray to include gray images)"))
    rows = []
    for c in colorizers:
        m = meters[c.name]
        top1 = correct[c.name] / classified if classifier is not None and classified else None
        rows.append(RowResult(c.name, c.kind, m.auc(), m.auc(rebalanced=True, prior=prior), top1, correct[c.name],
                              classified if classifier is not None else 0, details=c.describe(),
                              auc_nonrebal_ci=m.interval().to_dict(),
                              auc_rebal_ci=None if isinstance(prior, str) else m.interval(True).to_dict()))
    return {"rows": rows, "images": n_images, "gray_left_out": gray_left_out, "classified": classified,
            **counter.summary()}


# --------------------------------------------------------------------------------------------------------------
# What our rows were measured on, and their AMT column (the table itself: xchannel.reports.table1)


def describe_data(result: dict[str, Any], data: str, size: int, resize: int | None, keep_gray: bool) -> str:
    """The "measured on" label of our rows."""
    name = Path(data).name
    parent = Path(data).parent.name
    label = f"{parent}/{name}" if parent else name
    gray = "" if keep_gray else ", colour only"
    return f"{label} ({result['images']} images{gray}, {size} px)"


def fill_amt(rows: Sequence[RowResult], amt_path: str | Path) -> None:
    """Copy fool rates of a Turing-test report (``xchannel turing-test report --json``) into rows whose name is a
    method of the report."""
    p = Path(amt_path)
    try:
        report = json.loads(p.read_text())
        methods = report["methods"]
    except FileNotFoundError:
        raise UserError(f"{p}: no such Turing-test report") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{p}: not a Turing-test report with a 'methods' field ({err})") from None
    for r in rows:
        m = methods.get(r.name)
        if m and m.get("fool_rate", {}).get("rate") is not None:
            r.amt_labeled_real = float(m["fool_rate"]["rate"])
            se = m["fool_rate"].get("se")
            r.amt_se = None if se is None else float(se)


# --------------------------------------------------------------------------------------------------------------
# Configuration and command line


@dataclass
class Table1Config:
    """Settings of one Table 1 evaluation (saved with the result)."""

    data: str = ""
    checkpoints: list[str] = field(default_factory=list)
    train: str | None = None
    classifier: str = "auto"  # auto | embedded | none | PATH of torchvision VGG-16 weights
    classifier_cache: str | None = None
    size: int = 224
    resize: int | None = 256
    temperature: float = ANNEAL_T
    prior: str = "reference"  # reference | data
    keep_gray: bool = False
    max_images: int = 0
    batch_size: int = 16
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 where native, else fp32: xchannel.runtime) | fp32 | bf16
    seed: int = 0
    cost: bool = True
    amt: str | None = None
    out: str = "results/table1"


def open_images(path: str | Path, transform: Any) -> Dataset:
    """An ImageFolder tree (a directory) or an image list (``path [label]`` lines, a file)."""
    from xchannel.data.images import ImageFolderDataset, ImageListDataset

    p = Path(path)
    if p.is_dir():
        return ImageFolderDataset(p, transform)
    if p.is_file():
        return ImageListDataset(p, transform)
    raise UserError(f"{p}: no such image folder or image list")


def is_embedded(data: str | Path) -> bool:
    """True for a split of the embedded data set (``OUT/imagenet/<split>`` with ``OUT/manifest.json``)."""
    manifest = Path(data).resolve().parent.parent / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("generator", "").startswith("xchannel.data.synthetic")
    except (OSError, ValueError, AttributeError):
        return False


def default_train(data: str | Path) -> Path | None:
    """``<parent>/train`` beside a ``val`` folder or list, when it exists."""
    p = Path(data)
    if p.name.startswith("val"):
        for cand in (p.parent / "train", p.parent / f"train{p.suffix}"):
            if cand.exists():
                return cand
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def build_classifier(cfg: Table1Config, device: torch.device, train: Path | None,
                     progress: bool) -> FixedClassifier | None:
    """The fixed classifier of the semantic-interpretability column, per ``cfg.classifier``."""
    from xchannel.evaluation.classifier import embedded_classifier, load_vgg16

    choice = cfg.classifier
    if choice == "auto":
        choice = "embedded" if is_embedded(cfg.data) else "none"
        if choice == "none":
            print("note: no --classifier given: the VGG Top-1 column stays empty (give --classifier "
                  "vgg16-397923af.pth, torchvision's ImageNet VGG-16 weights)", file=sys.stderr)
    if choice == "none":
        return None
    if choice == "embedded":
        if train is None or not train.is_dir():
            raise UserError("--classifier embedded trains on the training images: give --train DIR (an ImageFolder "
                            "tree with the same classes as --data)")
        return embedded_classifier(train, cfg.classifier_cache, progress=progress, device=device)
    return load_vgg16(choice, device)


def run_table1(cfg: Table1Config, progress: bool = True) -> dict[str, Any]:
    """Evaluate every row of ``cfg`` and write the tables; returns the result (as written to table1.json)."""
    from xchannel.data.images import ResizeCenterCrop

    if cfg.size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {cfg.size}")
    if cfg.prior not in ("reference", "data"):
        raise UserError(f"--prior must be 'reference' or 'data', got {cfg.prior!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    device = resolve_device(cfg.device)
    precision = runtime.precision_record(cfg.precision, device)
    if progress:
        print(f"table1: {runtime.describe_precision(precision)}", flush=True)
    autocast = precision["resolved"] == "bf16"
    transform = ResizeCenterCrop(cfg.size, resize=cfg.resize)
    data = open_images(cfg.data, transform)
    train_path = Path(cfg.train) if cfg.train else default_train(cfg.data)
    train_set = open_images(train_path, transform) if train_path is not None else None
    classifier = build_classifier(cfg, device, train_path, progress)
    if classifier is not None:
        classes = getattr(data, "classes", None)
        if classifier.info.get("kind") == "embedded" and classes is not None \
                and classes != classifier.info.get("classes"):
            raise UserError(f"{cfg.data}: its classes differ from those of the classifier's training images "
                            f"({classifier.info.get('train')})")
        if classifier.info.get("kind") == "vgg16" and classes is not None and len(classes) != 1000:
            raise UserError(f"{cfg.data}: VGG-16 predicts the 1000 ImageNet classes, but this folder has "
                            f"{len(classes)} class folders (give the ImageNet val tree, val/<wnid>/, or an image "
                            f"list with ImageNet class indices)")

    specs = ["ground-truth", "gray"] + [s for s in cfg.checkpoints if split_spec(s)[1].lower() not in
                                        ("ground-truth", "gt", "gray")]
    colorizers = [build_colorizer(s, T=cfg.temperature, device=device, train_set=train_set, seed=cfg.seed,
                                  autocast=autocast) for s in specs]
    result = evaluate(data, colorizers, classifier, batch_size=cfg.batch_size, workers=cfg.workers, device=device,
                      keep_gray=cfg.keep_gray, max_images=cfg.max_images,
                      prior="data" if cfg.prior == "data" else None, autocast=autocast, progress=progress)
    if cfg.cost:
        for c, row in zip(colorizers, result["rows"]):
            if isinstance(c, NetworkColorizer):
                for k, v in model_cost(c).items():
                    setattr(row, k, v)
    if cfg.amt:
        fill_amt(result["rows"], cfg.amt)
    result["classifier"] = None if classifier is None else {"name": classifier.name, **classifier.info}
    measured_on = describe_data(result, cfg.data, cfg.size, cfg.resize, cfg.keep_gray)
    notes = [f"Protocol: shorter side resized to {cfg.resize or cfg.size} px, center {cfg.size} px crop; "
             f"annealed mean T = {cfg.temperature:g}; AuC over ab thresholds 0-150; rebalanced AuC weights from "
             + ("the evaluated images' own colour-class frequencies" if cfg.prior == "data" else
                "the authors' ImageNet prior (Eq. 4, lambda = 0, sigma = 5)") + "; ± is the half-width of the 95 % "
             "interval of a percentile bootstrap over the images (each image's pixels resampled together)"
             + (" (raw AuC only: resampling would change data-derived weights)" if cfg.prior == "data" else "")
             + "."]
    if classifier is None:
        notes.append("VGG Top-1: no classifier given (--classifier).")
    elif classifier.info.get("kind") == "embedded":
        notes.append(f"VGG Top-1 column: the embedded data set's fixed classifier ({classifier.name}, trained on the "
                     f"colour training images; {len(classifier.info.get('classes', []))} classes), not VGG-16.")
    else:
        notes.append(f"VGG Top-1 column: torchvision VGG-16 with the weights of {classifier.info.get('weights')}.")
    if cfg.cost:
        notes.append(f"Params / Feats / Runtime: fp32 MB of weights and of activations, and milliseconds, for one "
                     f"{COST_INPUT} x {COST_INPUT} image on {device.type} (the paper's: Caffe on a Titan X GPU).")
    if result["gray_left_out"]:
        notes.append(f"{result['gray_left_out']} gray images (no colour to predict) left out.")
    if result["skipped"]:
        notes.append(f"{result['skipped']} unreadable images skipped.")
    paths = write_table1(cfg.out, {**result, "rows": [asdict(r) for r in result["rows"]]},
                         {**to_dict(cfg), "precision": precision}, measured_on, notes)
    result["paths"] = {k: str(v) for k, v in paths.items()}
    result["measured_on"] = measured_on
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]SPEC",
                        help="a row: a checkpoint (xchannel colorizer or the released weights), 'gray' or 'random'; "
                             "repeat for more rows (Ground Truth and Gray are always included)")
    parser.add_argument("--data", required=True, help="evaluated images: an ImageFolder tree or an image list")
    parser.add_argument("--train", help="training images (the random baseline copies their colours; the embedded "
                                        "classifier trains on them); default: 'train' beside a 'val' --data")
    parser.add_argument("--classifier", default="auto",
                        help="VGG-16 weights file (torchvision state dict), 'embedded', 'none', or 'auto' (default: "
                             "embedded on the embedded data set, else none)")
    parser.add_argument("--classifier-cache", help="where the embedded classifier is cached (default: beside --train)")
    parser.add_argument("--size", type=int, default=224, help="center crop evaluated (default 224)")
    parser.add_argument("--resize", type=int, default=256,
                        help="shorter side before cropping (default 256; 0: resize to --size)")
    parser.add_argument("-T", "--temperature", type=float, default=ANNEAL_T, help="annealed-mean T (default 0.38)")
    parser.add_argument("--prior", choices=("reference", "data"), default="reference",
                        help="class probabilities of the rebalanced AuC (default: the authors' ImageNet prior)")
    parser.add_argument("--keep-gray", action="store_true", help="also evaluate images without colour")
    parser.add_argument("--max-images", type=int, default=0,
                        help="evaluate at most this many images, evenly spaced over the folder (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="bf16 autocasts the networks and the classifier; auto (default) chooses it where the "
                             "hardware has native bf16 (AVX512-BF16/AMX CPUs, recent GPUs), fp32 elsewhere")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline's choices")
    parser.add_argument("--no-cost", action="store_true", help="skip the Params / Feats / Runtime columns")
    parser.add_argument("--amt", help="Turing-test report JSON (xchannel turing-test report --json) for the AMT "
                                      "column")
    parser.add_argument("-o", "--out", default="results/table1", help="output folder (default results/table1)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = Table1Config(data=args.data, checkpoints=list(args.checkpoint), train=args.train,
                       classifier=args.classifier, classifier_cache=args.classifier_cache, size=args.size,
                       resize=args.resize or None, temperature=args.temperature, prior=args.prior,
                       keep_gray=args.keep_gray, max_images=args.max_images, batch_size=args.batch_size,
                       workers=args.workers, device=args.device, precision=args.precision, seed=args.seed,
                       cost=not args.no_cost, amt=args.amt, out=args.out)
    result = run_table1(cfg, progress=not args.no_progress)
    print(Path(result["paths"]["md"]).read_text())
    print(f"wrote {', '.join(result['paths'].values())}")
    return 0
