"""The typed configuration of a training run (saved as ``config.json`` next to its checkpoints).

``task`` names the pretext task (:data:`xchannel.pretext.TASKS`) and ``pretext`` holds its options, which the
task's own ``Config`` dataclass validates. The optimiser (Adam, or SGD with momentum / Nesterov) and the
piecewise-constant schedule are ``optim``.

Defaults are the paper's (footnote 3): Adam with betas (0.9, 0.99), weight decay 1e-3, learning rate 3e-5 dropped
to 1e-5 and 3e-6 at 200k and 375k iterations, ~450k iterations; soft encoding with 5 neighbours and sigma 5;
rebalancing with lambda 1/2 and sigma 5; annealed mean at T = 0.38; batch 40 of 176 px crops for the VGG colorizer
(the authors' release) -- the AlexNet encoder is trained on ~180 px crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    name: str = "vgg_colorizer"  # a key of xchannel.models.MODELS
    width: float = 1.0  # channel multiplier (the demo trains narrow models on 2 CPU cores)
    init: Literal["default", "gaussian", "kmeans"] = "default"  # kmeans: Kraehenbuehl et al., as the authors did
    init_batches: int = 4  # batches of training data for the k-means initialisation
    init_from: str | None = None  # a checkpoint to start from (e.g. "Ours (L2, ft)" from a classification run)


@dataclass
class DataConfig:
    train: str = ""  # an ImageFolder tree (root/<class>/<images>) or an image list file
    val: str | None = None
    crop: int = 176
    # Shorter side resized to this before the random crop (training) and the centre crop (validation), so that
    # objects have the same scale in both (the authors resized ImageNet to 256 and trained on 176 px crops).
    # None: resized to the crop size.
    resize: int | None = None
    # [lo, hi]: the training crop is a random-resized crop (torchvision's RandomResizedCrop, aspect 3/4 ... 4/3)
    # covering that share of the resized image's area, e.g. [0.2, 1.0] for instance discrimination; None: a
    # random crop at the resized scale.
    scale: tuple[float, float] | None = None
    batch_size: int = 40
    workers: int = 2
    val_images: int = 64  # held-out images used by each periodic validation
    # Check every file before the data order is drawn (xchannel.data.screen): unusable files are left out of the
    # order, so a folder holding them trains exactly as the same folder cleaned. About 1.2 ms per JPEG and core.
    screen: bool = True


@dataclass
class OptimConfig:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.99)  # adam
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 1e-3
    lr_steps: list[int] = field(default_factory=lambda: [200_000, 375_000])
    lr_values: list[float] = field(default_factory=lambda: [1e-5, 3e-6])
    grad_clip: float = 0.0  # 0 = off


@dataclass
class TrainConfig:
    task: str = "colorization"  # a key of xchannel.pretext.TASKS
    # the task's options, validated by its Config dataclass (xchannel.pretext.<task>)
    pretext: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 450_000
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where native, else fp32 (runtime.py)
    channels_last: bool = False
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 0
    deterministic: bool = False  # bitwise-reproducible runs (and resumes) at some cost in speed
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    val_every: int = 10_000
    log_every: int = 50
    out: str = "runs/colorization"

    @staticmethod
    def upgrade_legacy(data: dict) -> dict:
        """Configs and checkpoints written before tasks had a ``pretext:`` section kept colorization's options at
        the top level (``loss:``, ``temperature:``, overrides ``loss.lam=1.0``); they move under ``pretext:``,
        where colorization's own config validates them (another task rejects them by name)."""
        moved = {k: data[k] for k in LEGACY_COLORIZATION_KEYS if k in data}
        if not moved:
            return data
        from xchannel.utils.config import merge

        out = {k: v for k, v in data.items() if k not in moved}
        out["pretext"] = merge(moved, dict(data.get("pretext") or {}))
        return out


LEGACY_COLORIZATION_KEYS = ("loss", "temperature")
