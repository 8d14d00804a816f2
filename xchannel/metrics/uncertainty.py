"""Uncertainty of benchmark numbers: percentile-bootstrap 95 % intervals over test images, and chance levels.

Every benchmark number of xchannel is a statistic of a finite test set; on a small set (the embedded data set
holds 100 to 160 test images) it moves by several points when other images are drawn. This module gives each
number an interval that says how far:

* **Percentile bootstrap** (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13): draw the test
  images with replacement ``resamples`` times (seeded), recompute the statistic on each replicate with the very
  scorer of the benchmark, and take the 2.5 and 97.5 percentiles of the replicates. A replicate is stored as
  counts (:func:`resample_counts`: how often each image was drawn), so a statistic that sums over images is a
  matrix product and every benchmark's bootstrap costs well under a second.
* **Seeds and images together** (:func:`accuracy_interval`): where training is cheap enough to repeat with
  several seeds (the linear probes on cached features), each replicate draws the seeds with replacement as well
  as the images and averages the accuracy of the drawn seeds on the drawn images: the two-stage bootstrap of
  Davison & Hinkley (*Bootstrap Methods and their Application*, 1997, Sec. 3.8). The headline is the mean over
  seeds; its interval covers both the test-set sampling and the spread between seeds.
* **Comparisons** (:func:`accuracy_difference_interval`, :func:`separation`): two encoders scored on the same
  images are compared on the paired difference (the same images drawn for both, seeds drawn independently). One is
  *ahead* when the difference's 95 % interval lies above zero, *behind* when it lies below, and otherwise the two
  are *not separable at 95 %*.
* **Chance levels**: classification mAP of random scores (:func:`chance_map`: many draws of random rankings on
  the test labels; its mean also in closed form, :func:`expected_random_ap`) and the probe's chance accuracy
  (:func:`chance_accuracy`: one over the classes, and the majority class's share).

The statistics and the scorer they reproduce:

=====================================  =========================================================================
:func:`accuracy_interval`              top-1 accuracy (%) of the linear probes, per layer
:func:`classification_map_interval`    scikit-learn AP per class and mAP (% ; :func:`xchannel.metrics.voc_cls_ap`)
:func:`detection_map_interval`         VOC07 detection mAP (%; :func:`xchannel.metrics.voc_det_eval`)
:func:`segmentation_miu_interval`      FCN mean IU (%; :func:`xchannel.metrics.mean_iu` of summed confusions)
=====================================  =========================================================================

Each returns an :class:`Interval`, whose :meth:`Interval.to_dict` is what result files keep:
``{"value", "ci95": [lo, hi], "half_width", "per_seed": [...], "bootstrap": {"resamples", "seed", ...}}``
(``per_seed`` holds the one value of a single training run: the PASCAL fine-tunings run one seed, so their
intervals cover the test images only).
Replicates in which the statistic is undefined (a mean IU with no class present) are left out of the percentiles;
the count left out is recorded, and so is the replicates' mean. The percentile interval need not be centred on the
value: on a small test set the AP of a replicate tends to exceed the full set's (an image drawn twice puts two
positives at one score), and the interval then sits mostly above the value; ``replicate_mean`` shows that bias.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from xchannel.metrics.voc import (VOC07_RECALL_THRESHOLDS, ClassDetections, GroundTruth, ground_truth_by_class,
                                  match_detections)

__all__ = ["BootstrapConfig", "Interval", "accuracy_difference_interval", "accuracy_interval", "chance_accuracy",
           "chance_map", "classification_map_interval", "colorization_auc_interval", "detection_map_interval",
           "expected_random_ap", "mean_std", "overlap_separation", "percentile_interval", "resample_counts",
           "segmentation_miu_interval", "separation"]

#: Replicates per block in the vectorised scorers (bounds their memory: block x detections float64 arrays).
_BLOCK = 100


@dataclass(frozen=True)
class BootstrapConfig:
    """How the 95 % intervals are drawn: ``resamples`` replicates from a generator seeded with ``seed``."""

    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1 (got {self.resamples})")


@dataclass(frozen=True)
class Interval:
    """A statistic (``value``), its bootstrap interval ``[lo, hi]`` and, where seeds were repeated, the value of
    each seed (``per_seed``)."""

    value: float
    lo: float
    hi: float
    config: BootstrapConfig = field(default_factory=BootstrapConfig)
    per_seed: tuple[float, ...] = ()
    method: str = "percentile bootstrap over test images"
    undefined: int = 0  # replicates where the statistic is undefined, left out of the percentiles
    replicate_mean: float = float("nan")  # the replicates' mean: its distance from value is the bootstrap's bias
    seconds: float = 0.0  # what computing the interval cost

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi],
                "half_width": self.half_width, "per_seed": list(self.per_seed),
                "bootstrap": {"resamples": self.config.resamples, "seed": self.config.seed, "method": self.method,
                              "seconds": round(self.seconds, 3), "replicate_mean": self.replicate_mean,
                              **({"undefined_replicates": self.undefined} if self.undefined else {})}}


def _timed(fn: Callable) -> Callable:
    """Record in the returned :class:`Interval` (the first, for a tuple) the seconds ``fn`` took."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if isinstance(out, Interval):
            return replace(out, seconds=time.perf_counter() - t0)
        return (replace(out[0], seconds=time.perf_counter() - t0), *out[1:])

    return wrapper


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value) of a statistic over repeated runs, e.g. the
    top-1 of probes trained with several seeds."""
    vals = [float(v) for v in values]
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


def resample_counts(n: int, config: BootstrapConfig = BootstrapConfig()) -> np.ndarray:
    """``resamples x n`` counts: entry ``[b, i]`` is how often image ``i`` was drawn into replicate ``b`` (``n``
    uniform draws with replacement per replicate, from ``numpy.random.default_rng(config.seed)``)."""
    if n < 1:
        raise ValueError("the bootstrap needs at least one test image")
    rng = np.random.default_rng(config.seed)
    idx = rng.integers(0, n, size=(config.resamples, n))
    flat = (np.arange(config.resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=config.resamples * n).reshape(config.resamples, n)


def percentile_interval(value: float, replicates: np.ndarray, config: BootstrapConfig = BootstrapConfig(),
                        per_seed: Sequence[float] = (), method: str = "percentile bootstrap over test images"
                        ) -> Interval:
    """The percentile interval of ``replicates`` (non-finite ones left out) around ``value``."""
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    ok = np.isfinite(reps)
    lo, hi = (np.percentile(reps[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan))
    return Interval(float(value), float(lo), float(hi), config, tuple(float(v) for v in per_seed), method,
                    int((~ok).sum()), replicate_mean=float(reps[ok].mean()) if ok.any() else float("nan"))


# --------------------------------------------------------------------------------------------------------------
# Accuracy (linear probes)


def _per_seed(correct: Any) -> np.ndarray:
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"correct must be n or seeds x n per-image hits, got shape {np.shape(correct)}")
    return c


def _seed_mean_replicates(acc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``acc``: seeds x replicates accuracies; per replicate, the mean over seeds drawn with replacement."""
    seeds, resamples = acc.shape
    if seeds == 1:
        return acc[0]
    draw = rng.integers(0, seeds, size=(resamples, seeds))
    return acc[draw, np.arange(resamples)[:, None]].mean(axis=1)


