"""Linear probes (Sec. 3.2, Fig. 7): pooling protocols, one-pass multi-layer training, feature cache, plot, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision

from xchannel.cli import main
from xchannel.data.synthetic import SyntheticSpec, make_dataset
from xchannel.errors import UserError
from xchannel.features import load_encoder
from xchannel.probe import PROTOCOLS, ProbeConfig, fit_probe, probe_dims, run_probe
from xchannel.probe.protocols import equal_kernel
from xchannel.probe.run import build_encoder, top1_hits

# Full-width CaffeNet activations at 227 px (conv1 55x55; pool1/conv2 27x27; pool2/conv3-5 13x13; pool5 6x6).
CAFFENET_227 = {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                "conv5": (256, 13, 13)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny ImageFolder set: 4 classes, 24 train and 12 val images each, 64 px."""
    out = tmp_path_factory.mktemp("probe_data")
    make_dataset(out, SyntheticSpec(classes=4, train_per_class=24, val_per_class=12, voc_trainval=0, voc_test=0, seg_val=0,
                                    voc2012=False, size=64))
    return out / "imagenet"


def small_cfg(data, tmp_path, **kw) -> ProbeConfig:
    base = dict(encoder="gaussian:width=0.25", data=str(data), crop=67, workers=0, progress=False, epochs=2,
                batch_size=16, out=str(tmp_path / "result.json"))
    return ProbeConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------------------------
# Protocol dimensions


def test_zhang16_dims_at_227():
    """The paper's rule: kernel = stride = smallest k with C * ceil(H/k)^2 < 10,000.

    conv1 96x55x55: k=5 -> ceil(55/5)=11 -> 96*121 = 11616 (too many); k=6 -> ceil(55/6)=10 -> 96*100 = 9600.
    conv2 256x27x27: k=4 -> 7 -> 256*49 = 12544; k=5 -> ceil(27/5)=6 -> 256*36 = 9216.
    conv3/conv4 384x13x13: k=2 -> 7 -> 384*49 = 18816; k=3 -> ceil(13/3)=5 -> 384*25 = 9600.
    conv5 256x13x13: k=2 -> 7 -> 256*49 = 12544; k=3 -> 5 -> 256*25 = 6400.
    pool5 256x6x6 = 9216 < 10,000: not pooled.
    """
    expected = {"conv1": (6, (96, 10, 10), 9600), "conv2": (5, (256, 6, 6), 9216), "conv3": (3, (384, 5, 5), 9600),
                "conv4": (3, (384, 5, 5), 9600), "conv5": (3, (256, 5, 5), 6400)}
    zhang = PROTOCOLS["zhang16"]
    for layer, (k, shape, dim) in expected.items():
        spec = zhang.pool_spec(layer, CAFFENET_227[layer])
        assert (spec.kernel, spec.stride, spec.out_shape, spec.dim) == (k, k, shape, dim), layer
        assert equal_kernel(CAFFENET_227[layer]) == k
    assert zhang.pool_spec("pool5", (256, 6, 6)).kind == "identity"
    # floor rounding drops partial windows: conv2 k=4 -> floor(27/4) = 6 -> 9216; conv5 k=2 -> 6 -> 9216.
    assert zhang.pool_spec("conv2", (256, 27, 27), "floor").kernel == 4
    assert zhang.pool_spec("conv5", (256, 13, 13), "floor").out_shape == (256, 6, 6)


def test_goyal19_and_released_probe_dims_match_vissl():
    """VISSL's AlexNet heads: 9600, 9216, 9600, 9600, 9216. Formula floor((H - k) / s) + 1:
    conv1 (55-19)/4+1 = 10 -> 96*100; conv2 (27-12)/3+1 = 6 -> 256*36; conv3/4 (13-9)+1 = 5 -> 384*25;
    conv5 (13-8)+1 = 6 -> 256*36. The authors' released probe resizes to 10, 6, 5, 5, 6: the same dimensions."""
    vissl = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
    for name in ("goyal19", "zhang16-release"):
        proto = PROTOCOLS[name]
        for layer, shape in CAFFENET_227.items():
            spec = proto.pool_spec(layer, shape)
            c, h, w = spec.out_shape
            k, s, p = proto.per_layer[layer] if name == "goyal19" else (0, 0, 0)
            if name == "goyal19":
                assert h == w == (shape[1] - k) // s + 1
            assert spec.dim == vissl[layer], (name, layer)


