"""Property-based tests (hypothesis) of the colour machinery and the metrics.

Colour (Sec. 2.1-2.3): Lab round trips, the exact nearest-bin search, soft encodings that are distributions on the
k nearest of the 313 bins, Eq. 4's normalisation, the annealed mean's invariances, and every function unchanged by
how a batch is split (and by the device where one is present).

Metrics: AP (the classification protocol's scikit-learn AP, the VOC07 11-point AP, the VOC2010+ area AP; detection
AP), Table 1's AuC and the segmentation scores stay in [0, 1], reach 1 on perfect predictions, and do not depend on
the order of the items scored (for the devkit's APs, when no two scores tie: the devkit keeps file order on ties,
which can only move its AP between the pessimistic and the optimistic order).

Examples are derandomized (the same on every run) and small, so the module runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xchannel import color as C
from xchannel.metrics import (AbAucMeter, ClassDetections, GroundTruth, ab_auc, confusion_matrix, mean_iu,
                              segmentation_scores, voc_cls_ap, voc_det_ap)

PROPERTY = settings(max_examples=30, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ACCELERATORS = [d for d in ("cuda", "mps") if (d == "cuda" and torch.cuda.is_available())
                or (d == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())]



@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Tensors here are tiny: one intra-op thread is as fast, and on a busy machine far faster than two threads
    waiting for each other."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------------------
# Strategies


def images(channels: int, lo: float, hi: float, max_n: int = 3, max_side: int = 4):
    """N x channels x H x W float64 arrays with elements in [lo, hi] (tiny: N <= 3, H, W <= 4)."""
    shapes = st.tuples(st.integers(1, max_n), st.just(channels), st.integers(1, max_side), st.integers(1, max_side))
    return hnp.arrays(np.float64, shapes, elements=st.floats(lo, hi, allow_nan=False, width=64)).map(torch.from_numpy)


rgb_images = images(3, 0.0, 1.0)
#: ab inside the plane every sRGB colour maps into (|a|, |b| < 110)
ab_images = images(2, -110.0, 110.0)


@st.composite
def seeded_ab(draw, max_n: int = 4, max_side: int = 6):
    """A random ab batch (any Lab colour) drawn from a seed: larger than element-wise strategies allow."""
    n, h, w = draw(st.integers(1, max_n)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return (torch.rand(n, 2, h, w, generator=g, dtype=torch.float64) * 2 - 1) * draw(st.floats(1.0, 110.0))


@st.composite
def seeded_logits(draw):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return torch.randn(n, C.Q, h, w, generator=g, dtype=torch.float64) * draw(st.floats(0.1, 20.0))


split_points = st.floats(0.0, 1.0)


def split(x: torch.Tensor, where: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = int(round(where * x.shape[0]))
    return x[:k], x[k:]


# --------------------------------------------------------------------------------------------------------------
# Colour


@PROPERTY
@given(rgb_images)
def test_lab_round_trip_and_ranges(rgb):
    lab = C.rgb_to_lab(rgb)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    assert L.min() >= -1e-9 and L.max() <= 100 + 1e-6
    assert a.abs().max() < 100 and b.abs().max() < 110  # sRGB's gamut: a in [-86, 98], b in [-108, 95]
    torch.testing.assert_close(C.lab_to_rgb(lab), rgb, atol=1e-6, rtol=0)
    # float32 gives the same colours to well under a Lab unit
    torch.testing.assert_close(C.rgb_to_lab(rgb.float()).double(), lab, atol=2e-3, rtol=0)
    # neutral colours (R = G = B) have no chroma: far below the gray mask's threshold of 5
    gray = rgb[:, :1].expand(-1, 3, -1, -1)
    assert C.rgb_to_lab(gray)[:, 1:].abs().max() < 0.01 and not C.has_color(C.rgb_to_lab(gray)[:, 1:]).any()


@PROPERTY
@given(rgb_images, seeded_logits(), split_points)
def test_colour_functions_do_not_depend_on_how_a_batch_is_split(rgb, logits, where):
    first, rest = split(rgb, where)
    torch.testing.assert_close(torch.cat([C.rgb_to_lab(first), C.rgb_to_lab(rest)]), C.rgb_to_lab(rgb),
                               atol=1e-12, rtol=0)
    ab = C.rgb_to_lab(rgb)[:, 1:]
    a1, a2 = split(ab, where)
    assert torch.equal(torch.cat([C.soft_encode(a1), C.soft_encode(a2)]), C.soft_encode(ab))
    assert torch.equal(torch.cat([C.has_color(a1), C.has_color(a2)]), C.has_color(ab))
    l1, l2 = split(logits, where)
    torch.testing.assert_close(torch.cat([C.annealed_mean(l1), C.annealed_mean(l2)]), C.annealed_mean(logits),
                               atol=1e-12, rtol=0)


@pytest.mark.skipif(not ACCELERATORS, reason="no accelerator on this machine: the CPU results are the reference")
@pytest.mark.parametrize("device", ACCELERATORS)
@settings(max_examples=10, derandomize=True, deadline=None)
@given(rgb=rgb_images, logits=seeded_logits())
def test_colour_functions_give_the_cpu_results_on_an_accelerator(device, rgb, logits):
    lab = C.rgb_to_lab(rgb.float())
    torch.testing.assert_close(C.rgb_to_lab(rgb.float().to(device)).cpu(), lab, atol=1e-3, rtol=0)
    idx, _ = C.nearest_bins(lab[:, 1:], 5)
    idx_dev, _ = C.nearest_bins(lab[:, 1:].to(device), 5)
    assert (idx_dev.cpu()[:, 0] == idx[:, 0]).float().mean() > 0.99  # float ties aside, the same nearest bin
    torch.testing.assert_close(C.annealed_mean(logits.float().to(device)).cpu(), C.annealed_mean(logits.float()),
                               atol=1e-3, rtol=0)


@PROPERTY
@given(seeded_ab(), st.sampled_from([1, 5, 10]))
def test_nearest_bins_is_the_exact_nearest_neighbour_search(ab, k):
    """The look-up table only prunes bins that cannot be among the k nearest: the result is brute force's."""
    idx, d2 = C.nearest_bins(ab, k)
    bins = C.ab_bins(dtype=torch.float64)
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    brute = torch.cdist(pts, bins).pow(2).sort(dim=1).values[:, :k]
    ours = d2.permute(0, 2, 3, 1).reshape(-1, k)
    torch.testing.assert_close(ours, brute, atol=1e-9, rtol=1e-12)
    got = bins[idx.permute(0, 2, 3, 1).reshape(-1, k)]  # the indices point at bins that far away, nearest first
    torch.testing.assert_close((got - pts[:, None]).pow(2).sum(-1), ours, atol=1e-9, rtol=1e-12)
    assert (idx.unsqueeze(1) != idx.unsqueeze(2)).sum() == idx.numel() * (k - 1)  # k distinct bins


