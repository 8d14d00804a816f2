"""PASCAL VOC semantic segmentation with FCN-32s (Table 2, "Segmentation (% mIU)").

The paper tests "semantic segmentation on PASCAL VOC 2012, using the FCN architecture of [42] (Long, Shelhamer,
Darrell), following the protocol in [10] (Pathak et al.)" (Sec. 3.2). The network (:class:`FCN32s`):

* the encoder's conv1 ... pool5 run on the image zero-padded by 100 pixels on every side (FCN's ``pad: 100`` on
  conv1, so that every output pixel has a prediction whatever the image size), with Caffe's pool rounding (output
  sizes rounded up, :func:`ceil_mode_pools`);
* fc6 and fc7 as convolutions (a 6x6 and a 1x1 convolution carrying the fc weights, with their ReLUs and dropout
  0.5; :meth:`~xchannel.pascal.trunk.Trunk.fc_as_convolutions`);
* ``score``: a 21-way 1x1 convolution (background + 20 classes), zero-initialised (Caffe's default filler, as in
  FCN);
* ``upscore``: a 63x63 transposed convolution of stride 32 initialised to bilinear interpolation (FCN's
  ``upsample_filt``: ``(1 - |x - c| / f) (1 - |y - c| / f)`` with ``f = ceil(k / 2)``, ``c = f - 1`` for odd ``k``
  and ``f - 1/2`` for even ``k``, on the diagonal of the 21 x 21 channel pairs), kept fixed like FCN-32s's;
* a crop of the upsampled map back to the input size at the offset that puts each output pixel over its input
  pixel (Caffe's ``coord_map`` arithmetic through every layer, :func:`crop_offset`). For the CaffeNet layers the
  offset with the 63-px kernel is exactly 18 (with ``upsample_kernel=64`` it would be 18.5, cropped at 18: half a
  pixel off).

Training: per-pixel softmax cross-entropy, pixels labelled 255 ("void") ignored, averaged over the labelled pixels
of each image; whole images, one at a time, with gradients accumulated over ``iter_size`` images per update.

The default data and solver are the authors' own segmentation runs (``feature_learning_tests/segmentation`` of
their release: ``train_val.prototxt``, ``solver0.prototxt``, ``solve.py``):

* training on SBD's ``train`` list (``voc2011bh_segtrain``, 8,498 images on the real data), read from SBD's release
  layout (``dataset/img/<id>.jpg``, ``dataset/cls/<id>.mat`` with ``GTcls.Segmentation``;
  :class:`~xchannel.data.sbd.SBDSegmentation`);
* scoring on ``seg11valid``: the VOC2011 segmentation ``val`` images that are not in SBD ``train`` (736 images,
  ``test_iter: 736``), read from ``VOC2011/ImageSets/Segmentation/seg11valid.txt`` or, when that list is absent,
  derived from VOC2011's ``val.txt`` and SBD's ``train.txt`` (:func:`~xchannel.data.sbd.seg11valid_ids`);
* SGD momentum 0.9, weight decay 5e-4, ``iter_size`` 20, 150,000 iterations in three phases of 50,000 at
  1e-4, 1e-5 and 1e-6 (``solve.py --phase 0/1/2``; ``solver0.prototxt``: "first used this for 50k iterations",
  the two lower rates commented out); every layer at lr x1, biases x2 without weight decay;
* the 63 x 63 upsampling kernel of ``train_val.prototxt`` (crop offset exactly 18).

Other data, as named options (``data.train`` and the presets): ``voc`` (VOC``year`` ``train`` -> ``val``; the
``voc2012`` preset is FCN-AlexNet's own VOC2012 protocol, 100k iterations at a fixed 1e-4) and ``sbd_aug``
(DeepLab's ``train_aug``: SBD train + val + VOC train minus VOC val, 10,582 images on the real data;
``train_aug`` preset). Testing: whole images, argmax of the 21 scores; the confusion matrix gives the mean IU over
the 21 classes (FCN's ``score.py``, :mod:`xchannel.metrics.segmentation`) and the pixel accuracy.

With color input, ``ab_branch`` splits conv1 into the L convolution and a separate zero-initialised ab branch, as
in the authors' color segmentation nets (:class:`~xchannel.pascal.trunk.SplitInputConv`). Encoders without
fc6/fc7 (timm networks, the VGG colorizer) get the score and upsampling layers on their deepest map (see
:class:`FCN32s`).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xchannel.data.images import SkipCounter, collate_skip_lists
from xchannel.data.sbd import SBDAugmented, SBDSegmentation, SegmentationItems, seg11valid_ids
from xchannel.data.voc import IGNORE_INDEX, VOC_CLASSES, PairedCropMirror, PairedScale, VOCSegmentation
from xchannel.errors import UserError
from xchannel.metrics.segmentation import confusion_matrix, segmentation_scores
from xchannel.metrics.uncertainty import BootstrapConfig, segmentation_miu_interval
from xchannel.pascal.config import (CaffeSolver, FinetuneConfig, add_common_arguments, add_preset_argument,
                                    config_from_args, preset_config)
from xchannel.pascal.prepare import PreparedEncoder, dataset_name, prepare_encoder
from xchannel.pascal.record import default_output, result_record, write_result
from xchannel.pascal.solver import (autocast, caffe_param_groups, check_finite, clip_gradients,
                                    describe_param_groups, endless_batches, resolve_device, resolve_precision,
                                    set_lr, set_train_mode,
                                    step_lr, trainable_parameters)
from xchannel.pascal.trunk import Trunk
from xchannel.utils.io import atomic_torch_save

NAME = "seg"
HELP = "segmentation with FCN-32s, SBD train -> VOC2011 seg11valid as the authors ran it (Table 2, % mean IU)"
NUM_CLASSES = len(VOC_CLASSES) + 1  # background + 20


# --------------------------------------------------------------------------------------------------------------
# Configuration


TRAIN_DATA = ("sbd", "sbd_aug", "voc")


@dataclass
class SegData:
    """Training and validation data. ``train``: ``sbd`` (SBD's ``train`` list, the authors'), ``sbd_aug`` (SBD
    train + val + VOC``year`` ``train_split`` minus ``val_split``) or ``voc`` (VOC``year`` ``train_split``).
    ``sbd``: SBD's ``dataset`` folder ("" looks next to the VOCdevkit: ``SBD/dataset``,
    ``benchmark_RELEASE/dataset``). Validation: VOC``year`` ``ImageSets/Segmentation/<val_split>.txt``
    (``seg11valid``: see the module docstring). ``train_crop`` 0 trains on whole images (FCN); > 0 on random crops
    of that side (padded with void, mirrored; :class:`~xchannel.data.voc.PairedCropMirror`), which allows batches.
    ``scale`` resizes training and scored images (bilinear) and masks (nearest neighbour) by that factor first
    (:class:`~xchannel.data.voc.PairedScale`); 1 (FCN's protocol) leaves them as stored."""

    train: Literal["sbd", "sbd_aug", "voc"] = "sbd"
    sbd: str = ""
    year: str = "2011"
    train_split: str = "train"
    val_split: str = "seg11valid"
    train_crop: int = 0
    scale: float = 1.0


def reference_solver() -> CaffeSolver:
    """The authors' segmentation solver (``solver0.prototxt`` and ``solve.py``'s three phases): 150k iterations,
    lr 1e-4 x 0.1 every 50k, momentum 0.9, weight decay 5e-4, ``iter_size`` 20 whole images; biases lr x2, no
    decay (FCN's ``param`` blocks)."""
    return CaffeSolver(iterations=150_000, batch_size=1, iter_size=20, lr=1e-4, lr_step=50_000, lr_gamma=0.1,
                       momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0, bias_decay_mult=0.0)


@dataclass
class Config(FinetuneConfig):
    """One segmentation run (saved in its result JSON): the shared fields plus FCN's geometry (``pad``,
    ``upsample_kernel``, ``learn_upsampling``) and the data."""

    optim: CaffeSolver = field(default_factory=reference_solver)
    pad: int = 100
    upsample_kernel: int = 63
    learn_upsampling: bool = False
    data: SegData = field(default_factory=SegData)
    channels_last: bool = True

    def validate(self) -> None:
        problems = []
        if self.data.train not in TRAIN_DATA:
            problems.append(f"data.train must be one of {', '.join(TRAIN_DATA)} (got {self.data.train!r})")
        if self.optim.iterations < 1:
            problems.append(f"optim.iterations must be >= 1 (got {self.optim.iterations})")
        if self.data.train_crop == 0 and self.optim.batch_size != 1:
            problems.append("whole-image training (data.train_crop=0) takes one image per forward pass: set "
                            "optim.batch_size=1 and use optim.iter_size to accumulate")
        if not 0 < self.data.scale <= 8:
            problems.append(f"data.scale must be in (0, 8] (got {self.data.scale})")
        if self.pad < 0 or self.upsample_kernel < 1:
            problems.append(f"pad must be >= 0 and upsample_kernel >= 1 (got {self.pad}, {self.upsample_kernel})")
        self.check("segmentation", problems)


#: Named configurations (``--preset``), as overrides of the defaults. ``paper``: the authors' segmentation runs
#: (SBD train -> seg11valid, 150k iterations, module docstring). ``voc2012``: FCN-AlexNet's own VOC2012 protocol
#: (train -> val, 100k iterations at a fixed 1e-4). ``train_aug``: SBD-augmented training, VOC2012 val.
#: ``demo``: the embedded data set (its SBD tree and VOC2011) in about 70 s on one CPU core: 600 updates of one
#: whole image (FCN's own batch of 1) at lr 1e-3, images scaled 1.5x, 8 images for the rescaling. Measured on
#: generator v2 at 1x with the demo's supervised encoder (mean IU over seg11valid with its 95 % interval;
#: background-only 4.1): the former 30
#: updates of 2 images at 3e-3 and 100 at 1e-2 stayed background-only (4.4 [4.1, 4.9], 4.1 [4.1, 4.1]); 500 x 2 at
#: 3e-3 5.0 [4.6, 5.4]; 1000 x 1 at 1e-3 6.2 [5.5, 6.9] (82 s); 1000 x 2 at 3e-3 8.3 [7.0, 9.5] (162 s); 250 x 8 at
#: 1e-2 6.2 [5.4, 7.1] (143 s). Images are scaled 1.5x (``data.scale``; masks by nearest neighbour, scored at that
#: size): the demo's supervised encoder is trained on 227 px crops of images resized to 240 px, i.e. on objects 1.5x
#: as large as in the 160 px VOC images, and FCN-32s's score cells are 32 px. On generator v3 with the same encoders:
#: supervised 7.0 [6.1, 7.7] at 1x, 11.2 [9.7, 12.6] at 1.5x, 6.5 [5.8, 7.3] at 2x; colorization 10.1 [8.7, 11.4],
#: 10.1 [8.7, 11.6], 7.7 [6.6, 8.8] (``xchannel pascal seg ENCODER --preset demo --input-mode gray --voc DATA/VOCdevkit
#: --set data.scale=S``, 1000 updates, the encoders of ``xchannel demo --only data colorization supervised`` with
#: 40 training images per class and 300 supervised steps).
#: 1000 updates until the 800-image test set of v3 made the demo too long (there: supervised 17.4 ± 2.0, ours
#: 10.8 ± 1.6, Gaussian 5.3 ± 0.5, about 100 s a run on one core without native bf16; at 800 updates 19.7 ± 2.1,
#: 11.9 ± 1.6, 5.1 ± 0.5, the demo 901 s).
PRESETS: dict[str, list[str]] = {
    "paper": [],
    "voc2012": ["data.train=voc", "data.year=2012", "data.val_split=val", "optim.iterations=100000",
                "optim.lr_step=0"],
    "train_aug": ["data.train=sbd_aug", "data.year=2012", "data.val_split=val"],
    "demo": ["optim.iterations=600", "optim.iter_size=1", "optim.lr=0.001", "optim.lr_step=0", "rescale.images=8",
             "log_every=100", "data.scale=1.5"],
}


def config(preset: str = "paper", overrides: tuple[str, ...] | list[str] = (), **fields: Any) -> Config:
    """The configuration of ``preset`` with ``key=value`` overrides and top-level fields, e.g.
    ``config("demo", voc=..., encoder=..., input_mode="color", out=...)``."""
    return preset_config(Config, PRESETS, preset, overrides, **fields)


# --------------------------------------------------------------------------------------------------------------
# FCN-32s


def bilinear_kernel(size: int) -> torch.Tensor:
    """FCN's ``upsample_filt(size)``: the size x size kernel of bilinear interpolation for upsampling by
    ``ceil(size / 2)``: ``(1 - |i - c| / f) (1 - |j - c| / f)``, ``f = ceil(size / 2)``, ``c = f - 1`` (odd size)
    or ``f - 0.5`` (even size)."""
    f = (size + 1) // 2
    c = f - 1 if size % 2 == 1 else f - 0.5
    r = 1 - (torch.arange(size, dtype=torch.float64) - c).abs() / f
    return (r[:, None] * r[None, :]).float()


def _pair(v: Any) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise UserError(f"FCN geometry: non-square layer parameter {v}")
        return int(v[0])
    if isinstance(v, str):
        raise UserError(f"FCN geometry: padding {v!r} is not supported")
    return int(v)


def crop_offset(layers: list[nn.Module], pad: int, fc_kernels: tuple[int, ...], up_kernel: int,
                up_stride: int) -> tuple[float, int]:
    """Where the upsampled map sits over the input (Caffe's ``coord_map``): returns (exact offset, stride).

    A layer with kernel k (dilation d: extent k' = d (k - 1) + 1), stride s and padding p maps its output
    coordinate u to the centre ``s u + (k' - 1) / 2 - p`` of its window in its input; composing these from the
    (padded) image through the conv layers and the fc convolutions gives ``x = A u + B``. The transposed
    convolution (kernel K, stride S) places input cell u at output ``S u + (K - 1) / 2``. With ``S = A`` the
    upsampled map's pixel v lies over image pixel ``v - offset``: the output is cropped from ``offset``.
    """
    a, b = 1.0, -float(pad)
    for m in layers:
        k, s = _pair(m.kernel_size), _pair(m.stride)
        p, d = _pair(m.padding), _pair(getattr(m, "dilation", 1))
        b += a * ((d * (k - 1) + 1 - 1) / 2 - p)
        a *= s
    for k in fc_kernels:
        b += a * (k - 1) / 2
    if int(a) != up_stride:
        raise UserError(f"FCN: the encoder's total stride is {a:g}, the upsampling stride {up_stride}")
    b -= (up_kernel - 1) / 2
    return -b, int(a)


def ceil_mode_pools(stages: nn.Sequential) -> nn.Sequential:
    """The same stages with every max pool rounding its output size up, as Caffe's pools do (FCN's nets are Caffe
    nets): a new ``Sequential`` sharing every other module. With floor rounding a pool drops a partial last
    window, and the padded FCN output could fall short of the input's extent."""
    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.MaxPool2d):
            return nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                                ceil_mode=True)
        if isinstance(module, nn.Sequential) and any(isinstance(m, nn.MaxPool2d) for m in module.modules()):
            return nn.Sequential(OrderedDict((n, convert(m)) for n, m in module.named_children()))
        return module

    return convert(stages)


