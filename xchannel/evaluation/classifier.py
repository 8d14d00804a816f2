"""The fixed classifier of Table 1's semantic-interpretability column (Sec. 3.1, "VGG classification").

The paper feeds colorized images to an off-the-shelf VGG-16 trained on *real* colour ImageNet photos and reports its
top-1 accuracy: 68.3 % on the ground-truth colour images, 52.7 % on gray images (a = b = 0), 56.0 % after
colorizing with the full method. A colorization that helps the classifier is informative about the object class.

Two classifiers are provided, both frozen and applied to sRGB images in [0, 1]:

* :func:`load_vgg16`: torchvision's VGG-16 built with ``weights=None`` and loaded from a user-provided state-dict
  file (e.g. torchvision's ``vgg16-397923af.pth``; nothing is downloaded). Inputs are resized (shorter side) and
  center-cropped to 224 px and normalised with the ImageNet mean and standard deviation. Its 1000 outputs are the
  ImageNet classes in the sorted-WNID order, which is the class order of an ImageNet ``val/<wnid>/`` folder tree.
* :func:`embedded_classifier`: for the embedded data set (no ImageNet weights exist for it), a small CNN that
  xchannel trains on the *colour* training images, seeded, for a few epochs, and caches as a checkpoint next to the
  data. Like the paper's VGG it has only ever seen real colour images.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.errors import UserError
from xchannel.utils.io import atomic_torch_save, safe_torch_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_INPUT = 224
IMAGENET_CLASSES = 1000


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W float images: shorter side resized to ``size`` (bilinear, antialiased) unless it already is,
    then the center ``size`` x ``size`` crop."""
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top: top + size, left: left + size]