def test_default_is_the_protocol_of_the_published_numbers():
    """Fig. 7's published curves come from the authors' released probe (conv5 resized to 6 x 6 = 9216 dims), not
    from the paper sentence's equal-kernel pooling (conv5 5 x 5 = 6400): the default protocol, the figure7 sweep and
    the overlay's record all name the same protocol, and a plot of another protocol says it differs."""
    import yaml

    from xchannel.reports import published as published_numbers
    from xchannel.sweep.spec import resolve_spec_path

    published = published_numbers.load("figure7")
    assert ProbeConfig().protocol == published["protocol"] == "zhang16-release"
    assert yaml.safe_load(resolve_spec_path("figure7").read_text())["variables"]["protocol"] == "zhang16-release"
    spec = PROTOCOLS["zhang16-release"].pool_spec("conv5", CAFFENET_227["conv5"])
    assert (spec.kind, spec.out_shape, spec.dim) == ("bilinear", (256, 6, 6), 9216)
    assert PROTOCOLS["zhang16"].pool_spec("conv5", CAFFENET_227["conv5"]).dim == 6400
    assert "released linear probe" in published["notes"] and "kernel = stride" not in published["notes"]


def test_probe_dims_on_the_real_network_and_cli_json(capsys):
    """The pooled shapes come from the network's actual activations (full-width AlexNet, transfer geometry)."""
    enc = load_encoder("gaussian")
    dims = probe_dims("zhang16", enc, layers=["all"])
    assert {k: v["dim"] for k, v in dims.items()} == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600,
                                                      "conv5": 6400, "pool5": 9216, "fc6": 4096, "fc7": 4096}
    assert dims["conv1"]["in_shape"] == [96, 55, 55]
    assert main(["probe", "--protocol", "goyal19", "--show-dims", "--json", "--layer", "conv1,conv5",
                 "--encoder", "gaussian:width=0.25"]) == 0
    out = json.loads(capsys.readouterr().out)  # quarter width: 24 and 64 channels, same pools
    assert out == {"conv1": {"shape": [24, 10, 10], "dim": 2400}, "conv5": {"shape": [64, 6, 6], "dim": 2304}}


def test_ceil_pooling_averages_partial_windows_like_caffe():
    """Caffe's ceil rounding: the last window of a 55-wide map with k=6 covers 1 column, and averages just it."""
    spec = PROTOCOLS["zhang16"].pool_spec("conv1", (96, 55, 55))
    x = torch.arange(55.0).repeat(1, 96, 55, 1)  # value = column index
    y = PROTOCOLS["zhang16"].pooler("conv1", (96, 55, 55))(x)
    assert y.shape[-1] == spec.out_shape[-1] == 10
    assert y[0, 0, 0, 0] == pytest.approx(2.5)  # columns 0..5
    assert y[0, 0, 0, -1] == pytest.approx(54.0)  # the partial window: column 54 alone


# --------------------------------------------------------------------------------------------------------------
# Training


def test_one_pass_equals_separate_runs(data, tmp_path):
    """Probing conv1 and conv3 together trains exactly the heads that two single-layer runs train."""
    both, heads = fit_probe(small_cfg(data, tmp_path, layers=["conv1", "conv3"], epochs=1))  # random crops + mirrors
    for layer in ("conv1", "conv3"):
        single, single_heads = fit_probe(small_cfg(data, tmp_path, layers=[layer], epochs=1))
        assert torch.allclose(single_heads[layer].fc.weight, heads[layer].fc.weight, atol=1e-6, rtol=0)
        assert single["layers"][layer]["top1"] == both["layers"][layer]["top1"]
        assert single["layers"][layer]["top5"] == both["layers"][layer]["top5"]
    assert both["timing"]["encoder_batches"] == single["timing"]["encoder_batches"]  # once per batch, not per layer
    assert both["layers"]["conv1"]["top5"] == 100.0  # 4 classes: top-5 is every class