@_timed
def accuracy_interval(correct: Any, config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Top-1 accuracy (%) with its interval. ``correct``: ``n`` or ``seeds x n`` per-image hits (1 = the top
    prediction is the label), every seed on the same ``n`` images in the same order. The value is the mean over
    seeds; replicates draw images and seeds (module docstring, Davison & Hinkley's two-stage bootstrap)."""
    c = _per_seed(correct)
    counts = resample_counts(c.shape[1], config)
    acc = 100.0 * (c @ counts.T) / c.shape[1]  # seeds x replicates
    reps = _seed_mean_replicates(acc, np.random.default_rng([config.seed, 1]))
    per_seed = 100.0 * c.mean(axis=1)
    method = "percentile bootstrap over test images" + (" and seeds (two-stage)" if len(c) > 1 else "")
    return percentile_interval(float(per_seed.mean()), reps, config, per_seed, method)


@_timed
def accuracy_difference_interval(correct_a: Any, correct_b: Any,
                                 config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Accuracy of A minus accuracy of B (points), both scored on the same images in the same order: the images
    are drawn once for both (paired), the seeds of each independently."""
    a, b = _per_seed(correct_a), _per_seed(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B were scored on different image counts ({a.shape[1]} vs {b.shape[1]})")
    counts = resample_counts(a.shape[1], config).T
    n = a.shape[1]
    rng = np.random.default_rng([config.seed, 2])
    reps = (_seed_mean_replicates(100.0 * (a @ counts) / n, rng)
            - _seed_mean_replicates(100.0 * (b @ counts) / n, rng))
    value = 100.0 * (a.mean() - b.mean())
    return percentile_interval(float(value), reps, config, (), "paired percentile bootstrap of the difference "
                               "over test images (seeds drawn independently)")


def separation(difference: Interval) -> Literal["ahead", "behind", "not separable"]:
    """``ahead`` when the interval of A - B lies above 0, ``behind`` when below, else ``not separable``."""
    if difference.lo > 0:
        return "ahead"
    if difference.hi < 0:
        return "behind"
    return "not separable"


def overlap_separation(a: Sequence[float], b: Sequence[float]) -> Literal["ahead", "behind", "not separable"]:
    """Two independent runs' 95 % intervals ``[lo, hi]``: ``ahead`` when A's lies wholly above B's, ``behind`` when
    wholly below, else ``not separable`` (a conservative reading: no paired resampling is possible across runs)."""
    if a[0] > b[1]:
        return "ahead"
    if a[1] < b[0]:
        return "behind"
    return "not separable"


def chance_accuracy(labels: Any, num_classes: int) -> dict[str, float]:
    """Chance top-1 (%): ``uniform`` guessing (100 / classes) and always the ``majority`` class of ``labels``."""
    lab = np.asarray(labels, dtype=np.int64).ravel()
    majority = 100.0 * np.bincount(lab, minlength=num_classes).max() / max(len(lab), 1)
    return {"uniform": 100.0 / num_classes, "majority": float(majority)}


# --------------------------------------------------------------------------------------------------------------
# Classification AP (scikit-learn's, as voc_cls_ap(metric="sklearn") computes it)


def _weighted_sklearn_ap(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scikit-learn's AP of one class on each weighted replicate (rows of ``weights``: how often each image is in
    it). ``average_precision_score`` sums ``(R_k - R_{k-1}) P_k`` over the distinct scores in decreasing order;
    an image drawn ``w`` times adds ``w`` to the true or false positives at its score, as ``w`` copies would. A
    replicate without a positive scores 0, as :func:`~xchannel.metrics.voc_cls_ap` reports such a class."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last item of each distinct score
    w = weights[:, order].astype(np.float64)
    tps = np.cumsum(w * y, axis=1)[:, ends]
    fps = np.cumsum(w * ~y, axis=1)[:, ends]
    npos = tps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        rec = np.where(npos > 0, tps / npos, 0.0)
    ap = np.sum(np.diff(rec, axis=1, prepend=0.0) * prec, axis=1)
    ap[npos[:, 0] == 0] = 0.0
    return ap


def _cls_columns(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if s.ndim != 2 or s.shape != lab.shape:
        raise ValueError(f"scores {s.shape} and labels {lab.shape} must be the same N x C shape")
    return s, lab


@_timed
def classification_map_interval(scores: Any, labels: Any, config: BootstrapConfig = BootstrapConfig()
                                ) -> tuple[Interval, list[Interval]]:
    """mAP (%) and each class's AP (%) with intervals, for ``N x C`` scores and VOC labels (1 / -1 / 0 difficult),
    scored as :func:`~xchannel.metrics.voc_cls_ap` with ``metric="sklearn"``: difficult images left out of their
    class, positives lowered by 1e-5 (ties against them), a class without positive AP 0."""
    s, lab = _cls_columns(scores, labels)
    counts = resample_counts(len(s), config)
    ones = np.ones((1, len(s)))
    reps = np.zeros((config.resamples, s.shape[1]))
    values = np.zeros(s.shape[1])
    for c in range(s.shape[1]):
        keep = lab[:, c] != 0
        y = lab[keep, c] > 0
        sc = s[keep, c] - 1e-5 * y  # the reference code's tie-break
        values[c] = 100.0 * _weighted_sklearn_ap(sc, y, ones)[0]
        reps[:, c] = 100.0 * _weighted_sklearn_ap(sc, y, counts[:, keep])
    per_class = [percentile_interval(values[c], reps[:, c], config) for c in range(s.shape[1])]
    value = float(values.mean())
    return percentile_interval(value, reps.mean(axis=1), config, (value,)), per_class


def expected_random_ap(positives: int, items: int) -> float:
    """Expected AP of a uniformly random ranking of ``items`` with ``positives`` positives (no ties):
    ``(P - 1) / (N - 1) + (N - P) H_N / (N (N - 1))``, ``H_N`` the N-th harmonic number. (The precision at a
    positive of rank r has expectation ``(P - 1) / (N - 1) + (N - P) / ((N - 1) r)``; r is uniform on 1..N.)"""
    p, n = int(positives), int(items)
    if p == 0:
        return 0.0
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (p - 1) / (n - 1) + (n - p) * harmonic / (n * (n - 1))


def chance_map(labels: Any, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The mAP (%) of random scores on the test labels: ``draws`` independent random rankings per class (ties
    have probability 0), scored as :func:`classification_map_interval` scores (difficult images left out, a class
    without positive AP 0). Returns the mean, the central 95 % range of the draws and the closed-form expectation
    (:func:`expected_random_ap`)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be N x C, got shape {lab.shape}")
    rng = np.random.default_rng(seed)
    maps = np.zeros(draws)
    expected = []
    for c in range(lab.shape[1]):
        y = lab[lab[:, c] != 0, c] > 0
        npos = int(y.sum())
        expected.append(expected_random_ap(npos, len(y)))
        if npos == 0:
            continue
        ranked = y[np.argsort(rng.random((draws, len(y))), axis=1)]  # a random order per draw
        hits = np.cumsum(ranked, axis=1)
        maps += np.sum(ranked * hits / np.arange(1, len(y) + 1), axis=1) / npos
    maps *= 100.0 / lab.shape[1]
    lo, hi = np.percentile(maps, [2.5, 97.5])
    return {"mean": float(maps.mean()), "range95": [float(lo), float(hi)],
            "expected": 100.0 * float(np.mean(expected)), "draws": draws, "seed": seed,
            "label": "mAP of uniformly random scores on the test labels (mean and central 95 % of the draws)"}


# --------------------------------------------------------------------------------------------------------------
# Detection mAP (VOCevaldet.m, as voc_det_eval computes it)


def _ap_curves(rec: np.ndarray, prec: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise :func:`~xchannel.metrics.voc.voc07_11point_ap` or :func:`~xchannel.metrics.voc.voc12_ap`."""
    if metric == "voc07":
        ap = np.zeros(len(rec))
        for t in VOC07_RECALL_THRESHOLDS:
            ap += np.where(rec >= t, prec, 0.0).max(axis=1, initial=0.0) / 11
        return ap
    if metric == "voc12":
        b = len(rec)
        mrec = np.hstack([np.zeros((b, 1)), rec, np.ones((b, 1))])
        mpre = np.hstack([np.zeros((b, 1)), prec, np.zeros((b, 1))])
        mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
        return np.sum(np.diff(mrec, axis=1) * mpre[:, 1:], axis=1)
    raise ValueError(f"unknown AP metric {metric!r}; expected 'voc07' or 'voc12'")


def _detection_ap_rows(image_of: np.ndarray, tp: np.ndarray, fp: np.ndarray, npos_image: np.ndarray,
                       weights: np.ndarray, metric: str) -> np.ndarray:
    """AP of ranked, already matched detections on weighted replicates. A detection's label (true positive,
    false positive, ignored) depends only on the detections of its own image ranked above it, so it is the same
    in every replicate; an image drawn ``w`` times counts its detections and objects ``w`` times (its copies'
    detections adjacent in the ranking, which leaves the devkit's AP as any order of the copies would)."""
    out = np.zeros(len(weights))
    for start in range(0, len(weights), _BLOCK):
        w_img = weights[start: start + _BLOCK].astype(np.float64)
        npos = w_img @ npos_image
        if tp.size == 0:
            continue
        w = w_img[:, image_of]
        ctp, cfp = np.cumsum(w * tp, axis=1), np.cumsum(w * fp, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = np.where(npos[:, None] > 0, ctp / npos[:, None], 0.0)
            prec = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
        ap = _ap_curves(rec, prec, metric)
        ap[npos == 0] = 0.0
        out[start: start + len(w_img)] = ap
    return out


@_timed
def detection_map_interval(annotations: Mapping[str, Mapping[str, Any]],
                           detections: Mapping[str, ClassDetections], classes: Sequence[str], *,
                           iou_threshold: float = 0.5, inclusive: bool = True, metric: str = "voc07",
                           config: BootstrapConfig = BootstrapConfig(), expected: float | None = None) -> Interval:
    """Detection mAP (%) over ``classes`` with its interval, the test images (the keys of ``annotations``)
    resampled. Each class's detections are matched once (:func:`~xchannel.metrics.voc.match_detections`, the
    devkit's rule); each replicate then reweights them by their image's count. ``expected``: the full-set mAP
    (%) of :func:`~xchannel.metrics.voc_det_eval`; the identity replicate (every image once) must reproduce it,
    else ``AssertionError``."""
    image_ids = list(annotations)
    position = {img: i for i, img in enumerate(image_ids)}
    gts = ground_truth_by_class(annotations, classes)
    counts = resample_counts(len(image_ids), config)
    ones = np.ones((1, len(image_ids)))
    reps = np.zeros((config.resamples, len(classes)))
    values = np.zeros(len(classes))
    for k, c in enumerate(classes):
        dets = detections.get(c, ClassDetections.empty())
        truth: Mapping[str, GroundTruth] = gts[c]
        order, tp, fp = match_detections(dets, truth, iou_threshold=iou_threshold, inclusive=inclusive)
        keep = tp | fp
        image_of = np.array([position[dets.image_ids[d]] for d in order[keep]], dtype=np.int64)
        npos_image = np.array([float((~truth[img].difficult).sum()) for img in image_ids])
        values[k] = _detection_ap_rows(image_of, tp[keep], fp[keep], npos_image, ones, metric)[0]
        reps[:, k] = _detection_ap_rows(image_of, tp[keep], fp[keep], npos_image, counts, metric)
    value = 100.0 * float(values.mean())
    if expected is not None and abs(value - expected) > 1e-9:
        raise AssertionError(f"the identity replicate gives mAP {value!r}, the scorer {expected!r}")
    return percentile_interval(value, 100.0 * reps.mean(axis=1), config, (value,))


# --------------------------------------------------------------------------------------------------------------
# Segmentation mean IU (FCN's score.py on the summed confusion matrix)


def _mean_iu_rows(hist: np.ndarray) -> np.ndarray:
    """Row-wise :func:`~xchannel.metrics.mean_iu` of ``B x C x C`` confusion matrices (NaN: no class present)."""
    d = np.diagonal(hist, axis1=1, axis2=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        iu = d / (hist.sum(2) + hist.sum(1) - d)
    present = np.isfinite(iu)
    total = np.where(present, iu, 0.0).sum(1)
    count = present.sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _auc_rows(hist: np.ndarray) -> np.ndarray:
    """Row-wise AuC (%) of ``B x (T + 2)`` (weighted) error histograms, bins 0..T+1 (T + 1: beyond every
    threshold): the trapezoid area under the cumulative fraction over thresholds 0..T, divided by T
    (:meth:`~xchannel.metrics.colorization.AbAucMeter.auc`)."""
    t = hist.shape[1] - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(hist, 1)[:, : t + 1] / hist.sum(1, keepdims=True)
    return 100.0 * (cum.sum(1) - (cum[:, 0] + cum[:, -1]) / 2.0) / t


@_timed
def colorization_auc_interval(per_image: Any, config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Table 1's AuC (%) with its interval from ``n x (T + 2)`` per-image error histograms (pixel counts, or
    pixel weights for the rebalanced AuC): each replicate sums the histograms of its images (with their counts)
    and scores the sum, so that an image's pixels stay together, as they are not independent."""
    h = np.asarray(per_image, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] < 3:
        raise ValueError(f"per_image must be n x (T + 2) error histograms, got shape {h.shape}")
    value = float(_auc_rows(h.sum(0, keepdims=True))[0])
    counts = resample_counts(h.shape[0], config).astype(np.float64)
    reps = np.concatenate([_auc_rows(counts[i: i + _BLOCK] @ h) for i in range(0, len(counts), _BLOCK)])
    return percentile_interval(value, reps, config, (value,), "percentile bootstrap over images")


@_timed
def segmentation_miu_interval(per_image: Any, config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Mean IU (%) with its interval from ``n x C x C`` per-image confusion matrices: each replicate sums the
    matrices of its images (with their counts) and scores the sum as FCN's ``score.py`` (classes absent from
    labels and predictions left out; a replicate with none present is undefined)."""
    h = np.asarray(per_image, dtype=np.float64)
    if h.ndim != 3 or h.shape[1] != h.shape[2]:
        raise ValueError(f"per_image must be n x C x C confusion matrices, got shape {h.shape}")
    n, c = h.shape[0], h.shape[1]
    flat = h.reshape(n, c * c)
    value = _mean_iu_rows(flat.sum(0).reshape(1, c, c))[0]
    counts = resample_counts(n, config).astype(np.float64)
    reps = np.concatenate([_mean_iu_rows((counts[i: i + _BLOCK] @ flat).reshape(-1, c, c))
                           for i in range(0, len(counts), _BLOCK)])
    return percentile_interval(100.0 * float(value), 100.0 * reps, config, (100.0 * float(value),))
