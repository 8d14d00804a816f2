"""Semantic segmentation scores of the PASCAL VOC 2012 benchmark (the paper's Table 2, "% mIU").

The paper evaluates segmentation with the FCN of Long et al. (ref. [42]) following Pathak et al.'s protocol
(ref. [10]); both score with FCN's ``score.py``, reproduced here:

* a ``C x C`` confusion matrix ``hist`` (rows: ground-truth class, columns: predicted class) summed over all
  evaluated pixels; pixels whose label is ``255`` (VOC's object boundaries and "void") are not counted;
* pixel accuracy ``sum(diag) / sum(hist)``;
* mean class accuracy ``nanmean(diag / row_sum)``;
* per-class intersection over union ``iu = diag / (row_sum + col_sum - diag)`` and the mean IU
  ``nanmean(iu)`` over the 21 classes (background + 20 objects); a class that appears neither in the labels
  nor in the predictions has ``0/0 = NaN`` and is left out of the mean;
* frequency-weighted IU ``sum(freq * iu)`` over the classes present, ``freq = row_sum / sum(hist)``.

The matrix is accumulated image by image (:class:`ConfusionMatrix`) with ``torch.bincount`` on the flat index
``C * label + prediction``, so a whole validation set never has to sit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "VOC_SEG_NUM_CLASSES",
    "VOC_IGNORE_INDEX",
    "ConfusionMatrix",
    "SegmentationScores",
    "confusion_matrix",
    "segmentation_scores",
    "pixel_accuracy",
    "mean_class_accuracy",
    "per_class_iu",
    "mean_iu",
]

#: Background plus the 20 object classes.
VOC_SEG_NUM_CLASSES = 21
#: The label of unlabeled pixels (object borders, "void") in ``SegmentationClass/*.png``.
VOC_IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = VOC_SEG_NUM_CLASSES,
                     ignore_index: int | None = VOC_IGNORE_INDEX) -> torch.Tensor:
    """``num_classes x num_classes`` int64 counts: entry ``[i, j]`` = pixels of true class ``i`` predicted ``j``.

    ``pred`` and ``target`` are integer tensors of the same shape (any, e.g. N x H x W). Pixels whose target
    equals ``ignore_index`` are skipped. Any other target, or any prediction at a counted pixel, outside
    ``[0, num_classes)`` is an error (FCN's ``fast_hist`` would drop such pixels silently; here they signal a
    wrong class count or a corrupted label file).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must be integer class-index tensors (take argmax of the logits first)")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    for name, v in (("target", t), ("prediction", p)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            bad = v[(v < 0) | (v >= num_classes)].unique()[:5].tolist()
            raise ValueError(f"{name} holds class indices outside [0, {num_classes}): {bad}"
                             + (f" (and is not the ignore label {ignore_index})" if name == "target" else ""))
    counts = torch.bincount(num_classes * t + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def _hist(hist: torch.Tensor | np.ndarray) -> np.ndarray:
    h = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {h.shape}")
    return h.astype(np.float64)


def pixel_accuracy(hist: torch.Tensor | np.ndarray) -> float:
    """Correctly labelled pixels over counted pixels: ``sum(diag) / sum(hist)``."""
    h = _hist(hist)
    total = h.sum()
    return float(np.diag(h).sum() / total) if total else float("nan")


def mean_class_accuracy(hist: torch.Tensor | np.ndarray) -> float:
    """``nanmean_i(hist[i, i] / sum_j hist[i, j])``: per-class recall averaged over classes present in labels."""
    h = _hist(hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.diag(h) / h.sum(1)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def per_class_iu(hist: torch.Tensor | np.ndarray) -> np.ndarray:
    """``iu_i = hist[i, i] / (row_i + col_i - hist[i, i])``; NaN for a class absent from labels and predictions."""
    h = _hist(hist)
    d = np.diag(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        return d / (h.sum(1) + h.sum(0) - d)


def mean_iu(hist: torch.Tensor | np.ndarray) -> float:
    """Mean IU, FCN's ``np.nanmean(iu)``: the "% mIU" of the paper's Table 2 (times 100)."""
    iu = per_class_iu(hist)
    return float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan")


@dataclass(frozen=True)
class SegmentationScores:
    """All of FCN's ``score.py`` numbers, as fractions in [0, 1]."""

    pixel_accuracy: float
    mean_class_accuracy: float
    mean_iu: float
    frequency_weighted_iu: float
    iu: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"pixel_accuracy": self.pixel_accuracy, "mean_class_accuracy": self.mean_class_accuracy,
                "mean_iu": self.mean_iu, "frequency_weighted_iu": self.frequency_weighted_iu,
                "iu": list(self.iu)}


def segmentation_scores(hist: torch.Tensor | np.ndarray) -> SegmentationScores:
    """Pixel accuracy, mean class accuracy, mean IU, frequency-weighted IU and per-class IU of ``hist``."""
    h = _hist(hist)
    iu = per_class_iu(h)
    total = h.sum()
    freq = h.sum(1) / total if total else np.zeros(len(h))
    present = freq > 0
    fw = float((freq[present] * iu[present]).sum()) if total else float("nan")
    return SegmentationScores(pixel_accuracy=pixel_accuracy(h), mean_class_accuracy=mean_class_accuracy(h),
                              mean_iu=mean_iu(h), frequency_weighted_iu=fw, iu=tuple(float(x) for x in iu))


class ConfusionMatrix:
    """Streaming confusion matrix: ``update(pred, target)`` per batch, then ``scores()`` once.

    >>> cm = ConfusionMatrix()
    >>> for logits, labels in loader:          # doctest: +SKIP
    ...     cm.update(logits.argmax(1), labels)
    >>> cm.scores().mean_iu                     # doctest: +SKIP
    """

    def __init__(self, num_classes: int = VOC_SEG_NUM_CLASSES, ignore_index: int | None = VOC_IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add the pixels of one batch (``pred``: class indices, same shape as ``target``)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.matrix.zero_()

    def scores(self) -> SegmentationScores:
        return segmentation_scores(self.matrix)
