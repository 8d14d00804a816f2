"""The paper's colour machinery (Secs. 2.1-2.3): conversion, bins, targets, rebalancing, decoding, AuC."""

import math

import numpy as np
import pytest
import torch
from skimage import color as skcolor
from skimage import data as skdata

from xchannel import color as C
from xchannel.metrics.colorization import AbAucMeter, ab_auc


def _photos(size=96):
    """Real photographs shipped with scikit-image, as an N x 3 x H x W float64 batch."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    t = [torch.nn.functional.interpolate(torch.from_numpy(i).permute(2, 0, 1)[None].double() / 255, size=(size, size),
                                         mode="area") for i in imgs]
    return torch.cat(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lab_matches_skimage_and_round_trips(dtype):
    rgb = torch.cat([_photos(48), torch.rand(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(0))])
    lab = C.rgb_to_lab(rgb.to(dtype))
    ref = skcolor.rgb2lab(rgb.permute(0, 2, 3, 1).numpy())
    assert lab.dtype == dtype
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).double().numpy(), ref, atol=1e-3)
    back = C.lab_to_rgb(lab)
    ref_back = skcolor.lab2rgb(ref)
    np.testing.assert_allclose(back.permute(0, 2, 3, 1).double().numpy(), ref_back, atol=1e-3)
    assert (back.double() - rgb).abs().max() < 1e-3
    # pure colours have their textbook Lab values: white (100, 0, 0), sRGB red (53.24, 80.09, 67.20)
    prim = C.rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=dtype).T.reshape(1, 3, 2, 1))
    np.testing.assert_allclose(prim[0, :, :, 0].T.double().numpy(), [[100, 0, 0], [53.24, 80.09, 67.20]], atol=0.01)


def test_out_of_gamut_lab_clips_to_valid_rgb_like_skimage():
    g = torch.Generator().manual_seed(1)
    lab = torch.stack([torch.rand(4, 8, 8, generator=g) * 100, torch.randn(4, 8, 8, generator=g) * 90,
                       torch.randn(4, 8, 8, generator=g) * 90], dim=1).double()
    rgb = C.lab_to_rgb(lab)
    assert rgb.min() >= 0 and rgb.max() <= 1
    with pytest.warns(UserWarning):  # skimage warns about the negative Z it clips
        ref = skcolor.lab2rgb(lab.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(rgb.permute(0, 2, 3, 1).numpy(), ref, atol=1e-6)


def test_bins_lie_on_the_grid_and_cover_every_8bit_srgb_colour():
    bins = C.ab_bins()
    assert bins.shape == (313, 2) and C.Q == 313
    assert torch.equal(bins, bins.round()) and torch.all(bins.remainder(10) == 0)
    assert bins[120].tolist() == [0.0, 0.0]
    assert torch.all(bins[1:, 0] >= bins[:-1, 0])  # sorted by a
    # Every one of the 2^24 8-bit sRGB colours has its ab inside the 10 x 10 cell of some bin
    # (nearest bin within 5 * sqrt(2)): the bins cover the sRGB gamut.
    v = torch.arange(256, dtype=torch.float32) / 255
    worst = 0.0
    for r in range(0, 256, 32):
        grid = torch.cartesian_prod(v[r : r + 32], v, v).T.reshape(1, 3, -1, 1)
        _, d2 = C.nearest_bins(C.rgb_to_lab(grid)[:, 1:], 1)
        worst = max(worst, d2.max().sqrt().item())
    assert worst <= 5 * math.sqrt(2) + 1e-3


@pytest.mark.parametrize("preset,k", [("paper", 5), ("released", 10)])
def test_soft_encoding_is_gaussian_over_exactly_the_k_nearest_bins(preset, k):
    ab = C.rgb_to_lab(_photos(24).float())[:, 1:]
    ab = torch.cat([ab, torch.empty(1, 2, 24, 24).uniform_(-110, 110)])  # also colours far outside the gamut
    z = C.soft_encode(ab, preset=preset)
    assert z.shape == (4, 313, 24, 24)
    torch.testing.assert_close(z.sum(1), torch.ones(4, 24, 24))
    assert torch.all((z > 0).sum(1) == k)
    # the non-zeros sit exactly at the k nearest bins (brute force over all 313)
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2).double()
    d2 = torch.cdist(pts, C.ab_bins(dtype=torch.float64)).pow(2)
    nearest = d2.topk(k, largest=False).indices
    zf = z.permute(0, 2, 3, 1).reshape(-1, 313)
    assert torch.equal(zf.gather(1, nearest).gt(0), torch.ones_like(nearest, dtype=torch.bool))
    # weights proportional to exp(-d^2 / (2 sigma^2)), sigma = 5
    w = torch.exp(-(d2.gather(1, nearest) - d2.gather(1, nearest[:, :1])) / 50.0)
    torch.testing.assert_close(zf.gather(1, nearest).double(), w / w.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_soft_encoding_known_value():
    # ab exactly on bin (0, 0): its 4 grid neighbours are at d = 10 and tie, all in gamut, so with k = 5 the target
    # is 1 / (1 + 4 exp(-100 / 50)) on the bin and exp(-2) times that on each neighbour.
    z = C.soft_encode(torch.zeros(1, 2, 1, 1))[0, :, 0, 0]
    centre = 1 / (1 + 4 * math.exp(-2))
    assert z[120].item() == pytest.approx(centre, rel=1e-5)
    bins = C.ab_bins()
    neigh = ((bins - 0).norm(dim=1) == 10).nonzero().flatten()
    assert len(neigh) == 4
    torch.testing.assert_close(z[neigh], torch.full((4,), centre * math.exp(-2)))


def test_rebalancing_weights_eq4():
    prior = C.reference_prior()
    assert prior.sum().item() == pytest.approx(1.0) and prior.argmax().item() == 120
    assert prior.max().item() == pytest.approx(0.2012, abs=1e-4)
    for sigma in (0.0, 5.0):
        w = C.rebalance_weights(prior, lam=0.5, sigma=sigma)
        p = C.smooth_prior(prior, sigma)
        assert (p * w).sum().item() == pytest.approx(1.0, abs=1e-12)  # E[w] = 1 under the smoothed prior
        assert torch.all((p[:, None] - p[None, :]).sign() == -(w[:, None] - w[None, :]).sign())  # rarer -> heavier
    # sigma = 0 is the released code: w = 1 / (0.5 p + 0.5 / 313), normalised
    w = C.rebalance_weights(prior, 0.5, 0.0)
    raw = 1 / (0.5 * prior + 0.5 / 313)
    torch.testing.assert_close(w, raw / (prior * raw).sum())
    # the commonest bin is down-weighted against the rarest by (0.5 p_max + 0.5/Q) / (0.5 p_min + 0.5/Q), about 64x
    assert (w.max() / w[120]).item() == pytest.approx(((0.5 * prior[120] + 0.5 / 313) / (0.5 * prior.min() + 0.5 / 313)).item(), rel=1e-9)
    # lambda = 1 is no rebalancing
    torch.testing.assert_close(C.rebalance_weights(prior, 1.0, 5.0), torch.ones(313, dtype=torch.float64))
    # smoothing keeps a distribution and spreads mass from the peak to its neighbours
    ps = C.smooth_prior(prior, 5.0)
    assert ps.sum().item() == pytest.approx(1.0) and ps[120] < prior[120]


def test_pixel_weight_is_the_weight_of_the_targets_argmax():
    ab = C.rgb_to_lab(_photos(16).float())[:, 1:]
    w = C.rebalance_weights(C.reference_prior(), 0.5, 5.0)
    v = C.pixel_weights(ab, w)
    z = C.soft_encode(ab)
    assert v.shape == (3, 1, 16, 16)
    torch.testing.assert_close(v, w.float()[z.argmax(1, keepdim=True)])


def test_gray_mask():
    ab = torch.zeros(3, 2, 8, 8)
    ab[1, 0, 3, 3] = 5.0  # at the threshold: still gray
    ab[2, 1, 0, 0] = -5.5
    assert C.has_color(ab).tolist() == [False, False, True]


def test_decoding_mean_annealed_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 313, 3, 3, generator=g, dtype=torch.float64) * 3
    bins = C.ab_bins(dtype=torch.float64)
    mean = torch.einsum("nqhw,qc->nchw", logits.softmax(1), bins)
    torch.testing.assert_close(C.annealed_mean(logits, T=1.0), mean)
    torch.testing.assert_close(C.decode_mean(logits), mean)
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(C.decode_mode(logits), mode)
    torch.testing.assert_close(C.annealed_mean(logits, T=1e-4), mode)
    torch.testing.assert_close(C.annealed_mean(logits, T=0), mode)
    # Eq. 5 on a two-bin distribution z = (0.8, 0.2): f_T(z) = z^(1/T) / sum -> a known interpolation of the two bins
    logits2 = torch.full((1, 313, 1, 1), -1e9, dtype=torch.float64)
    logits2[0, 120], logits2[0, 121] = math.log(0.8), math.log(0.2)
    wt = 0.2 ** (1 / 0.38) / (0.8 ** (1 / 0.38) + 0.2 ** (1 / 0.38))
    expect = (1 - wt) * bins[120] + wt * bins[121]
    torch.testing.assert_close(C.annealed_mean(logits2)[0, :, 0, 0], expect)
    # the annealed mean is more saturated than the mean
    assert C.annealed_mean(logits).norm(dim=1).mean() > mean.norm(dim=1).mean()


def test_empirical_prior_counts_nearest_bins():
    ab = torch.zeros(2, 2, 4, 4)
    ab[0, 0] = 31.0  # nearest bin (30, 0)
    ab[0, 0, 0, :2] = 0.0
    prior = C.empirical_prior([ab[:1], ab[1:]])  # the second image is gray and skipped
    bins = C.ab_bins()
    i30 = int(((bins - torch.tensor([30.0, 0.0])).norm(dim=1)).argmin())
    assert prior[i30].item() == pytest.approx(14 / 16) and prior[120].item() == pytest.approx(2 / 16)


def test_ab_auc_perfect_constant_error_and_gray_baseline():
    true_ab = C.rgb_to_lab(_photos(64))[:, 1:]
    assert ab_auc(true_ab, true_ab) == pytest.approx(1.0)
    assert ab_auc(true_ab, true_ab, rebalanced=True) == pytest.approx(1.0)
    # a constant error of exactly 30: the curve is 0 below 30 and 1 from 30 on -> area (150 - 30 + 0.5) / 150
    shifted = true_ab.clone()
    shifted[:, 0] += 30.0
    assert ab_auc(shifted, true_ab) == pytest.approx(120.5 / 150, abs=1e-6)
    # predicting gray scores far lower once rare, saturated colours count as much as common ones (Table 1: 89.1 vs 58.0)
    gray = torch.zeros_like(true_ab)
    raw, reb = ab_auc(gray, true_ab), ab_auc(gray, true_ab, rebalanced=True)
    assert raw > 0.8 and reb < raw - 0.15
    # streaming over batches equals one pass; the ImageNet prior is accepted
    m = AbAucMeter()
    for i in range(3):
        m.update(gray[i : i + 1], true_ab[i : i + 1])
    assert m.auc() == pytest.approx(raw) and m.auc(rebalanced=True) == pytest.approx(reb)
    assert 0 < m.auc(rebalanced=True, prior="data") < raw