@PROPERTY
@given(seeded_ab(), st.sampled_from(["paper", "released"]))
def test_soft_encoding_is_a_distribution_on_the_k_nearest_bins(ab, preset):
    """Footnote 2: each pixel's target puts Gaussian (sigma = 5) weights on its k nearest bins (k = 5; the released
    code uses 10), normalised; the largest weight is on the nearest bin."""
    k = C.SOFT_ENCODING_PRESETS[preset].neighbours
    z = C.soft_encode(ab, preset=preset)
    assert z.shape == (ab.shape[0], C.Q, *ab.shape[2:]) and z.min() >= 0
    torch.testing.assert_close(z.sum(1), torch.ones_like(z[:, 0]), atol=1e-12, rtol=0)
    assert ((z > 0).sum(1) == k).all()
    idx, wts = C.soft_encode_sparse(ab, k, 5.0)
    assert (wts[:, :-1] >= wts[:, 1:] - 1e-15).all()  # nearer bins weigh more
    nearest, d2 = C.nearest_bins(ab, k)
    torch.testing.assert_close(wts, torch.softmax(-d2 / 50.0, dim=1), atol=1e-12, rtol=0)  # exp(-d^2 / 2 sigma^2)
    top = z.argmax(1, keepdim=True)
    torch.testing.assert_close(d2.gather(1, (nearest == top).float().argmax(1, keepdim=True)), d2[:, :1])


@PROPERTY
@given(hnp.arrays(np.float64, C.Q, elements=st.floats(1e-8, 1.0)), st.floats(0.0, 1.0), st.sampled_from([0.0, 5.0]))
def test_rebalancing_weights_follow_eq4(p, lam, sigma):
    prior = torch.from_numpy(p / p.sum())
    w = C.rebalance_weights(prior, lam=lam, sigma=sigma)
    smoothed = C.smooth_prior(prior, sigma)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert float((smoothed * w).sum()) == pytest.approx(1.0, abs=1e-9)  # E_p~[w] = 1
    order = torch.argsort(smoothed)
    assert (w[order][1:] <= w[order][:-1] * (1 + 1e-12)).all()  # rarer colours never weigh less
    if lam == 1.0:
        torch.testing.assert_close(w, torch.ones_like(w))  # lambda = 1: no rebalancing