def test_kmeans_encoder_beats_chance_and_cache_replays(data, tmp_path):
    """A k-means initialised AlexNet (Krähenbühl et al.) separates the classes at conv3 well above chance (25%).
    A second run on the feature cache gives identical accuracies without running the encoder."""
    cfg = small_cfg(data, tmp_path, encoder="kmeans:width=0.25", layers=["conv2", "conv3"], epochs=6,
                    kmeans_images=48, cache=str(tmp_path / "cache"))
    encoder = build_encoder(cfg, data)  # initialised on 48 training images (center crops)
    assert encoder.info["init_images"] == 48
    first = run_probe(cfg, encoder)
    assert first["layers"]["conv3"]["top1"] >= 45.0, first["layers"]
    assert first["cache"]["computed"] == {"train": ["conv2", "conv3"], "val": ["conv2", "conv3"]}
    assert first["protocol"]["augment"] is False
    # On the cache the heads train with 3 seeds: top-1 is their mean, each seed's value is its images' hit rate,
    # the first seed is the run a single seed gives, and the interval (images and seeds) holds the mean.
    assert first["seeds"] == [0, 1, 2] and first["chance"]["uniform"] == 25.0
    single = run_probe(replace(cfg, head_seeds=1), encoder)
    for layer in ("conv2", "conv3"):
        ci, hits = first["layers"][layer]["top1_ci"], top1_hits(first, layer)
        assert hits.shape == (3, first["data"]["evaluated"])
        assert ci["per_seed"] == pytest.approx(list(100.0 * hits.mean(1)))
        assert first["layers"][layer]["top1"] == pytest.approx(sum(ci["per_seed"]) / 3)
        assert ci["ci95"][0] <= first["layers"][layer]["top1"] <= ci["ci95"][1]
        assert single["layers"][layer]["top1"] == pytest.approx(ci["per_seed"][0], abs=1e-9)
    from xchannel.probe.demo import compare_rows

    same = compare_rows(first, first)  # an encoder against itself: never separable
    assert all(c["verdict"] == "not separable" and "not separable at 95 %" in c["sentence"] for c in same.values())

    convs = []  # convolutions run on image batches (the one-image dry run that reads the layer shapes excepted)
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: convs.append(1) if isinstance(m, torch.nn.Conv2d) and i[0].shape[0] > 1 else None)
    try:
        second = run_probe(cfg, encoder)
    finally:
        hook.remove()
    assert convs == [] and second["timing"]["encoder_batches"] == 0
    assert second["cache"]["computed"] == {"train": [], "val": []}
    for layer in ("conv2", "conv3"):
        assert second["layers"][layer]["top1"] == first["layers"][layer]["top1"]
        assert second["layers"][layer]["top5"] == first["layers"][layer]["top5"]
    assert second["encoder"]["init"] == "kmeans"
    assert json.loads((tmp_path / "result.json").read_text())["layers"]["conv3"]["top1"] == \
        second["layers"]["conv3"]["top1"]
    # A fresh k-means initialisation from the same spec and seed is the same network: it hits the same cache.
    assert run_probe(replace(cfg, epochs=1))["cache"]["computed"] == {"train": [], "val": []}
    # One more layer: only it is computed; the others are read back.
    more = run_probe(replace(cfg, epochs=1, layers=["conv2", "conv3", "conv4"]), encoder)
    assert more["cache"]["computed"] == {"train": ["conv4"], "val": ["conv4"]}


def test_result_records_protocol_data_and_code(data, tmp_path):
    r = run_probe(small_cfg(data, tmp_path, layers=["conv2"], epochs=1, ten_crop=True))
    assert r["protocol"]["name"] == "zhang16-release" and r["protocol"]["eval_views"] == 10
    assert r["config"]["layers"] == ["conv2"] and r["config"]["encoder"] == "gaussian:width=0.25"
    assert r["data"]["classes"] == 4 and r["data"]["images"] == {"train": 96, "val": 48}
    assert r["data"]["evaluated"] == 48 and not r["data"]["is_imagenet"] and len(r["data"]["class_list_sha256"]) == 64
    assert r["code"]["xchannel"] and r["encoder"]["weights_fingerprint"]
    assert r["protocol"]["schedule_used"]["lr"] == 0.01 and r["protocol"]["schedule_used"]["momentum"] == 0.9
    assert math.isfinite(r["layers"]["conv2"]["final_train_loss"])