class FCN32s(nn.Module):
    """FCN-32s on a :class:`~xchannel.pascal.trunk.Trunk` (module docstring). Input: the encoder's prepared
    image (N x C x H x W, any size); output: N x 21 x H x W scores.

    Submodules: ``features`` (the trunk's convolutional stages, shared with it), ``fc6``, ``fc7`` (convolutional
    copies of the trunk's fc layers), ``drop7``, ``score``, ``upscore``. ``offset_exact`` is the sub-pixel crop
    offset, ``offset`` the integer one used.

    Encoders without fc6/fc7 (timm networks, the VGG colorizer: a "generic" trunk) get the same head on their
    deepest map, of stride s (measured): the image is zero-padded on the right and bottom to a multiple of s, the
    score map is upsampled by a 2s x 2s bilinear transposed convolution of stride s, and the crop offset is s / 2,
    which assumes "same"-padded layers (map cell i centred on input pixel s i + (s - 1) / 2, as in ResNets).
    """

    def __init__(self, trunk: Trunk, num_classes: int = NUM_CLASSES, pad: int = 100, upsample_kernel: int = 63,
                 learn_upsampling: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.generic = trunk.kind == "generic"
        self._normalize = trunk.normalize
        if self.generic:
            if not trunk.stride or trunk.stride % 2:
                raise UserError(f"FCN-32s: cannot tell an even stride of this encoder's deepest map (measured "
                                f"{trunk.stride}); use an AlexNet-family encoder")
            self.features = trunk.conv
            self.fc6, self.fc7 = nn.Identity(), nn.Identity()
            width, stride = trunk.conv_dim, trunk.stride
            upsample_kernel, pad = 2 * stride, 0
        else:
            if not trunk.has_fc:
                raise UserError(f"FCN-32s: encoder ({trunk.kind}) has no fc6/fc7 to convolutionalise")
            self.features = ceil_mode_pools(trunk.dense_stages())
            fc = trunk.fc_as_convolutions()
            self.fc6, self.fc7 = fc["fc6"], fc["fc7"]
            width = trunk.fc_dim
            layers = trunk.spatial_layers()
            stride = math.prod(_pair(m.stride) for m in layers)
        self.drop7 = nn.Dropout(dropout)
        self.score = nn.Conv2d(int(width), num_classes, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, upsample_kernel, stride=stride, bias=False)
        with torch.no_grad():
            self.upscore.weight.zero_()
            kernel = bilinear_kernel(upsample_kernel)
            for c in range(num_classes):
                self.upscore.weight[c, c] = kernel
        self.upscore.weight.requires_grad_(learn_upsampling)
        if self.generic:
            self.offset_exact, self.stride = stride / 2, stride
        else:
            fc_kernels = tuple(_pair(m.kernel_size) for m in (*self.fc6.modules(), *self.fc7.modules())
                               if isinstance(m, nn.Conv2d))
            self.offset_exact, self.stride = crop_offset(layers, pad, fc_kernels, upsample_kernel, stride)
        if self.offset_exact < 0:
            raise UserError(f"FCN: negative crop offset {self.offset_exact}; increase pad")
        self.offset = int(math.floor(self.offset_exact))
        self.pad = int(pad)
        param = next(trunk.parameters())
        self.score.to(param.device, param.dtype)
        self.upscore.to(param.device, param.dtype)

    def describe(self) -> dict[str, Any]:
        """The network's geometry, for the result's protocol."""
        k = self.upscore.kernel_size[0]
        return {"kind": "generic (deepest tap, 'same'-padding assumed)" if self.generic else "AlexNet family",
                "pad": self.pad if not self.generic else f"right/bottom to a multiple of {self.stride}",
                "fc6": "none" if self.generic else "6x6 convolution (fc6 weights)",
                "fc7": "none" if self.generic else "1x1 convolution (fc7 weights)",
                "score": f"1x1 convolution, {self.score.out_channels} classes, zero-initialised",
                "upscore": f"{k}x{k} transposed convolution, stride {self.stride}, bilinear, "
                           f"{'learned' if self.upscore.weight.requires_grad else 'fixed'}",
                "crop_offset": self.offset, "crop_offset_exact": self.offset_exact,
                "alignment_error_px": self.offset_exact - self.offset}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self._normalize(x)
        if self.generic:
            s = self.stride
            x = F.pad(x, (0, (-w) % s, 0, (-h) % s))
        elif self.pad:
            x = F.pad(x, (self.pad,) * 4)  # zeros in normalised units, as Caffe pads conv1's input
        x = self.fc7(self.fc6(self.features(x)))
        up = self.upscore(self.score(self.drop7(x)))
        o = self.offset
        if up.shape[-2] < o + h or up.shape[-1] < o + w:
            raise RuntimeError(f"FCN: upsampled map {tuple(up.shape[-2:])} does not cover the {h}x{w} input at "
                               f"offset {o}; increase pad")
        return up[..., o: o + h, o: o + w]

    def param_groups(self, o: CaffeSolver) -> list[dict]:
        """Caffe-style groups as the authors' net declares them: every layer at lr x1 with biases at
        ``bias_lr_mult`` and decay x ``bias_decay_mult`` (x2, none), the ab branch (if any) at ``ab_lr_mult``; the
        fixed upsampling has no parameters to train."""
        ab = [("conv1_ab", m, o.ab_lr_mult) for n, m in self.features.named_modules() if n.endswith("ab_conv")]
        layers = [(n, m, 1.0) for n, m in (("features", self.features), ("fc6", self.fc6), ("fc7", self.fc7),
                                           ("score", self.score), ("upscore", self.upscore))]
        return caffe_param_groups(ab + layers, o.weight_decay, bias_lr_mult=o.bias_lr_mult,
                                  bias_decay_mult=o.bias_decay_mult)


# --------------------------------------------------------------------------------------------------------------
# Data: SBD (:mod:`xchannel.data.sbd`), VOC and the authors' validation list


def find_sbd(cfg: Config) -> Path:
    """SBD's ``dataset`` folder: ``data.sbd``, or the first of ``SBD/dataset`` and ``benchmark_RELEASE/dataset``
    next to or inside the VOCdevkit folder. An error says where it looked."""
    if cfg.data.sbd:
        root = Path(cfg.data.sbd)
        candidates = [root, root / "dataset"]
    else:
        voc = Path(cfg.voc)
        candidates = [base / name / "dataset" for base in (voc, voc.parent) for name in ("SBD", "benchmark_RELEASE")]
    for cand in candidates:
        if (cand / "cls").is_dir() and (cand / "train.txt").is_file():
            return cand
    raise UserError(f"SBD (the Semantic Boundaries Dataset, the training data of the paper's segmentation runs) "
                    f"not found; looked for a dataset folder with cls/ and train.txt at "
                    f"{', '.join(str(c) for c in candidates)}. Give it with --sbd, or train on VOC alone with "
                    f"--preset voc2012")



def training_set(cfg: Config) -> SegmentationItems | VOCSegmentation:
    d = cfg.data
    transforms = PairedCropMirror(d.train_crop, train=True) if d.train_crop else None
    if d.scale != 1.0:
        transforms = PairedScale(d.scale, transforms)
    if d.train == "sbd":
        return SBDSegmentation(find_sbd(cfg), "train", transforms)
    if d.train == "sbd_aug":
        return SBDAugmented(cfg.voc, find_sbd(cfg), d.year, d.train_split, d.val_split, transforms)
    return VOCSegmentation(cfg.voc, d.year, d.train_split, transforms)


def validation_set(cfg: Config) -> tuple[VOCSegmentation, str]:
    """The scored images and a description of where their list came from."""
    d = cfg.data
    scaled = PairedScale(d.scale) if d.scale != 1.0 else None
    if d.val_split == "seg11valid":
        ids, source = seg11valid_ids(cfg.voc, find_sbd(cfg), d.year)
        return VOCSegmentation(cfg.voc, d.year, ids=ids, transforms=scaled), source
    return (VOCSegmentation(cfg.voc, d.year, d.val_split, transforms=scaled),
            f"VOC{d.year} Segmentation/{d.val_split}.txt")


# --------------------------------------------------------------------------------------------------------------
# Loss and evaluation


def segmentation_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the labelled pixels (255 ignored), averaged over them; 0 when none is labelled."""
    valid = mask != IGNORE_INDEX
    if not bool(valid.any()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores.float(), mask, ignore_index=IGNORE_INDEX, reduction="sum") / valid.sum()


@torch.no_grad()
def evaluate(model: FCN32s, prepare: Any, dataset: VOCSegmentation, device: torch.device, precision: str = "fp32",
             workers: int = 0, progress: bool = False, counter: SkipCounter | None = None,
             bootstrap: BootstrapConfig = BootstrapConfig()) -> tuple[dict, int]:
    """Whole-image predictions (argmax) on ``dataset``; returns the FCN scores (percent) and the image count.
    ``mean_iu_ci``: the mean IU's bootstrap interval over the images, from their confusion matrices
    (:func:`xchannel.metrics.uncertainty.segmentation_miu_interval`)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=collate_skip_lists)
    counter = counter if counter is not None else SkipCounter()
    per_image = []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        if counter.update(batch) == 0:
            continue
        for image, mask in zip(batch["image"], batch["mask"]):
            x = prepare(image[None].to(device))
            with autocast(device, precision):
                scores = model(x)
            per_image.append(confusion_matrix(scores.float().argmax(1)[0].cpu(), mask, NUM_CLASSES, IGNORE_INDEX))
    n = len(per_image)
    if n == 0:
        raise UserError("segmentation: none of the validation images could be read")
    per_image_hist = torch.stack(per_image)
    hist = per_image_hist.sum(0)  # FCN's score.py: the confusion matrix summed over the images
    s = segmentation_scores(hist)
    out = {"mean_iu": 100.0 * s.mean_iu, "pixel_accuracy": 100.0 * s.pixel_accuracy,
           "mean_class_accuracy": 100.0 * s.mean_class_accuracy,
           "frequency_weighted_iu": 100.0 * s.frequency_weighted_iu,
           "iu": {c: (None if np.isnan(v) else 100.0 * v) for c, v in zip(("background", *VOC_CLASSES), s.iu)},
           "classes_absent": [c for c, v in zip(("background", *VOC_CLASSES), s.iu) if np.isnan(v)],
           "labelled_pixels": int(hist.sum()), "units": "percent",
           "mean_iu_ci": segmentation_miu_interval(per_image_hist.numpy(), bootstrap).to_dict(),
           "label": "FCN score.py: mean IU over the 21 classes present (nanmean), void (255) not counted"}
    return out, n