@PROPERTY
@given(seeded_logits(), st.floats(0.05, 2.0), st.floats(-50.0, 50.0))
def test_annealed_mean_invariances(logits, T, shift):
    """Eq. 5: f_T(z) = softmax(log z / T) does not change when every logit of a pixel moves by the same amount; the
    result is a convex combination of bin centres; T = 1 is the mean, T = 0 the mode."""
    out = C.annealed_mean(logits, T)
    torch.testing.assert_close(C.annealed_mean(logits + shift, T), out, atol=1e-9, rtol=0)
    bins = C.ab_bins(dtype=torch.float64)
    for c in range(2):
        assert out[:, c].min() >= bins[:, c].min() - 1e-9 and out[:, c].max() <= bins[:, c].max() + 1e-9
    torch.testing.assert_close(C.annealed_mean(logits, 1.0), C.decode_mean(logits))
    torch.testing.assert_close(C.annealed_mean(logits, 0.0), C.decode_mode(logits))


@PROPERTY
@given(seeded_ab(max_n=5), split_points)
def test_empirical_prior_does_not_depend_on_batching(ab, where):
    assume(C.has_color(ab).any())
    whole = C.empirical_prior([ab])
    assert whole.shape == (C.Q,) and float(whole.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(C.empirical_prior([t for t in split(ab, where) if len(t)]), whole)


# --------------------------------------------------------------------------------------------------------------
# Classification AP

GRID = [round(0.001 * i, 3) for i in range(0, 1001, 125)]  # scores on a coarse grid: ties are frequent


@st.composite
def scored_labels(draw, distinct: bool):
    n = draw(st.integers(2, 30))
    labels = np.array(draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n)))
    assume((labels == 1).any())
    if distinct:
        scores = np.array(draw(st.lists(st.floats(-100, 100, allow_nan=False), min_size=n, max_size=n,
                                        unique=True)))
    else:
        scores = np.array(draw(st.lists(st.sampled_from(GRID), min_size=n, max_size=n)))
    perm = np.array(draw(st.permutations(range(n))))
    return scores, labels, perm


METRICS = ("sklearn", "voc07", "voc12")


@PROPERTY
@given(scored_labels(distinct=False))
def test_classification_ap_bounds_perfect_ranking_and_permutations_with_ties(case):
    scores, labels, perm = case
    for metric in METRICS:
        ap = float(voc_cls_ap(scores, labels, metric)[0])
        assert 0.0 <= ap <= 1.0 + 1e-12, metric
        perfect = float(voc_cls_ap(labels.astype(float), labels, metric)[0])
        assert perfect == pytest.approx(1.0, abs=1e-12), metric
    # scikit-learn's AP groups tied scores: any order of the same (score, label) pairs gives the same AP, and so
    # does any increasing affine map that keeps ties tied and gaps above the protocol's 1e-5 tie-break
    ap = voc_cls_ap(scores, labels)
    assert voc_cls_ap(scores[perm], labels[perm]) == pytest.approx(ap, abs=1e-12)
    assert voc_cls_ap(3.0 * scores - 7.0, labels) == pytest.approx(ap, abs=1e-12)
    # the devkit's stable sort keeps file order among ties: its AP lies between the tie orders that put every
    # negative first (pessimistic) and every positive first (optimistic)
    y = (labels == 1).astype(float)
    for metric in ("voc07", "voc12"):
        ap = float(voc_cls_ap(scores, labels, metric)[0])
        low = float(voc_cls_ap(scores - 1e-9 * y, labels, metric)[0])
        high = float(voc_cls_ap(scores + 1e-9 * y, labels, metric)[0])
        assert low - 1e-12 <= ap <= high + 1e-12, metric


@PROPERTY
@given(scored_labels(distinct=True))
def test_classification_ap_depends_only_on_the_ranking(case):
    scores, labels, perm = case
    for metric in ("voc07", "voc12"):
        ap = voc_cls_ap(scores, labels, metric)
        assert voc_cls_ap(scores[perm], labels[perm], metric) == pytest.approx(ap, abs=1e-12), metric
        assert voc_cls_ap(np.arctan(scores / 50.0), labels, metric) == pytest.approx(ap, abs=1e-12), metric


# --------------------------------------------------------------------------------------------------------------
# Detection AP


