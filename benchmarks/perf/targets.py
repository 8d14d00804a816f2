"""Target 1: the colorization targets of a training batch, ours against the authors' training layers.

Workload: 40 crops of 176 x 176 px (the VGG colorizer's training batch, the released setting) cut from real
photographs, uint8 RGB. The loss's resolution is the VGG colorizer's head: stride 4, 44 x 44 per image (77,440
target pixels); AlexNet's head at 176 px (stride 16, 11 x 11) is measured as a second case.

Baseline, the authors' released training net (Caffe with Python layers), on numpy arrays:

* Lab: ``skimage.color.rgb2lab`` of the whole crops (their BGR2Lab layer; L is the network input);
* ab at the loss's resolution: every 4th pixel (their ``data_ab_ss``, a fixed stride-4 convolution);
* NNEncLayer: scikit-learn ``NearestNeighbors(n_neighbors=k, algorithm="ball_tree")`` fitted once on the 313
  bins; ``kneighbors`` on the (N h w) x 2 ab; weights exp(-d^2 / 2 sigma^2), normalised; scattered into a
  preallocated dense (N h w) x 313 array, returned as N x 313 x h x w;
* PriorBoostLayer: argmax over the 313 classes, the rebalancing weight of that bin (N x 1 x h x w);
* NonGrayMaskLayer: an image counts when some |a| or |b| exceeds 5.

Ours, as :class:`xchannel.pretext.colorization.ColorizationTask` runs them every step: ``prepare`` (the network
input L of the whole crops), ``Batch.ab_at`` (the ab of the head's pixels, converted from those pixels only),
``targets`` (``soft_encode_sparse``: k indices and weights per pixel, what the loss uses; the weight of the
nearest bin) and the gray mask. "dense" is the same with ``soft_encode`` (N x 313 x h x w) and ``pixel_weights``.

Equivalence: our float32 targets against the float64 reference. A pixel whose k-th and (k+1)-th nearest bins are
equidistant (within 1e-3 ab units) has two valid target sets; such pixels are counted and left out of the
comparison (likewise for the argmax of Eq. 3 when the two nearest bins tie).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.perf.common import Check, Settings, interleave, median, photo_crops, record, set_threads, stats
from xchannel import color as C

NAME = "targets"
TITLE = "Colorization targets: Lab + soft encoding + rebalancing weights, batch 40 x 176 px"
TIE = 1e-3  # ab units: distances closer than this count as a tie


class AuthorsTargets:
    """The released training layers' computation of the targets (see the module docstring), numpy + sklearn."""

    def __init__(self, k: int, sigma: float, class_weights: np.ndarray, stride: int, offset: int,
                 out_hw: tuple[int, int], gray_threshold: float = 5.0) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.k, self.sigma = k, sigma
        self.bins = C.ab_bins(dtype=torch.float64).numpy()
        self.nbrs = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(self.bins)
        self.prior_factor = class_weights
        self.stride, self.offset, self.out_hw = stride, offset, out_hw
        self.gray_threshold = gray_threshold
        self.enc: np.ndarray | None = None  # the NNEncLayer's preallocated dense encoding

    def lab(self, images: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 -> N x 3 x H x W Lab (float64), as the BGR2Lab layer."""
        from skimage import color as skcolor

        return skcolor.rgb2lab(images).transpose(0, 3, 1, 2)

    def subsample(self, lab: np.ndarray) -> np.ndarray:
        s, o, (h, w) = self.stride, self.offset, self.out_hw
        return lab[:, 1:, o::s, o::s][:, :, :h, :w]

    def encode(self, ab: np.ndarray) -> np.ndarray:
        """NNEncLayer: N x 2 x h x w -> N x 313 x h x w soft targets."""
        n, _, h, w = ab.shape
        pts = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
        if self.enc is None or self.enc.shape[0] != pts.shape[0]:
            self.enc = np.zeros((pts.shape[0], C.Q))
            self.rows = np.arange(pts.shape[0])[:, None]
        else:
            self.enc[...] = 0
        dists, inds = self.nbrs.kneighbors(pts)
        wts = np.exp(-dists**2 / (2 * self.sigma**2))
        wts = wts / np.sum(wts, axis=1)[:, None]
        self.enc[self.rows, inds] = wts
        return self.enc.reshape(n, h, w, C.Q).transpose(0, 3, 1, 2)

    def prior_boost(self, z: np.ndarray) -> np.ndarray:
        """PriorBoostLayer: the rebalancing weight of each pixel's argmax bin, N x 1 x h x w."""
        return self.prior_factor[np.argmax(z, axis=1)][:, None]

    def gray_mask(self, ab: np.ndarray) -> np.ndarray:
        return np.sum(np.abs(ab) > self.gray_threshold, axis=(1, 2, 3)) > 0

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        lab = self.lab(images)
        ab = self.subsample(lab)
        z = self.encode(ab)
        return lab[:, :1], z, self.prior_boost(z), self.gray_mask(ab)


def _task(k: int):
    from xchannel.pretext.colorization import ColorizationTask
    from xchannel.train.config import TrainConfig

    cfg = TrainConfig()
    cfg.pretext = {"loss": {"soft_encoding": "paper" if k == 5 else "released"}}
    return ColorizationTask(cfg, torch.device("cpu"))


def _ties(ab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel (flattened N h w): k-th/(k+1)-th tie, 1st/2nd tie (brute force over the 313 bins, float64)."""
    pts = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    d = np.sort(np.sqrt(((pts[:, None, :] - C.ab_bins(dtype=torch.float64).numpy()[None]) ** 2).sum(-1)), axis=1)
    return d[:, k] - d[:, k - 1] < TIE, d[:, 1] - d[:, 0] < TIE


def equivalence(images: torch.Tensor, k: int, stride: int, offset: int, out_hw: tuple[int, int]) -> dict[str, Any]:
    """Largest differences between our targets (float32) and the reference's (float64), ties left out."""
    task = _task(k)
    ref = AuthorsTargets(k, task.sigma, task.class_weights.numpy(), stride, offset, out_hw)
    L_ref, z_ref, v_ref, m_ref = ref(images.permute(0, 2, 3, 1).numpy())
    batch = task.prepare({"image": images})
    ab = batch.ab_at(stride, offset, out_hw)
    z = C.soft_encode(ab, task.neighbours, task.sigma).double().numpy()
    _, _, v = task.targets(ab)
    set_tie, argmax_tie = _ties(ref.subsample(ref.lab(images.permute(0, 2, 3, 1).numpy())), k)
    zf, zrf = z.transpose(0, 2, 3, 1).reshape(-1, C.Q), z_ref.transpose(0, 2, 3, 1).reshape(-1, C.Q)
    vf, vrf = v.double().numpy().reshape(-1), v_ref.reshape(-1)
    keep, keep_v = ~set_tie, ~(set_tie | argmax_tie)
    return {
        "pixels": int(zf.shape[0]), "tie_pixels": int(set_tie.sum()), "argmax_tie_pixels": int(argmax_tie.sum()),
        "max_abs_diff_targets": float(np.abs(zf[keep] - zrf[keep]).max()),
        "max_rel_diff_pixel_weights": float((np.abs(vf[keep_v] - vrf[keep_v]) / vrf[keep_v]).max()),
        "max_abs_diff_L": float(np.abs(batch.L.double().numpy() - L_ref).max()),
        "gray_mask_equal": bool(np.array_equal(batch.has_color.numpy(), m_ref)),
    }


def _cases(images: torch.Tensor, k: int, stride: int, offset: int, out_hw: tuple[int, int],
           dense: bool = True) -> dict[str, Any]:
    """The timed functions: the reference, and ours with and without the network input L."""
    task = _task(k)
    ref = AuthorsTargets(k, task.sigma, task.class_weights.numpy(), stride, offset, out_hw)
    np_images = images.permute(0, 2, 3, 1).contiguous().numpy()  # the data layer's arrays (not timed)

    def ours_targets() -> None:  # what the loss computes: ab of the head's pixels, sparse targets, weights, mask
        batch = task.prepare({"image": images})
        task.targets(batch.ab_at(stride, offset, out_hw))
        batch.has_color

    def ours_with_L() -> None:  # the same and the network input L of the whole crops: one training step's data
        batch = task.prepare({"image": images})
        batch.L
        task.targets(batch.ab_at(stride, offset, out_hw))
        batch.has_color

    def ours_dense() -> None:  # the dense N x 313 x h x w targets and pixel_weights instead of the sparse form
        batch = task.prepare({"image": images})
        ab = batch.ab_at(stride, offset, out_hw)
        C.soft_encode(ab, task.neighbours, task.sigma)
        C.pixel_weights(ab, task.class_weights)
        batch.has_color

    cases = {"reference": lambda: ref(np_images), "ours_targets": ours_targets}
    if dense:
        cases["ours_dense"] = ours_dense
        cases["ours_with_L"] = ours_with_L
    return cases


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    set_threads(settings)
    started = time.perf_counter()
    n, size = settings.pick(40, 40, 4), settings.pick(176, 176, 48)
    repeats = settings.pick(15, 7, 1)
    images = photo_crops(n, size, seed=0)
    vgg = (4, 0, (size // 4, size // 4))  # VGG colorizer head: stride 4, offset 0 (44 x 44 at 176 px)
    alex = (16, 0, ((size - 1) // 16 + 1,) * 2)  # AlexNet pretext head: stride 16 (11 x 11 at 176 px)
    figures: dict[str, Any] = {}

    t = interleave(_cases(images, 5, *vgg), repeats)
    figures["vgg_k5_seconds"] = {name: stats(v) for name, v in t.items()}
    ref = median(t["reference"])
    speed = {name: ref / median(t[name]) for name in ("ours_targets", "ours_dense", "ours_with_L")}
    figures["vgg_k5_speedup"] = speed
    eq5 = equivalence(images, 5, *vgg)
    figures["vgg_k5_equivalence"] = eq5

    if settings.mode != "smoke":  # the released code's k = 10, and the AlexNet head's resolution
        t10 = interleave(_cases(images, 10, *vgg, dense=False), max(1, repeats // 2))
        figures["vgg_k10_seconds"] = {name: stats(v) for name, v in t10.items()}
        figures["vgg_k10_speedup"] = median(t10["reference"]) / median(t10["ours_targets"])
        figures["vgg_k10_equivalence"] = equivalence(images, 10, *vgg)

        ta = interleave(_cases(images, 5, *alex, dense=False), max(1, repeats // 2))
        figures["alexnet_k5_seconds"] = {name: stats(v) for name, v in ta.items()}
        figures["alexnet_k5_speedup"] = median(ta["reference"]) / median(ta["ours_targets"])
        figures["alexnet_k5_equivalence"] = equivalence(images, 5, *alex)

    base = "sklearn NNEncLayer + skimage Lab"
    checks = [
        Check("speed-up, targets at the VGG head (44x44)", speed["ours_targets"], ">=", 20.0, baseline=base,
              note="sparse targets, what the loss uses"),
        Check("max abs target difference", eq5["max_abs_diff_targets"], "<=", 1e-5, unit="abs", baseline=base,
              note=f"{eq5['tie_pixels']} of {eq5['pixels']} pixels at a k-th-neighbour tie left out"),
    ]
    if "alexnet_k5_speedup" in figures:
        checks.insert(1, Check("speed-up, targets at the AlexNet head (11x11)", figures["alexnet_k5_speedup"], ">=",
                               20.0, baseline=base, note="sparse targets, what the loss uses"))
    workload = {"images": n, "size": size, "source": "crops of scikit-image's sample photographs",
                "loss_resolution": f"{vgg[2][0]}x{vgg[2][1]} (VGG colorizer head, stride 4); AlexNet head "
                                   f"{alex[2][0]}x{alex[2][1]} (stride 16) as a second case",
                "neighbours": "5 (paper); 10 (released code) as a second case", "sigma": 5.0, "repeats": repeats}
    notes = ["The reference converts the whole crops to Lab, as the authors' data path does (their L is the "
             "network input); ours converts only the pixels the loss uses (Lab is a per-pixel map).",
             "'ours_with_L' adds our network input L of the whole crops (lightness only): the ratio against it is "
             "the whole data path of a training step (figure vgg_k5_speedup.ours_with_L).",
             "'ours_dense' builds the dense N x 313 x h x w targets (soft_encode) and pixel_weights instead of the "
             "sparse form the loss uses (a figure, not a target: writing the 97 MB float32 array at 40 x 44 x 44 "
             "is memory-bound; the loss never needs it)."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)