class FixedClassifier:
    """A frozen image classifier: sRGB in [0, 1] (N x 3 x H x W) -> class scores.

    :meth:`prepare` resizes the shorter side to ``input_size`` (bilinear, antialiased) when it differs, takes the
    center ``input_size`` crop and normalises with ``mean`` / ``std``.
    """

    def __init__(self, net: nn.Module, input_size: int, num_classes: int, name: str,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 info: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.name = name
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.info: dict[str, Any] = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> "FixedClassifier":
        self.net.to(device)
        return self

    def prepare(self, rgb: torch.Tensor) -> torch.Tensor:
        """Shorter side -> ``input_size``, center crop (:func:`resize_center_crop`), mean/std normalisation."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"{self.name}: expected N x 3 x H x W RGB, got {tuple(rgb.shape)}")
        x = resize_center_crop(rgb.float(), self.input_size)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def logits(self, rgb: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        x = self.prepare(rgb.to(self.device))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.net(x).float()

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        """Top-1 class index of every image (N,)."""
        return self.logits(rgb, autocast).argmax(dim=1)


# --------------------------------------------------------------------------------------------------------------
# VGG-16 from a user-provided weights file


def load_vgg16(path: str | os.PathLike, device: torch.device | str = "cpu") -> FixedClassifier:
    """torchvision's VGG-16 (``vgg16(weights=None)``) with the ImageNet weights of ``path``.

    ``path`` holds a state dict of ``torchvision.models.vgg16`` (e.g. torchvision's ``vgg16-397923af.pth``), or a
    checkpoint dict with such a state dict under ``"state_dict"`` or ``"model"``. It is read with
    ``weights_only=True``. A file that does not fit VGG-16 is a :class:`UserError` naming it.
    """
    import torchvision

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: VGG-16 weights file not found (give torchvision's vgg16 state dict, e.g. "
                        f"vgg16-397923af.pth)")
    state = safe_torch_load(path)
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or "features.0.weight" not in state:
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a torchvision VGG-16 state dict (no 'features.0.weight'; found {keys})")
    net = torchvision.models.vgg16(weights=None)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{path}: the weights do not fit torchvision's VGG-16: {err}") from None
    return FixedClassifier(net.to(device), VGG_INPUT, IMAGENET_CLASSES, "VGG-16",
                           info={"kind": "vgg16", "weights": str(path)})


# --------------------------------------------------------------------------------------------------------------
# The classifier of the embedded data set


@dataclass
class EmbeddedClassifierSpec:
    """How the embedded classifier is built and trained (part of its cache key)."""

    input_size: int = 40
    widths: tuple[int, ...] = (16, 32, 64)
    epochs: int = 10  # over the embedded set's 1600 training images (24 over the 640 of generator v2)
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    version: int = 1  # bump when the training procedure changes


class SmallCNN(nn.Module):
    """Blocks of (3x3 conv - BN - ReLU) x 2 then 2x2 max-pool, global average pooling and a linear layer."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _load_folder(root: Path, size: int, progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, list[str],
                                                                             dict]:
    """Every colour image of an ImageFolder tree at ``size`` px, float RGB in [0, 1].

    Images are resized exactly as :meth:`FixedClassifier.prepare` resizes evaluated images
    (:func:`resize_center_crop`). Returns (images N x 3 x size x size, labels, class names, counts). Gray images
    are left out (the classifier learns from real colour photos); unreadable ones are skipped and counted.
    """
    from tqdm import tqdm

    from xchannel.data.images import ImageFolderDataset, SkipCounter, ToTensor

    ds = ImageFolderDataset(root, ToTensor(torch.float32))
    counter = SkipCounter()
    images, labels, gray = [], [], 0
    for item in counter.filter(tqdm((ds[i] for i in range(len(ds))), total=len(ds), desc=desc, unit="img",
                                    disable=not progress, file=sys.stderr)):
        if not item["has_color"]:
            gray += 1
            continue
        images.append(resize_center_crop(item["image"][None], size)[0])
        labels.append(item["label"])
    if not images:
        raise UserError(f"{root}: no usable colour images to train the classifier on")
    return (torch.stack(images), torch.tensor(labels), list(ds.classes),
            {"images": len(images), "gray_left_out": gray, **counter.summary()})


def _cache_key(root: Path, spec: EmbeddedClassifierSpec) -> str:
    """Digest of the training files (relative path and size) and the spec."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
            h.update(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def default_cache_path(train_dir: str | os.PathLike, spec: EmbeddedClassifierSpec | None = None) -> Path:
    """``<train_dir>-classifier-<key>.pt`` beside the training folder (the key changes with files or spec)."""
    root = Path(train_dir)
    key = _cache_key(root, spec or EmbeddedClassifierSpec())
    return root.parent / f"{root.name}-classifier-{key}.pt"


@torch.no_grad()
def accuracy(classifier: FixedClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``classifier`` on float RGB images in [0, 1]."""
    correct = 0
    for s in range(0, len(images), batch_size):
        x = images[s: s + batch_size]
        correct += int((classifier.predict(x).cpu() == labels[s: s + batch_size]).sum())
    return correct / max(1, len(images))


def train_embedded_classifier(train_dir: str | os.PathLike, spec: EmbeddedClassifierSpec | None = None,
                              val_dir: str | os.PathLike | None = None, progress: bool = True,
                              device: torch.device | str = "cpu") -> tuple[FixedClassifier, dict]:
    """Train :class:`SmallCNN` on the colour images of the ImageFolder tree ``train_dir``.

    Protocol: images at ``input_size`` px (shorter side resized, center crop, as :meth:`FixedClassifier.prepare`
    sees evaluation images); augmentation by horizontal mirroring and random translation (4-px reflect padding,
    random crop); AdamW with a one-cycle learning-rate schedule, cross-entropy, batch statistics in BatchNorm. Seeded: the same
    files and spec give the same weights on the same machine. With ``val_dir``, the accuracy on its colour images
    (and on their gray versions) is reported in the returned info.
    """
    spec = spec or EmbeddedClassifierSpec()
    root = Path(train_dir)
    images, labels, classes, counts = _load_folder(root, spec.input_size, progress, "classifier data")
    device = torch.device(device)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    threads = torch.get_num_threads()
    # The network is tiny: on CPU, intra-op threads cost more in synchronisation than they gain (measured 25x
    # slower with 2 threads than with 1 on a loaded 2-core machine), so train single-threaded.
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        net, losses = _train_loop(images, labels, len(classes), spec, device, progress)
    finally:
        torch.set_num_threads(threads)
    clf = FixedClassifier(net.eval(), spec.input_size, len(classes), "embedded CNN", mean, std,
                          info={"kind": "embedded", "train": str(root), "classes": classes,
                                "spec": asdict(spec), "train_counts": counts, "loss_per_epoch": losses})
    clf.info["train_accuracy"] = accuracy(clf, images, labels)
    if val_dir is not None:
        clf.info.update(colour_and_gray_accuracy(clf, val_dir, progress))
    return clf, clf.info


def _train_loop(images: torch.Tensor, labels: torch.Tensor, num_classes: int, spec: EmbeddedClassifierSpec,
                device: torch.device, progress: bool) -> tuple[nn.Module, list[float]]:
    """The seeded optimisation of :func:`train_embedded_classifier`; returns the network and the loss per epoch."""
    from tqdm import tqdm

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        net = SmallCNN(num_classes, spec.widths).to(device, memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        steps_per_epoch = -(-len(images) // spec.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch,
                                                    pct_start=0.2)
        m = torch.tensor(mean).view(1, 3, 1, 1).to(device)
        s = torch.tensor(std).view(1, 3, 1, 1).to(device)
        net.train()
        bar = tqdm(range(spec.epochs), desc="classifier epochs", unit="epoch", disable=not progress,
                   file=sys.stderr)
        losses: list[float] = []
        for _ in bar:
            perm = torch.randperm(len(images))
            total, n = 0.0, 0
            for b in range(0, len(images), spec.batch_size):
                idx = perm[b: b + spec.batch_size]
                x = images[idx].to(device)
                x = ((_augment(x) - m) / s).contiguous(memory_format=torch.channels_last)
                y = labels[idx].to(device)
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return net, losses


def colour_and_gray_accuracy(classifier: FixedClassifier, val_dir: str | os.PathLike,
                             progress: bool = False) -> dict[str, Any]:
    """Accuracy on the colour images of ``val_dir`` and on the same images made gray (a = b = 0)."""
    from xchannel.color import lab_to_rgb, rgb_to_lab

    images, labels, classes, counts = _load_folder(Path(val_dir), classifier.input_size, progress, "classifier val")
    if classes != classifier.info.get("classes", classes):
        raise UserError(f"{val_dir}: its classes differ from those the classifier was trained on")
    rgb = images
    lab = rgb_to_lab(rgb)
    gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
    return {"val": str(val_dir), "val_images": counts["images"],
            "val_accuracy_colour": accuracy(classifier, rgb, labels),
            "val_accuracy_gray": accuracy(classifier, gray, labels)}


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal mirror and translation by up to 4 px (reflect padding), per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    return torch.stack([xp[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])


def embedded_classifier(train_dir: str | os.PathLike, cache: str | os.PathLike | None = None,
                        spec: EmbeddedClassifierSpec | None = None, val_dir: str | os.PathLike | None = None,
                        progress: bool = True, device: torch.device | str = "cpu") -> FixedClassifier:
    """The embedded data set's classifier: loaded from ``cache`` when it matches the files and spec, otherwise
    trained (:func:`train_embedded_classifier`) and saved there atomically.

    ``cache`` defaults to :func:`default_cache_path` (beside ``train_dir``).
    """
    spec = spec or EmbeddedClassifierSpec()
    root = Path(train_dir)
    if not root.is_dir():
        raise UserError(f"{root}: training image folder not found (the embedded classifier trains on it)")
    key = _cache_key(root, spec)
    path = Path(cache) if cache is not None else root.parent / f"{root.name}-classifier-{key}.pt"
    if path.is_file():
        ckpt = safe_torch_load(path)
        if isinstance(ckpt, dict) and ckpt.get("key") == key:
            info = json.loads(ckpt["info"])
            net = SmallCNN(len(info["classes"]), tuple(info["spec"]["widths"]))
            net.load_state_dict(ckpt["state_dict"])
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            clf = FixedClassifier(net.to(device), spec.input_size, len(info["classes"]), "embedded CNN", mean, std,
                                  info={**info, "cache": str(path), "cached": True})
            if val_dir is not None and Path(info.get("val", "")) != Path(val_dir):
                clf.info.update(colour_and_gray_accuracy(clf, val_dir))
            return clf
    clf, info = train_embedded_classifier(root, spec, val_dir, progress, device)
    try:
        atomic_torch_save({"key": key, "state_dict": {k: v.cpu() for k, v in clf.net.state_dict().items()},
                           "info": json.dumps(info)}, path)
    except OSError as err:
        raise UserError(f"{path}: cannot write the classifier cache ({err}); choose another place with "
                        f"--classifier-cache") from None
    clf.info.update({"cache": str(path), "cached": False})
    return clf


__all__ = ["FixedClassifier", "EmbeddedClassifierSpec", "SmallCNN", "load_vgg16", "embedded_classifier",
           "train_embedded_classifier", "colour_and_gray_accuracy", "default_cache_path", "accuracy",
           "IMAGENET_MEAN", "IMAGENET_STD", "VGG_INPUT"]