@st.composite
def detections(draw):
    """Ground truth on 1-4 images and detections of it (some exact, some shifted, some spurious), distinct
    scores; plus a permutation of the detections."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    gts, ids, boxes = {}, [], []
    for i in range(draw(st.integers(1, 4))):
        k = int(rng.integers(0, 4))
        xy = rng.integers(1, 40, size=(k, 2))
        wh = rng.integers(4, 20, size=(k, 2))
        gt = np.concatenate([xy, xy + wh], axis=1).astype(float)
        gts[f"im{i}"] = GroundTruth(gt, rng.random(k) < 0.2)
        for box in gt:
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per object: duplicates are false positives
                ids.append(f"im{i}")
                boxes.append(box + rng.integers(-3, 4, size=4) * (rng.random() < 0.5))
        for _ in range(int(rng.integers(0, 3))):
            ids.append(f"im{i}")
            x, y = rng.integers(1, 50, size=2)
            boxes.append(np.array([x, y, x + rng.integers(1, 15), y + rng.integers(1, 15)], dtype=float))
    scores = rng.permutation(len(ids)) + rng.random(len(ids)) * 0.5  # distinct
    dets = ClassDetections(ids, scores, np.array(boxes).reshape(-1, 4))
    return gts, dets, rng.permutation(len(ids))


@PROPERTY
@given(detections())
def test_detection_ap_bounds_perfect_detections_and_order(case):
    gts, dets, perm = case
    npos = sum(int((~g.difficult).sum()) for g in gts.values())
    for metric in ("voc07", "voc12"):
        res = voc_det_ap(dets, gts, metric=metric)
        assert 0.0 <= res.ap <= 1.0 + 1e-12 and res.npos == npos
        shuffled = ClassDetections([dets.image_ids[i] for i in perm], dets.scores[perm], dets.boxes[perm])
        assert voc_det_ap(shuffled, gts, metric=metric).ap == pytest.approx(res.ap, abs=1e-12)
        reversed_gts = dict(reversed(list(gts.items())))
        assert voc_det_ap(dets, reversed_gts, metric=metric).ap == pytest.approx(res.ap, abs=1e-12)
        # detecting exactly every object, once, gives AP 1 (0 when there is nothing to find)
        ids = [i for i, g in gts.items() for _ in g.boxes]
        exact = ClassDetections(ids, np.arange(len(ids), dtype=float),
                                np.concatenate([g.boxes for g in gts.values()]).reshape(-1, 4))
        assert voc_det_ap(exact, gts, metric=metric).ap == pytest.approx(1.0 if npos else 0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# AuC of the ab error (Table 1) and segmentation scores


@PROPERTY
@given(seeded_ab(), st.floats(0.0, 60.0), st.integers(0, 2**31 - 1), split_points)
def test_auc_bounds_order_batching_and_monotonicity(true_ab, noise, seed, where):
    g = torch.Generator().manual_seed(seed)
    pred = true_ab + torch.randn(true_ab.shape, generator=g, dtype=torch.float64) * noise
    auc, rebal = ab_auc(pred, true_ab), ab_auc(pred, true_ab, rebalanced=True)
    assert 0.0 <= auc <= 1.0 and 0.0 <= rebal <= 1.0
    assert ab_auc(true_ab, true_ab) == 1.0 and ab_auc(true_ab, true_ab, rebalanced=True) == 1.0
    # pixels are counted, not ordered: any permutation of them (the same for prediction and truth) is equal
    perm = torch.randperm(true_ab[:, 0].numel(), generator=g)
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 2)[perm].T.reshape(1, 2, 1, -1)  # noqa: E731
    assert ab_auc(flat(pred), flat(true_ab)) == auc
    # streaming over any split of the batch gives the one-shot histogram exactly
    meter = AbAucMeter()
    for p, t in zip(split(pred, where), split(true_ab, where)):
        if len(p):
            meter.update(p, t)
    assert meter.auc() == auc and meter.auc(rebalanced=True) == rebal
    # larger errors never score higher
    worse = true_ab + 2.0 * (pred - true_ab)
    assert ab_auc(worse, true_ab) <= auc + 1e-12 and ab_auc(worse, true_ab, rebalanced=True) <= rebal + 1e-12


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.integers(2, 21), st.integers(1, 200))
def test_segmentation_scores_bounds_perfection_and_pixel_order(seed, classes, pixels):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (pixels,), generator=g)
    target[torch.rand(pixels, generator=g) < 0.1] = 255  # void
    pred = torch.where(torch.rand(pixels, generator=g) < 0.6, target, torch.randint(0, classes, (pixels,),
                                                                                    generator=g))
    pred[pred == 255] = 0
    assume((target != 255).any())
    hist = confusion_matrix(pred, target, classes)
    scores = segmentation_scores(hist)
    for value in (scores.pixel_accuracy, scores.mean_class_accuracy, scores.mean_iu, scores.frequency_weighted_iu):
        assert 0.0 <= value <= 1.0
    perm = torch.randperm(pixels, generator=g)
    assert torch.equal(confusion_matrix(pred[perm], target[perm], classes), hist)
    perfect = torch.where(target == 255, torch.zeros_like(target), target)
    assert mean_iu(confusion_matrix(perfect, target, classes)) == 1.0