# --------------------------------------------------------------------------------------------------------------
# The task


def run_task(cfg: Config, prepared: PreparedEncoder | None = None) -> dict[str, Any]:
    """Fine-tune FCN-32s and evaluate (module docstring); write the result JSON to ``cfg.out`` (default
    ``results/pascal/seg_<encoder>_<input mode>.json``) and return it."""
    cfg.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg, precision = resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    d, o = cfg.data, cfg.optim
    train_ds = training_set(cfg)
    val_ds, val_source = validation_set(cfg)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"{cfg.voc}: the segmentation training set ({d.train}) has {len(train_ds)} and the "
                        f"validation set ({val_source}) {len(val_ds)} images; both must be non-empty")
    train_files = train_ds.files() if isinstance(train_ds, SegmentationItems) else None

    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=d.year,
                                   split={"sbd": "SBD train", "sbd_aug": "SBD-augmented train"}.get(
                                       d.train, d.train_split), rescale=cfg.rescale, seed=cfg.seed,
                                   ab_branch=cfg.ab_branch, dropout=cfg.dropout, device=device,
                                   image_set="Segmentation", files=train_files)
    t_prepare = time.perf_counter() - t0
    encoder = prepared.encoder
    # the training stream (head init, crops, dropout) must not depend on how the encoder was built (loading
    # and converting networks may draw from the global RNG)
    torch.manual_seed(cfg.seed)
    model = FCN32s(prepared.trunk, NUM_CLASSES, cfg.pad, cfg.upsample_kernel, cfg.learn_upsampling,
                   cfg.dropout).to(device)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.SGD(model.param_groups(o), lr=o.lr, momentum=o.momentum)
    params = trainable_parameters(model)

    train_counter, val_counter = SkipCounter(), SkipCounter()
    batches = endless_batches(train_ds, o.batch_size, cfg.seed, cfg.workers, collate=collate_skip_lists,
                              counter=train_counter)
    history: list[dict[str, Any]] = []
    window = {"loss": 0.0, "n": 0}
    images_seen = 0
    t0 = time.perf_counter()
    bar = tqdm(range(o.iterations), desc="seg", disable=not cfg.progress, leave=False)
    for it in bar:
        lr = step_lr(o.lr, it, o.lr_step, o.lr_gamma)
        set_lr(optimizer, lr)
        set_train_mode(model)
        optimizer.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        for _ in range(o.iter_size):
            batch = next(batches)
            images, masks = batch["image"], batch["mask"]
            if d.train_crop:  # equal sizes: one forward pass for the batch
                chunks = [(torch.stack(images), torch.stack(masks))]
            else:
                chunks = [(im[None], m[None]) for im, m in zip(images, masks)]
            for im, m in chunks:
                x = encoder.prepare(im.to(device)).contiguous(memory_format=memory)
                m = m.to(device)
                with autocast(device, cfg.precision):
                    scores = model(x)
                per_image = [segmentation_loss(scores[j: j + 1], m[j: j + 1]) for j in range(len(m))]
                loss = torch.stack(per_image).sum() / (o.iter_size * o.batch_size)
                check_finite(loss, it, "segmentation")
                loss.backward()
                total += float(loss.detach()) * o.iter_size * o.batch_size
                count += len(per_image)
                images_seen += len(per_image)
        clip_gradients(params, o.clip_gradients)
        optimizer.step()
        window["loss"] += total / max(count, 1)
        window["n"] += 1
        if (it + 1) % max(1, cfg.log_every) == 0 or it + 1 == o.iterations:
            history.append({"iteration": it + 1, "lr": lr, "loss": window["loss"] / window["n"],
                            "seconds": round(time.perf_counter() - t0, 2)})
            bar.set_postfix(loss=f"{window['loss'] / window['n']:.4f}")
            window = {"loss": 0.0, "n": 0}
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics, evaluated = evaluate(model, lambda rgb: encoder.prepare(rgb).contiguous(memory_format=memory), val_ds,
                                  device, cfg.precision, cfg.workers, cfg.progress, val_counter, cfg.bootstrap)
    t_eval = time.perf_counter() - t0

    protocol = {
        "name": "VOC segmentation, FCN-32s (Long et al.; Pathak et al.'s protocol as the authors' released "
                "segmentation runs; the paper's Table 2)",
        "train": {"sbd": "SBD train (dataset/train.txt, SBD's release layout)",
                  "sbd_aug": f"SBD-augmented (SBD train+val + VOC{d.year} {d.train_split} - VOC{d.year} "
                             f"{d.val_split})",
                  "voc": f"VOC{d.year} {d.train_split}"}[d.train],
        "test": f"VOC{d.year} {d.val_split} ({val_source})",
        "network": model.describe(),
        "loss": "softmax cross-entropy, 255 ignored, mean over labelled pixels per image",
        "solver": o.describe(),
        "param_groups": describe_param_groups(optimizer),
        "source": "the authors' feature_learning_tests/segmentation: train_val.prototxt (kernel 63, biases lr x2 "
                  "decay 0), solver0.prototxt and solve.py (three 50k phases at 1e-4, 1e-5, 1e-6)",
        "training_images": "whole images" if not d.train_crop else f"random {d.train_crop} px crops, mirrored",
        "image_scale": d.scale,
        "dropout": cfg.dropout, "input_mode": encoder.input_mode, "ab_branch": cfg.ab_branch,
        "precision": precision, "channels_last": cfg.channels_last,
        "paper_reference_miu": {"Ours (gray)": 35.0, "Ours (color)": 35.6},
    }
    data = {"name": dataset_name(cfg.voc), "voc": str(cfg.voc), "year": d.year,
            "train": {"split": protocol["train"], "images": len(train_ds), "skipped": train_counter.summary(),
                      **({"sbd_counts": train_ds.counts} if hasattr(train_ds, "counts") else {})},
            "val": {"split": d.val_split, "images": len(val_ds), "evaluated": evaluated,
                    "skipped": val_counter.summary()}}
    result = result_record(
        task="segmentation", column="seg", cfg=cfg, prepared=prepared, protocol=protocol, metrics=metrics,
        headline={"metric": "mean_iu", "value": metrics["mean_iu"], "uncertainty": metrics["mean_iu_ci"],
                  "label": "VOC segmentation mean IU, %"},
        data=data, history=history,
        timing={"seconds": round(time.perf_counter() - t_start, 2), "prepare_seconds": round(t_prepare, 2),
                "train_seconds": round(t_train, 2), "eval_seconds": round(t_eval, 2),
                "train_images_per_s": round(images_seen / max(t_train, 1e-9), 2)})
    out = cfg.out or str(default_output("seg", prepared.record.get("name", "encoder"), encoder.input_mode))
    if cfg.save_model:
        model_path = out[:-5] + ".pt" if out.endswith(".json") else out + ".pt"
        atomic_torch_save({"state_dict": model.state_dict(), "config": result["config"]}, model_path)
        result["model"] = model_path
    write_result(out, result)
    return result


