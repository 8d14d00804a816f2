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
class LossConfig:
    kind: Literal["classification", "l2"] = "classification"
    soft_encoding: Literal["paper", "released"] = "paper"  # 5 neighbours (paper) or 10 (released code)
    lam: float = 0.5  # Eq. 4; 1.0 = no rebalancing ("Ours (class)")
    sigma: float = 5.0  # smoothing of the prior in Eq. 4
    prior: str = "reference"  # "reference" (authors' ImageNet prior) or a .npy written by `xchannel prior`
    gray_threshold: float = 5.0  # images whose |a|, |b| never exceed this carry no colour and no loss


@dataclass
class DataConfig:
    train: str = ""  # an ImageFolder tree (root/<class>/<images>) or an image list file
    val: str | None = None
    crop: int = 176
    # Shorter side resized to this before the random crop (training) and the centre crop (validation), so that
    # objects have the same scale in both (the authors resized ImageNet to 256 and trained on 176 px crops).
    # None: resized to the crop size.
    resize: int | None = None
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
    loss: LossConfig = field(default_factory=LossConfig)  # colorization's objective (Table 1's variants)
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
    temperature: float = 0.38  # colorization: annealed mean used for validation outputs
    out: str = "runs/colorization"
