"""FCN-32s segmentation on PASCAL VOC (Table 2, % mIU).

What is checked, and why it would fail on a wrong implementation:

* the output has the input's size for odd, tiny and large inputs (100 px padding, Caffe's rounded-up pools, the
  crop at the coord_map offset: exactly 18 px with the authors' 63 px kernel, 18.5 with 64 px), also for an
  encoder without fc layers (a timm ResNet);
* the 63 x 63 stride-32 upsampling starts as bilinear interpolation: its kernel equals
  (1 - |i - 31| / 32)(1 - |j - 31| / 32) on the diagonal channel pairs, zero elsewhere, and it reproduces a
  constant map exactly (the taps of each phase sum to 1);
* the default protocol is the authors' (SBD train in its release format -> VOC2011 seg11valid, 150k iterations
  at 1e-4 / 1e-5 / 1e-6, biases x2 without decay): seg11valid is VOC2011 val minus SBD train, read from its list or
  derived, and a list that holds a training image is refused;
* fc6/fc7 as convolutions compute exactly the trunk's fc6/fc7 at 227 px;
* pixels labelled 255 neither count in the loss nor receive a gradient; the loss is the mean over labelled pixels;
* the SBD-augmented training set is SBD train + val + VOC train minus VOC val, with SBD's .mat masks read;
* end to end on a generated VOCdevkit: the JSON holds mean IU and pixel accuracy (consistent with the per-class
  IU), the Table 2 column and the protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import synthetic_voc
import torch

from xchannel.data.voc import load_mask, read_image_set
from xchannel.features.encoders import load_encoder
from xchannel.errors import UserError
from xchannel.pascal.config import RescaleConfig
from xchannel.pascal.encoder_cut import build_trunk
from xchannel.data.sbd import SBDAugmented, SBDSegmentation, seg11valid_ids
from xchannel.pascal.segmentation import (FCN32s, bilinear_kernel, run_task, segmentation_loss, training_set,
                                          validation_set)
from xchannel.pascal.segmentation import Config as SegConfig

WIDTH_SPEC = "gaussian:width=0.125"


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return synthetic_voc(tmp_path_factory, voc_trainval=12, voc_test=0, size=64, voc2012=True)


@pytest.fixture(scope="module")
def fcn() -> FCN32s:
    return FCN32s(build_trunk(load_encoder(WIDTH_SPEC, "gray", seed=1))).eval()


def test_output_size_equals_input_size(fcn: FCN32s) -> None:
    assert fcn.stride == 32 and fcn.offset_exact == 18.0 and fcn.offset == 18  # the authors' 63 px kernel
    with torch.no_grad():
        for h, w in [(1, 1), (37, 53), (64, 96), (227, 227), (250, 181)]:
            y = fcn(torch.rand(1, 1, h, w) * 100)
            assert y.shape == (1, 21, h, w), (h, w)
    fcn64 = FCN32s(build_trunk(load_encoder(WIDTH_SPEC, "gray", seed=1)), upsample_kernel=64)
    assert fcn64.offset_exact == 18.5  # half a pixel off


def test_generic_encoder_head_covers_the_input() -> None:
    """A timm network (no fc6/fc7): score and 2s x 2s upsampling on its deepest map (stride s = 32)."""
    encoder = load_encoder("timm:resnet10t", "rgb", seed=0)
    net = FCN32s(build_trunk(encoder)).eval()
    assert net.generic and net.stride == 32 and net.upscore.kernel_size == (64, 64) and net.offset == 16
    with torch.no_grad():
        for h, w in [(37, 53), (64, 96)]:
            assert net(encoder.prepare(torch.rand(1, 3, h, w))).shape == (1, 21, h, w)


def test_upsampling_is_bilinear(fcn: FCN32s) -> None:
    w = fcn.upscore.weight
    assert w.shape == (21, 21, 63, 63) and fcn.upscore.stride == (32, 32) and not w.requires_grad
    i = torch.arange(63, dtype=torch.float64)
    r = 1 - (i - 31).abs() / 32
    formula = (r[:, None] * r[None, :]).float()
    assert torch.equal(bilinear_kernel(63), formula)
    i64 = torch.arange(64, dtype=torch.float64)
    r64 = 1 - (i64 - 31.5).abs() / 32
    assert torch.equal(bilinear_kernel(64), (r64[:, None] * r64[None, :]).float())
    eye = torch.eye(21, dtype=torch.bool)
    assert all(torch.equal(w[c, c], formula) for c in range(21))
    assert w[~eye].abs().max() == 0
    with torch.no_grad():  # interpolation of a constant is that constant (away from the borders)
        up = fcn.upscore(torch.full((1, 21, 5, 5), 3.0))
    assert torch.allclose(up[..., 32:-32, 32:-32], torch.tensor(3.0), atol=1e-5)
    assert torch.equal(fcn.upscore.weight[0, 0], bilinear_kernel(63))
    assert fcn.score.weight.abs().max() == 0 and fcn.score.bias.abs().max() == 0  # FCN's zero-initialised score


def test_fc_layers_as_convolutions_equal_the_fc_layers() -> None:
    encoder = load_encoder(WIDTH_SPEC, "gray", seed=2)
    trunk = build_trunk(encoder).eval()
    net = FCN32s(trunk).eval()  # its layers run here without the padding
    x = encoder.prepare(torch.rand(2, 3, 227, 227))
    with torch.no_grad():
        dense = net.fc7(net.fc6(net.features(trunk.normalize(x))))
        assert dense.shape[-2:] == (1, 1)
        assert torch.allclose(dense[:, :, 0, 0], trunk(x), rtol=1e-4, atol=1e-5)


def test_void_pixels_are_ignored() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 21, 6, 7, generator=gen, requires_grad=True)
    mask = torch.randint(0, 21, (1, 6, 7), generator=gen)
    mask[0, :2] = 255
    loss = segmentation_loss(scores, mask)
    valid = mask != 255
    logp = torch.log_softmax(scores, 1).detach()
    manual = -logp.gather(1, mask.clamp(max=20)[:, None])[:, 0][valid].mean()
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-6)
    loss.backward()
    assert scores.grad[0, :, :2].abs().max() == 0 and scores.grad[0, :, 2:].abs().max() > 0
    other = scores.detach().clone()
    other[0, :, :2] = torch.randn(21, 2, 7, generator=gen) * 50  # change the void pixels' scores
    assert float(segmentation_loss(other, mask)) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(segmentation_loss(scores.detach(), torch.full_like(mask, 255))) == 0.0


def test_sbd_augmented_training_set(voc: Path, tmp_path: Path) -> None:
    from scipy.io import savemat

    train = read_image_set(voc, 2012, "train", "Segmentation")
    val = read_image_set(voc, 2012, "val", "Segmentation")
    sbd = tmp_path / "dataset"
    (sbd / "cls").mkdir(parents=True)
    sbd_train, sbd_val = val[:2] + train[:1], val[2:3]  # SBD overlaps both VOC splits, as the real one does
    for i in sbd_train + sbd_val:
        seg = load_mask(voc / "VOC2012" / "SegmentationClass" / f"{i}.png").copy()
        seg[seg == 255] = 0  # SBD masks have no void
        savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    ds = SBDAugmented(voc, sbd)
    assert ds.ids == sorted(set(train) | set(sbd_train + sbd_val) - set(val))
    assert ds.counts["removed_val"] == 3
    # an id only SBD has would be read from its .mat: drop the PNG of a training id to exercise that path
    png = voc / "VOC2012" / "SegmentationClass" / f"{train[0]}.png"
    original = load_mask(png)
    png.rename(png.with_suffix(".bak"))
    try:
        item = ds[ds.ids.index(train[0])]
    finally:
        png.with_suffix(".bak").rename(png)
    expect = original.astype(np.int64)
    expect[expect == 255] = 0
    assert torch.equal(item["mask"], torch.from_numpy(expect))


def test_default_is_the_authors_protocol_on_sbd_in_its_release_format(voc: Path, tmp_path: Path) -> None:
    cfg = SegConfig()
    o = cfg.optim
    assert (cfg.data.train, cfg.data.year, cfg.data.val_split, cfg.upsample_kernel) == ("sbd", "2011", "seg11valid",
                                                                                      63)
    assert (o.iterations, o.lr, o.lr_step, o.lr_gamma, o.iter_size) == (150_000, 1e-4, 50_000, 0.1, 20)
    assert (o.momentum, o.weight_decay, o.bias_lr_mult, o.bias_decay_mult) == (0.9, 5e-4, 2.0, 0.0)

    # the embedded data set's SBD tree (MATLAB files read by scipy) and the authors' validation list
    sbd = voc.parent / "SBD" / "dataset"
    train = SBDSegmentation(sbd, "train")
    sbd_train = (sbd / "train.txt").read_text().split()
    assert train.ids == sbd_train and len(train) > 0
    item = train[0]
    from scipy.io import loadmat
    seg = loadmat(str(sbd / "cls" / f"{train.ids[0]}.mat"))["GTcls"][0]["Segmentation"][0]
    assert torch.equal(item["mask"], torch.from_numpy(seg.astype(np.int64)))
    assert item["image"].shape[-2:] == seg.shape and int(item["mask"].max()) <= 20  # SBD has no void
    val = read_image_set(voc, 2011, "val", "Segmentation")
    ids, source = seg11valid_ids(voc, sbd)
    assert ids == [i for i in val if i not in set(sbd_train)] and 0 < len(ids) < len(val)
    assert source.endswith("seg11valid.txt")
    listed = voc / "VOC2011" / "ImageSets" / "Segmentation" / "seg11valid.txt"
    kept = listed.read_text()
    try:
        listed.unlink()  # without the list it is derived: the same images
        derived, source = seg11valid_ids(voc, sbd)
        assert derived == ids and "minus" in source
        listed.write_text(kept + sbd_train[0] + "\n")  # a list that holds a training image is refused
        with pytest.raises(UserError, match=r"seg11valid\.txt: 1 of its images are in SBD's training list"):
            seg11valid_ids(voc, sbd)
    finally:
        listed.write_text(kept)


def test_end_to_end_writes_mean_iu_and_pixel_accuracy(voc: Path, tmp_path: Path) -> None:
    cfg = SegConfig(encoder=WIDTH_SPEC, input_mode="color", ab_branch=True, voc=str(voc), out=str(tmp_path / "s.json"),
                    progress=False, log_every=1, rescale=RescaleConfig(images=3), device="cpu")
    cfg.optim.iterations, cfg.optim.iter_size, cfg.optim.lr = 2, 2, 1e-3
    result = run_task(cfg)
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert on_disk["task"] == "segmentation" and on_disk["table2_column"] == "seg"
    m = on_disk["metrics"]
    assert 0 <= m["mean_iu"] <= 100 and 0 <= m["pixel_accuracy"] <= 100
    ius = [v for v in m["iu"].values() if v is not None]
    assert m["mean_iu"] == pytest.approx(np.mean(ius)) and on_disk["headline"]["value"] == m["mean_iu"]
    assert m["mean_iu_ci"]["value"] == pytest.approx(m["mean_iu"], abs=1e-9)  # per-image confusions summed
    # a percentile interval of mean IU (a nanmean over the classes a resample holds) need not contain the estimate
    # on a handful of images; it is ordered and straddles the replicates' mean
    lo, hi = m["mean_iu_ci"]["ci95"]
    assert lo <= m["mean_iu_ci"]["bootstrap"]["replicate_mean"] <= hi and m["mean_iu_ci"]["per_seed"] == [m["mean_iu"]]
    seg11valid = read_image_set(voc, 2011, "seg11valid", "Segmentation")
    assert on_disk["data"]["val"]["evaluated"] == len(seg11valid)
    assert on_disk["data"]["train"]["images"] == len((voc.parent / "SBD" / "dataset" / "train.txt").read_text().split())
    assert on_disk["protocol"]["network"]["crop_offset"] == 18 and on_disk["protocol"]["ab_branch"]
    assert [s["step"] for s in on_disk["encoder"]["preparation"]] == ["rescale", "ab_branch"]
    assert on_disk["encoder"]["preparation"][0]["images"]["split"] == "SBD train"  # rescaled on SBD's images
    assert "conv1_ab" in on_disk["encoder"]["trunk"]["groups"] and len(result["history"]) == 2
    groups = {g["name"]: (g["lr_mult"], g["decay_mult"]) for g in on_disk["protocol"]["param_groups"]}
    assert groups["fc6.weights"] == (1.0, 1.0) and groups["fc6.biases"] == (2.0, 0.0)  # the authors' param blocks
    assert groups["score.biases"] == (2.0, 0.0) and groups["conv1_ab.weights"] == (1.0, 1.0)
    assert not any(name.startswith("upscore") for name in groups)  # fixed bilinear upsampling


def test_demo_preset_scales_training_and_scored_images(voc: Path) -> None:
    """The demo preset's ``data.scale=1.5``: every training and scored image and its mask are 1.5x the stored size,
    and the scored masks keep their stored labels (nearest neighbour)."""
    from xchannel.pascal.segmentation import config

    cfg = config("demo", voc=str(voc), encoder=WIDTH_SPEC, input_mode="gray")
    assert cfg.data.scale == 1.5
    val, _ = validation_set(cfg)
    item, stored = val[0], load_mask(val.masks[0])
    assert item["mask"].shape == (round(1.5 * stored.shape[0]), round(1.5 * stored.shape[1]))
    assert item["image"].shape[1:] == item["mask"].shape
    assert set(item["mask"].unique().tolist()) <= set(np.unique(stored).tolist())
    train = training_set(cfg)[0]
    assert train["image"].shape[1:] == train["mask"].shape
    with pytest.raises(UserError, match="data.scale"):
        config("demo", ["data.scale=0"], voc=str(voc), encoder=WIDTH_SPEC, input_mode="gray").validate()