# --------------------------------------------------------------------------------------------------------------
# Command line (``xchannel pascal seg``)

DESCRIPTION = """\
Fine-tune FCN-32s on an encoder (fc6/fc7 as convolutions, a 21-way score layer, a bilinear 63x63 stride-32
upsampling) as the authors did: SBD train -> VOC2011 seg11valid (the VOC2011 val images not in SBD train), 150k
iterations (1e-4, 1e-5, 1e-6 for 50k each), 20 images per update; mean IU over the 21 classes and pixel accuracy.
--preset voc2012: VOC2012 train -> val (FCN-AlexNet's own protocol); --preset train_aug: SBD-augmented training.
The encoder is rescaled first (Krähenbühl et al. 2016).

  xchannel pascal seg runs/alexnet/ckpt_00450000.pt --voc VOCdevkit --sbd benchmark_RELEASE/dataset --input-mode color
  xchannel pascal seg kmeans --voc VOCdevkit --preset voc2012"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    add_preset_argument(p, PRESETS)
    p.add_argument("--sbd", help="SBD's dataset folder (img/, cls/, train.txt, val.txt; default: SBD/dataset or "
                                 "benchmark_RELEASE/dataset next to the VOCdevkit)")
    p.add_argument("--ab-branch", action="store_true", default=None,
                   help="color input: a separate zero-initialised ab branch on conv1")


def config_from(args: argparse.Namespace) -> Config:
    return config_from_args(Config, args, {"sbd": "data.sbd", "ab_branch": "ab_branch"}, PRESETS)


def run(args: argparse.Namespace) -> int:
    result = run_task(config_from(args))
    m = result["metrics"]
    print(f"VOC{result['config']['data']['year']} segmentation ({result['encoder']['input_mode']}): mean IU "
          f"{m['mean_iu']:.1f}, pixel accuracy {m['pixel_accuracy']:.1f}")
    print(f"result: {result['output']}")
    return 0


__all__ = ["Config", "FCN32s", "PRESETS", "SegData", "add_arguments", "bilinear_kernel", "ceil_mode_pools", "config",
           "crop_offset", "evaluate", "find_sbd", "reference_solver", "run", "run_task", "segmentation_loss",
           "training_set", "validation_set"]
