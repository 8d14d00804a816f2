"""PASCAL VOC average precision, computed exactly as the official evaluation code computes it.

The paper reports PASCAL VOC 2007 classification and detection as "% mAP" (Table 2, Sec. 3.2): classification
follows the protocol of Krähenbühl et al. (ref. [36]/[16]), detection uses Fast R-CNN with the VOC07 devkit
metric. This module reproduces the scoring code of those protocols, including its corner cases, so that a number
computed here can be compared with a published one.

Classification (:func:`voc_cls_ap`)
    Labels use VOC's convention from ``ImageSets/Main/<class>_<split>.txt``: ``1`` present, ``-1`` absent, ``0``
    "difficult" (ignored: neither positive nor negative).

    * ``metric="voc07"``: ``VOCevalcls.m`` of the VOC2007 devkit::

          [so,si]=sort(-out); tp=gt(si)>0; fp=gt(si)<0;
          fp=cumsum(fp); tp=cumsum(tp); rec=tp/sum(gt>0); prec=tp./(fp+tp);
          ap=0; for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end; ap=ap+p/11; end

    * ``metric="voc12"``: the same precision/recall, scored with ``VOCap.m`` of the 2010+ devkits (the area under
      the precision envelope, see :func:`voc12_ap`).
    * ``metric="sklearn"``: the protocol of Krähenbühl et al.'s ``voc-classification`` code (``train_cls.py``),
      also used by later self-supervision papers: difficult images are dropped, and
      ``sklearn.metrics.average_precision_score(y, s - 1e-5 * y)`` with ``y`` in {0, 1} — ties between a
      positive and a negative are broken *against* the positive (pessimistic AP).

Detection (:func:`voc_det_ap`, :func:`voc_det_eval`)
    ``VOCevaldet.m`` of the VOC2007 devkit (see :func:`match_detections` for the matching rule and for the one
    point where the widely used Python port differs).

Two details that make "the same algorithm" give different numbers, both reproduced here:

* MATLAB's ``sort`` is stable: tied confidences keep their input order. We use a stable sort too (the Python
  port's ``np.argsort(-confidence)`` is not stable).
* MATLAB's ``0:0.1:1`` is computed symmetrically from both ends, so its elements are
  ``[0, .1, .2, 0.30000000000000004, .4, .5, .6, .7, .8, .9, 1]``; ``numpy.arange(0, 1.1, 0.1)`` instead has
  ``0.6000000000000001`` and ``0.7000000000000001``. A recall of exactly 3/5 therefore reaches the ``t = 0.6``
  threshold in the devkit but not in a numpy port. :data:`VOC07_RECALL_THRESHOLDS` holds the devkit's values.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from xchannel.data.voc import VOC_CLASSES  # the devkit's class order

__all__ = [
    "VOC_CLASSES",
    "VOC07_RECALL_THRESHOLDS",
    "ClassDetections",
    "DetectionAP",
    "GroundTruth",
    "VOCDetectionResult",
    "voc07_11point_ap",
    "voc12_ap",
    "voc_cls_ap",
    "voc_cls_map",
    "mean_ap",
    "voc_box_iou",
    "match_detections",
    "voc_det_ap",
    "voc_det_eval",
    "ground_truth_by_class",
]

APMetric = Literal["voc07", "voc12"]
ClsMetric = Literal["sklearn", "voc07", "voc12"]


def _matlab_colon(a: float, d: float, b: float) -> tuple[float, ...]:
    """The elements of MATLAB's ``a:d:b`` for ``d > 0`` and ``(b - a) / d`` (almost) an integer.

    MATLAB builds the vector symmetrically: the first half as ``a + k*d`` and the second half as ``b - k*d``
    (and the exact midpoint as ``(a + b) / 2``), so that ``0:0.1:1`` ends in exactly ``0.9`` and ``1``.
    """
    n = int(round((b - a) / d))
    v = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        v[k] = a + k * d
        v[n - k] = b - k * d
    if n % 2 == 0:
        v[n // 2] = (a + b) / 2
    return tuple(v)


#: ``t`` in the devkit's ``for t=0:0.1:1`` loop, bit for bit as MATLAB computes them.
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = _matlab_colon(0.0, 0.1, 1.0)


def voc07_11point_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP: ``(1/11) * sum_t max{prec[i] : rec[i] >= t}``, t in ``0:0.1:1``.

    The maximum over an empty set counts as 0 (the devkit's ``if isempty(p), p=0``). ``rec`` and ``prec`` are
    the cumulative recall and precision after each ranked item, as the devkit computes them.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    ap = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        sel = prec[rec >= t]
        ap += (float(sel.max()) if sel.size else 0.0) / 11
    return ap


def voc12_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ AP (``VOCap.m``): the area under the monotonically decreasing precision envelope.

    ``mrec = [0, rec, 1]``, ``mpre = [0, prec, 0]``; ``mpre[i] = max(mpre[i], mpre[i+1])`` from the right; then
    ``AP = sum over recall changes of (mrec[i] - mrec[i-1]) * mpre[i]``.
    """
    mrec = np.concatenate(([0.0], np.asarray(rec, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _ap_from_ranked(tp: np.ndarray, fp: np.ndarray, npos: int, metric: APMetric) -> float:
    """AP of a ranked list whose items are each a true positive or a false positive (ignored items removed).

    ``rec = cumsum(tp) / npos``, ``prec = cumsum(tp) / (cumsum(tp) + cumsum(fp))``. Removing the devkit's ignored
    items (difficult images, detections of difficult objects) before this step is exact: an ignored item
    repeats the previous (recall, precision) point, or gives 0/0 precision at recall 0, and neither changes a
    maximum nor the area. With ``npos == 0`` no item can be a true positive and the devkit's AP is 0.
    """
    if npos == 0 or tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(fp, dtype=np.float64)
    rec = ctp / npos
    prec = ctp / (ctp + cfp)
    if metric == "voc07":
        return voc07_11point_ap(rec, prec)
    if metric == "voc12":
        return voc12_ap(rec, prec)
    raise ValueError(f"unknown AP metric {metric!r}; expected 'voc07' or 'voc12'")


# ---------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------

def _as_2d(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an N array or an N x C array, got shape {np.shape(a)}")
    return arr


def voc_cls_ap(scores: Any, labels: Any, metric: ClsMetric = "sklearn") -> np.ndarray:
    """Per-class average precision of image classification scores under VOC's label convention.

    Args:
        scores: ``N x C`` (or ``N`` for one class) real scores, higher = more confident the class is present.
        labels: same shape, VOC labels: ``1`` present, ``-1`` absent, ``0`` difficult (ignored).
        metric: ``"sklearn"`` (the self-supervision classification protocol: scikit-learn AP over the
            non-difficult images, ties broken against the positives by lowering positive scores by 1e-5),
            ``"voc07"`` (the VOC2007 devkit's 11-point AP, ``VOCevalcls.m``) or ``"voc12"`` (VOC2010+ area AP).

    Returns:
        ``(C,)`` float64 array of AP in [0, 1] (``C = 1`` for 1-D input). A class without any positive image
        gets AP 0, as both the devkit and scikit-learn report it, with a warning.

    Note on the tie-break: the reference code maps VOC labels to ``y`` in {0: absent, 1: present} before
    scoring ``s - 1e-5 * y``, so negatives keep their score and positives drop by 1e-5. Subtracting 1e-5 times
    the raw +-1 label instead would also raise negatives by 1e-5, a different result when a negative scores
    less than 2e-5 below a positive; we follow the reference code.
    """
    s = _as_2d("scores", scores).astype(np.float64)
    lab = _as_2d("labels", labels)
    if s.shape != lab.shape:
        raise ValueError(f"scores {s.shape} and labels {lab.shape} must have the same shape")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    bad = ~np.isin(lab, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"labels must be 1 (present), -1 (absent) or 0 (difficult); found "
                         f"{sorted(set(np.asarray(lab)[bad].tolist()))[:5]}")
    if metric not in ("sklearn", "voc07", "voc12"):
        raise ValueError(f"unknown metric {metric!r}; expected 'sklearn', 'voc07' or 'voc12'")
    lab = lab.astype(np.int64)

    aps = np.zeros(s.shape[1], dtype=np.float64)
    for c in range(s.shape[1]):
        keep = lab[:, c] != 0  # difficult images are neither positives nor negatives
        y = lab[keep, c] > 0
        sc = s[keep, c]
        npos = int(y.sum())
        if npos == 0:
            warnings.warn(f"class {c} has no positive (non-difficult) image; its AP is 0", RuntimeWarning,
                          stacklevel=2)
            continue
        if metric == "sklearn":
            from sklearn.metrics import average_precision_score

            aps[c] = float(average_precision_score(y, sc - 1e-5 * y))
        else:
            order = np.argsort(-sc, kind="stable")  # MATLAB's sort(-out) is stable
            tp = y[order]
            aps[c] = _ap_from_ranked(tp, ~tp, npos, metric)
    return aps


def mean_ap(aps: Any) -> float:
    """Mean of per-class APs (a ``Mapping`` class -> AP, or a sequence/array): the "mAP" of the VOC tables."""
    values = list(aps.values()) if isinstance(aps, Mapping) else np.asarray(aps, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("mean_ap of an empty set of classes")
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def voc_cls_map(scores: Any, labels: Any, metric: ClsMetric = "sklearn") -> float:
    """Mean over classes of :func:`voc_cls_ap`."""
    return mean_ap(voc_cls_ap(scores, labels, metric))


# ---------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundTruth:
    """The ground-truth objects of one class in one image: ``boxes`` K x 4 ``(xmin, ymin, xmax, ymax)``
    in VOC's 1-based, pixel-inclusive coordinates, ``difficult`` K booleans."""

    boxes: np.ndarray
    difficult: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if len(boxes) != len(difficult):
            raise ValueError(f"{len(boxes)} boxes but {len(difficult)} difficult flags")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "difficult", difficult)


@dataclass(frozen=True)
class ClassDetections:
    """All detections of one class over a data set, as in a ``comp4_det_<split>_<class>.txt`` file:
    ``image_ids`` N strings, ``scores`` N confidences, ``boxes`` N x 4 ``(xmin, ymin, xmax, ymax)``."""

    image_ids: Sequence[str]
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        ids = tuple(self.image_ids)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(ids) == len(scores) == len(boxes):
            raise ValueError(f"{len(ids)} image ids, {len(scores)} scores and {len(boxes)} boxes must match")
        object.__setattr__(self, "image_ids", ids)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "boxes", boxes)

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls((), np.zeros(0), np.zeros((0, 4)))


@dataclass(frozen=True)
class DetectionAP:
    """Result for one class: ``ap``; ``npos`` non-difficult objects; per detection in ranked order (highest
    confidence first, detections of difficult objects removed) the ``tp`` flags, ``recall`` and ``precision``."""

    ap: float
    npos: int
    tp: np.ndarray
    recall: np.ndarray
    precision: np.ndarray


@dataclass(frozen=True)
class VOCDetectionResult:
    """Per-class AP (class -> AP in [0, 1]) and their mean, the detection "% mAP" of the paper's Table 2."""

    ap: dict[str, float]
    map: float
    npos: dict[str, int] = field(default_factory=dict)


def voc_box_iou(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Overlap of one box with K boxes, VOC style: pixel-inclusive coordinates (widths are ``x2 - x1 + 1``).

    ``iw = min(x2) - max(x1) + 1``, ``ih = min(y2) - max(y1) + 1``; where both are > 0,
    ``ov = iw*ih / ((w1*h1) + (w2*h2) - iw*ih)``; boxes that do not intersect get ``-inf`` (the devkit never
    assigns them an overlap, and its running maximum starts at ``-inf``).
    """
    bb = np.asarray(box, dtype=np.float64).reshape(4)
    g = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(bb[2], g[:, 2]) - np.maximum(bb[0], g[:, 0]) + 1
    ih = np.minimum(bb[3], g[:, 3]) - np.maximum(bb[1], g[:, 1]) + 1
    inter = iw * ih
    ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - inter
    ov = np.full(len(g), -np.inf)
    hit = (iw > 0) & (ih > 0)
    ov[hit] = inter[hit] / ua[hit]
    return ov


def match_detections(dets: ClassDetections, gts: Mapping[str, GroundTruth], *, iou_threshold: float = 0.5,
                     inclusive: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label each detection true positive, false positive or ignored, following ``VOCevaldet.m``.

    Detections are visited by decreasing confidence (stable sort: ties keep file order, like MATLAB's
    ``sort``). Each is compared with every ground-truth object of its class in its image, and only with the one
    of largest overlap (the first such, on ties) — ``jmax`` in the devkit:

    * overlap below the threshold (or no intersecting object): false positive;
    * that object is difficult: ignored (neither true nor false positive; the object stays unclaimed);
    * that object was already claimed by a higher-scored detection: false positive (multiple detection) —
      even if another, unclaimed object also overlaps enough;
    * otherwise: true positive, and the object is claimed.

    The threshold test: the VOC devkit (``VOCevaldet.m``, all years) matches when ``ovmax >= VOCopts.minoverlap``
    with ``minoverlap = 0.5`` set in ``VOCinit.m``; the Python port of py-faster-rcnn (``voc_eval.py``, also
    used by Detectron and mmdetection's VOC evaluator) matches when ``ovmax > ovthresh``. They differ only for an
    overlap of exactly 0.5, which pixel-inclusive integer boxes do produce (a 10 x 5 box inside a 10 x 10 box).
    xchannel follows the devkit (``VOCevaldet.m``): ``inclusive=True``, the default, matches at ``>=``;
    ``inclusive=False`` reproduces the Python port's ``>``.

    Returns:
        ``(order, tp, fp)``: the ranked detection indices and boolean flags in that order; an item with
        neither flag set was ignored.

    Raises:
        ValueError: a detection names an image that is not in ``gts`` (the devkit stops with
            "unrecognized image").
    """
    order = np.argsort(-dets.scores, kind="stable")
    tp = np.zeros(len(order), dtype=bool)
    fp = np.zeros(len(order), dtype=bool)
    claimed = {img: np.zeros(len(g.difficult), dtype=bool) for img, g in gts.items()}
    for rank, d in enumerate(order):
        img = dets.image_ids[d]
        gt = gts.get(img)
        if gt is None:
            raise ValueError(f"detection for unrecognized image {img!r} (not in the evaluated image set)")
        ov = voc_box_iou(dets.boxes[d], gt.boxes)
        if ov.size == 0 or not np.isfinite(ov.max()):
            fp[rank] = True
            continue
        jmax = int(np.argmax(ov))  # first index of the largest overlap, as the devkit's "if ov>ovmax"
        ovmax = ov[jmax]
        if (ovmax >= iou_threshold) if inclusive else (ovmax > iou_threshold):
            if gt.difficult[jmax]:
                continue  # detection of a difficult object: ignored
            if claimed[img][jmax]:
                fp[rank] = True  # multiple detection of one object
            else:
                tp[rank] = True
                claimed[img][jmax] = True
        else:
            fp[rank] = True
    return order, tp, fp


def voc_det_ap(dets: ClassDetections, gts: Mapping[str, GroundTruth], *, iou_threshold: float = 0.5,
               inclusive: bool = True, metric: APMetric = "voc07") -> DetectionAP:
    """AP of one class's detections (``VOCevaldet.m``): match (:func:`match_detections`), then
    ``rec = cumsum(tp) / npos``, ``prec = cumsum(tp) / (cumsum(tp) + cumsum(fp))`` with ``npos`` the number of
    non-difficult objects over the image set, scored with the 11-point AP (``"voc07"``) or the VOC2010+ area
    (``"voc12"``). ``gts`` must hold every image of the evaluated set (images without objects of the class
    map to an empty :class:`GroundTruth`). With no non-difficult object the devkit's AP is 0 and so is ours.
    """
    _, tp, fp = match_detections(dets, gts, iou_threshold=iou_threshold, inclusive=inclusive)
    npos = int(sum(int((~g.difficult).sum()) for g in gts.values()))
    keep = tp | fp
    tp, fp = tp[keep], fp[keep]
    ap = _ap_from_ranked(tp, fp, npos, metric)
    ctp = np.cumsum(tp, dtype=np.float64)
    rec = ctp / npos if npos else np.zeros_like(ctp)
    prec = ctp / np.maximum(np.arange(1, len(tp) + 1, dtype=np.float64), 1)
    return DetectionAP(ap=ap, npos=npos, tp=tp, recall=rec, precision=prec)


def ground_truth_by_class(annotations: Mapping[str, Mapping[str, Any]],
                          classes: Sequence[str] = VOC_CLASSES) -> dict[str, dict[str, GroundTruth]]:
    """Regroup per-image annotations into ``class -> image id -> GroundTruth``.

    ``annotations`` maps an image id to a parsed VOC annotation: a mapping with ``objects``, each object a
    mapping with ``name``, ``bbox`` ``(xmin, ymin, xmax, ymax)`` and ``difficult`` (the format of
    ``xchannel.data.voc.read_annotation``). Every image appears under every class, possibly with no boxes.
    """
    out: dict[str, dict[str, GroundTruth]] = {c: {} for c in classes}
    for img, ann in annotations.items():
        per_class: dict[str, tuple[list, list]] = {c: ([], []) for c in classes}
        for obj in ann.get("objects", ()):
            if obj["name"] in per_class:
                per_class[obj["name"]][0].append(tuple(obj["bbox"]))
                per_class[obj["name"]][1].append(bool(obj.get("difficult", False)))
        for c, (boxes, diff) in per_class.items():
            out[c][img] = GroundTruth(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(diff, bool))
    return out


def voc_det_eval(annotations: Mapping[str, Mapping[str, Any]], detections: Mapping[str, ClassDetections],
                 classes: Sequence[str] = VOC_CLASSES, *, iou_threshold: float = 0.5, inclusive: bool = True,
                 metric: APMetric = "voc07") -> VOCDetectionResult:
    """Per-class AP and mAP of a detector over an image set (the VOC2007 detection benchmark by default).

    ``annotations``: image id -> parsed annotation (see :func:`ground_truth_by_class`) for every image of the
    set; ``detections``: class -> :class:`ClassDetections` (a class without entry scores AP 0). mAP is the
    plain mean over ``classes``.
    """
    gt = ground_truth_by_class(annotations, classes)
    aps: dict[str, float] = {}
    npos: dict[str, int] = {}
    for c in classes:
        res = voc_det_ap(detections.get(c, ClassDetections.empty()), gt[c], iou_threshold=iou_threshold,
                         inclusive=inclusive, metric=metric)
        aps[c] = res.ap
        npos[c] = res.npos
    return VOCDetectionResult(ap=aps, map=mean_ap(aps), npos=npos)
