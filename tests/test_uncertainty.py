"""Intervals over test images (percentile bootstrap) and chance levels: each bootstrap statistic is the benchmark's
own scorer on the resampled set, checked against that scorer on explicitly duplicated images."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from xchannel.metrics.segmentation import ConfusionMatrix, confusion_matrix
from xchannel.metrics.uncertainty import (BootstrapConfig, accuracy_difference_interval, accuracy_interval,
                                          chance_map, classification_map_interval, detection_map_interval,
                                          expected_random_ap, resample_counts, segmentation_miu_interval,
                                          separation)
from xchannel.metrics.voc import voc_cls_ap, voc_det_eval


def _voc_cls_map(scores, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # classes without positives: AP 0
        return 100.0 * voc_cls_ap(scores, labels).mean()


def test_classification_replicates_are_the_scorer_on_duplicated_images():
    """Replicate b's mAP equals scikit-learn AP (voc_cls_ap) on the images repeated as often as drawn, with tied
    scores, difficult labels and a class that loses its positives in some replicates; the identity replicate is the
    full-set mAP."""
    rng = np.random.default_rng(3)
    n, classes = 30, 4
    labels = np.where(rng.random((n, classes)) < 0.3, 1, -1)
    labels[rng.random((n, classes)) < 0.1] = 0
    labels[:, 3] = -1
    labels[0, 3] = 1  # one positive: many replicates have none (AP 0, as the scorer reports it)
    scores = np.round(rng.normal(size=(n, classes)) + labels, 0)  # coarse: many ties, also across labels
    cfg = BootstrapConfig(resamples=25, seed=7)
    interval, per_class = classification_map_interval(scores, labels, cfg)
    assert interval.value == pytest.approx(_voc_cls_map(scores, labels), abs=1e-10)
    counts = resample_counts(n, cfg)
    reps = []
    for row in counts:
        idx = np.repeat(np.arange(n), row)
        reps.append(_voc_cls_map(scores[idx], labels[idx]))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert (interval.lo, interval.hi) == pytest.approx((lo, hi), abs=1e-10)
    assert len(per_class) == classes and per_class[3].lo == 0.0


def test_small_ap_case_by_hand():
    """scores 0.9, 0.8, 0.7, 0.6 with labels +, -, +, -: AP = (1 + 2/3) / 2; the first image drawn twice gives
    positives at ranks 1-2 (one tied score) and 4: AP = 2/3 * 1 + 1/3 * 3/4."""
    from xchannel.metrics.uncertainty import _weighted_sklearn_ap

    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([True, False, True, False])
    got = _weighted_sklearn_ap(s - 1e-5 * y, y, np.array([[1, 1, 1, 1], [2, 1, 1, 1]]))
    assert got == pytest.approx([5 / 6, 2 / 3 + 1 / 4])


def _detection_case(rng, n_images=12):
    classes = ("cat", "dog")
    annotations, dets = {}, {c: ([], [], []) for c in classes}
    for i in range(n_images):
        objects = []
        for _ in range(rng.integers(0, 3)):
            x, y = rng.integers(1, 60, size=2)
            objects.append({"name": str(rng.choice(classes)), "bbox": (x, y, x + 30, y + 30),
                            "difficult": bool(rng.random() < 0.2)})
        annotations[f"im{i}"] = {"objects": objects}
        for obj in objects:  # near hits, duplicates (false positives once claimed) and misses
            for _ in range(rng.integers(0, 3)):
                jitter = rng.integers(-8, 9, size=4)
                dets[obj["name"]][0].append(f"im{i}")
                dets[obj["name"]][1].append(float(rng.random()))
                dets[obj["name"]][2].append(np.asarray(obj["bbox"]) + jitter)
        for _ in range(rng.integers(0, 2)):
            c = str(rng.choice(classes))
            dets[c][0].append(f"im{i}")
            dets[c][1].append(float(rng.random()))
            dets[c][2].append(np.array([100, 100, 120, 130]))
    from xchannel.metrics.voc import ClassDetections

    return annotations, {c: ClassDetections(ids, np.array(sc), np.array(bx).reshape(-1, 4))
                         for c, (ids, sc, bx) in dets.items()}, classes


def test_detection_replicates_are_the_devkit_scorer_on_duplicated_images():
    """Matching once per image and reweighting gives, for every replicate, the devkit mAP (voc_det_eval) of the
    data set whose images are repeated as often as drawn (copies renamed, their detections adjacent); the identity
    replicate is the full-set mAP, and a wrong expected value is refused."""
    from xchannel.metrics.voc import ClassDetections

    annotations, dets, classes = _detection_case(np.random.default_rng(5))
    full = 100.0 * voc_det_eval(annotations, dets, classes).map
    cfg = BootstrapConfig(resamples=20, seed=1)
    interval = detection_map_interval(annotations, dets, classes, config=cfg, expected=full)
    assert interval.value == pytest.approx(full, abs=1e-12)
    with pytest.raises(AssertionError, match="identity replicate"):
        detection_map_interval(annotations, dets, classes, config=cfg, expected=full + 0.5)

    ids = list(annotations)
    reps = []
    for row in resample_counts(len(ids), cfg):
        ann = {f"{img}#{k}": annotations[img] for img, w in zip(ids, row) for k in range(w)}
        copies = {}
        for c, d in dets.items():
            order = np.argsort(-d.scores, kind="stable")
            rows = [(f"{d.image_ids[j]}#{k}", d.scores[j], d.boxes[j]) for j in order
                    for k in range(row[ids.index(d.image_ids[j])])]
            copies[c] = ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows]),
                                        np.array([r[2] for r in rows]).reshape(-1, 4))
        reps.append(100.0 * voc_det_eval(ann, copies, classes).map)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert (interval.lo, interval.hi) == pytest.approx((lo, hi), abs=1e-10)


def test_segmentation_interval_sums_per_image_confusions():
    """The identity replicate is the streaming confusion matrix's mIU (what the task reports); each replicate is
    the mIU of the summed matrices of its images."""
    gen = torch.Generator().manual_seed(0)
    per_image, cm = [], ConfusionMatrix(5, 255)
    for _ in range(12):
        target = torch.randint(0, 5, (20, 20), generator=gen)
        target[torch.rand(20, 20, generator=gen) < 0.1] = 255
        pred = torch.where(torch.rand(20, 20, generator=gen) < 0.6, target.clamp(max=4),
                           torch.randint(0, 5, (20, 20), generator=gen))
        cm.update(pred, target)
        per_image.append(confusion_matrix(pred, target, 5, 255).numpy())
    cfg = BootstrapConfig(resamples=50, seed=2)
    interval = segmentation_miu_interval(np.stack(per_image), cfg)
    assert interval.value == pytest.approx(100.0 * cm.scores().mean_iu, abs=1e-12)
    from xchannel.metrics.segmentation import mean_iu

    reps = [100.0 * mean_iu(np.tensordot(row, np.stack(per_image), axes=1)) for row in resample_counts(12, cfg)]
    assert (interval.lo, interval.hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])), abs=1e-10)


def test_auc_interval_replicates_are_the_meter_on_duplicated_images():
    """Table 1's AuC interval: the value is the streaming meter's AuC (raw and rebalanced); each replicate is the
    AuC of a meter fed the drawn images as many times as they were drawn; identical images give no width."""
    from xchannel.metrics.colorization import AbAucMeter

    gen = torch.Generator().manual_seed(0)
    true = torch.randn(9, 2, 12, 12, generator=gen) * 40
    pred = true + torch.randn(9, 2, 12, 12, generator=gen) * torch.linspace(5, 60, 9).view(9, 1, 1, 1)
    meter = AbAucMeter(keep_images=True)
    meter.update(pred[:4], true[:4])
    meter.update(pred[4:], true[4:])
    cfg = BootstrapConfig(resamples=40, seed=3)
    for rebalanced in (False, True):
        interval = meter.interval(rebalanced, cfg)
        assert interval.value == pytest.approx(100.0 * meter.auc(rebalanced), abs=1e-9)
        reps = []
        for counts in resample_counts(9, cfg):
            idx = np.repeat(np.arange(9), counts)
            again = AbAucMeter()
            again.update(pred[idx], true[idx])
            reps.append(100.0 * again.auc(rebalanced))
        assert (interval.lo, interval.hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])), abs=1e-9)
        assert interval.lo < interval.value < interval.hi  # errors from 5 to 60 ab units: the images disagree
    same = AbAucMeter(keep_images=True)
    same.update(pred[:1].repeat(5, 1, 1, 1), true[:1].repeat(5, 1, 1, 1))
    assert same.interval(False, cfg).half_width == pytest.approx(0.0, abs=1e-9)


def test_accuracy_interval_matches_the_normal_approximation_and_combines_seeds():
    """For n = 2000 images at p = 0.35 the percentile half-width is 1.96 sqrt(p (1 - p) / n) within a few percent;
    with 3 seeds whose accuracies differ by far more than the image noise, the interval widens to cover them."""
    rng = np.random.default_rng(11)
    hits = rng.random(2000) < 0.35
    iv = accuracy_interval(hits, BootstrapConfig(resamples=4000))
    p = hits.mean()
    assert iv.value == pytest.approx(100 * p)
    assert iv.half_width == pytest.approx(196 * np.sqrt(p * (1 - p) / 2000), rel=0.04)

    base = rng.random(400)
    seeds = np.stack([base < q for q in (0.2, 0.3, 0.4)])  # 20 %, 30 %, 40 %: seed spread >> image noise (~2.3)
    both = accuracy_interval(seeds)
    assert both.per_seed == pytest.approx(tuple(100 * seeds.mean(1)))
    assert both.value == pytest.approx(100 * seeds.mean())
    images_only = max(accuracy_interval(s).half_width for s in seeds)
    assert both.half_width > 1.5 * images_only


def test_paired_difference_separates_only_real_gaps():
    rng = np.random.default_rng(4)
    a = rng.random(300) < 0.5
    same = accuracy_difference_interval(a, a)
    assert (same.lo, same.hi, separation(same)) == (0.0, 0.0, "not separable")
    better = a | (rng.random(300) < 0.3)  # +15 points on the same images
    gap = accuracy_difference_interval(better, a)
    assert separation(gap) == "ahead" and separation(accuracy_difference_interval(a, better)) == "behind"
    noisy = rng.random(300) < 0.5  # independent, same rate: not separable
    assert separation(accuracy_difference_interval(noisy, a)) == "not separable"


def test_chance_map_matches_the_closed_form():
    """expected_random_ap by enumerating every ranking of N = 5 items with P = 2 positives; chance_map's mean
    matches the closed form within its Monte Carlo error."""
    aps = []
    for pos in itertools.combinations(range(5), 2):
        ranks = np.array(pos) + 1
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(ranks)]))
    assert expected_random_ap(2, 5) == pytest.approx(np.mean(aps))

    rng = np.random.default_rng(0)
    labels = np.where(rng.random((100, 20)) < 0.08, 1, -1)
    labels[rng.random((100, 20)) < 0.05] = 0
    chance = chance_map(labels, draws=4000, seed=9)
    spread = (chance["range95"][1] - chance["range95"][0]) / 3.92  # ~ one standard deviation of a draw
    assert abs(chance["mean"] - chance["expected"]) < 4 * spread / np.sqrt(4000)
    assert chance["range95"][0] < chance["expected"] < chance["range95"][1]