def test_torchvision_and_timm_encoders_probe(data, tmp_path):
    """RGB networks from weight files: torchvision's AlexNet and a timm ResNet-18 (random weights, saved)."""
    tv = tmp_path / "alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tv)
    r = run_probe(small_cfg(data, tmp_path, encoder=f"torchvision-alexnet:{tv}", layers=["conv1", "conv3"],
                            epochs=1))
    assert r["encoder"]["input_mode"] == "rgb" and r["layers"]["conv1"]["in_shape"][0] == 64  # not CaffeNet's 96
    timm_weights = tmp_path / "resnet18.pth"
    torch.save(load_encoder("timm:resnet18").backbone.state_dict(), timm_weights)
    r = run_probe(small_cfg(data, tmp_path, encoder=f"timm:resnet18:{timm_weights}", layers=["layer1", "layer2"],
                            epochs=1, crop=64, input_mode="gray"))
    assert r["encoder"]["checkpoint_sha256"] and r["encoder"]["input_mode"] == "gray"
    assert r["layers"]["layer2"]["in_shape"] == [128, 8, 8]
    assert all(0 <= v["top1"] <= 100 for v in r["layers"].values())


def test_bad_input_errors_name_the_problem(data, tmp_path):
    with pytest.raises(UserError, match="unknown layer.*'conv9'.*conv1, conv2"):
        run_probe(small_cfg(data, tmp_path, layers=["conv9"]))
    with pytest.raises(UserError, match="unknown encoder kind 'alexnet-imagenet'"):
        run_probe(small_cfg(data, tmp_path, encoder="alexnet-imagenet"))
    with pytest.raises(UserError, match="no train/ folder"):
        run_probe(small_cfg(data.parent, tmp_path))
    with pytest.raises(UserError, match="goyal19.*conv2 is 7x7, smaller than its 12x12 pool"):
        run_probe(small_cfg(data, tmp_path, protocol="goyal19", layers=["conv2"]))
    with pytest.raises(UserError, match="fc6.*67 px"):
        run_probe(small_cfg(data, tmp_path, layers=["fc6"]))
    assert main(["probe", "--data", str(data), "--encoder", "nope.pt", "--no-progress"]) == 2


# --------------------------------------------------------------------------------------------------------------
# Plot


def test_plot_figure7_writes_png(data, tmp_path):
    result = tmp_path / "gauss.json"
    run_probe(small_cfg(data, tmp_path, layers=["conv1", "conv2"], epochs=1, out=str(result)))
    color = json.loads(result.read_text())
    color["encoder"]["input_mode"], color["data"]["is_imagenet"] = "color", True  # exercise both styles + overlay
    (tmp_path / "color.json").write_text(json.dumps(color))
    png = tmp_path / "fig.png"
    assert main(["plot", "figure7", str(result), str(tmp_path / "color.json"), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["plot", "figure7", str(tmp_path / "missing.json"), "-o", str(png)]) == 2


def test_head_is_batchnorm_then_linear():
    """logits = W flatten(BN(x)) + b with per-channel batch statistics and no affine BN parameters."""
    from xchannel.probe.heads import LinearHead

    head = LinearHead((3, 2, 2), 5, torch.Generator().manual_seed(0))
    assert not any(n.startswith("bn.") for n, _ in head.named_parameters())
    x = torch.randn(8, 3, 2, 2) * 1e-4  # tiny activations (Gaussian-init conv5) are normalised all the same
    mu, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = F.linear(((x - mu) / var.sqrt()).flatten(1), head.fc.weight, head.fc.bias)
    assert torch.allclose(head.train()(x), expected, atol=1e-4)
