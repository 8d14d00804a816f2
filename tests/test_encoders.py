"""Encoders for the benchmarks: every spec load_encoder accepts, the input conventions, and the taps."""

from __future__ import annotations

import pytest
import torch
import torchvision

from xchannel.color import rgb_to_lab
from xchannel.errors import UserError
from xchannel.features import ENCODERS, load_encoder
from xchannel.features.encoders import map_alexnet_state_dict
from xchannel.models import AlexNet, model_checkpoint
from xchannel.utils.io import atomic_torch_save, sha256_file


@pytest.fixture(scope="module")
def rgb():
    return torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(0))


def test_checkpoint_gray_and_color_variants(tmp_path, rgb):
    """A gray pretext-geometry checkpoint becomes the 227 px CaffeNet; its color variant (conv1 ab weights zero,
    Sec. 3.2) computes exactly the gray features whatever the colours."""
    net = AlexNet(width=0.25, seed=1)  # pretext geometry, as trained
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial BN statistics, as after training
                m.running_mean.uniform_(-0.01, 0.01)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "ckpt.pt"
    atomic_torch_save(model_checkpoint(net), path)

    gray = load_encoder(str(path))
    color = load_encoder(str(path), input_mode="color")
    assert gray.input_mode == "gray" and color.input_mode == "color"
    assert gray.backbone.geometry == "transfer" and gray.backbone.conv1.conv.padding == (0, 0)
    assert gray.prepare(rgb).shape[1] == 1 and color.prepare(rgb).shape[1] == 3
    ab_weights = color.backbone.conv1.conv.weight[:, 1:]
    assert torch.equal(ab_weights, torch.zeros_like(ab_weights))
    fg = gray.features(rgb, ["conv1", "conv5", "fc7"])
    fc = color.features(rgb, ["conv1", "conv5", "fc7"])
    assert fg["conv1"].shape == (2, 24, 55, 55) and fg["conv5"].shape == (2, 64, 13, 13)
    assert fg["fc7"].shape == (2, 1024)
    for layer in fg:
        assert torch.allclose(fg[layer], fc[layer], atol=1e-6)
    d = color.describe()
    assert d["checkpoint_sha256"] == sha256_file(path) and d["input_mode"] == "color"
    assert d["trained_hparams"]["geometry"] == "pretext" and d["hparams"]["in_channels"] == 3
    # A training run folder means its newest checkpoint.
    run = tmp_path / "run"
    run.mkdir()
    atomic_torch_save({**model_checkpoint(net), "step": 7}, run / "ckpt_00000007.pt")
    assert load_encoder(str(run)).weights_path.endswith("ckpt_00000007.pt")


def test_random_alexnets_and_depth_stop(rgb):
    gauss = load_encoder("gaussian:width=0.25", seed=3)
    assert torch.equal(gauss.backbone.conv1.conv.weight, load_encoder("gaussian:width=0.25", seed=3)
                       .backbone.conv1.conv.weight)
    assert gauss.weights_fingerprint() != load_encoder("gaussian:width=0.25", seed=4).weights_fingerprint()
    w = gauss.backbone.conv1.conv.weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.001  # the CaffeNet filler, std 0.01
    color = load_encoder("gaussian:width=0.25", input_mode="color")
    assert color.backbone.conv1.conv.weight[:, 1:].abs().sum() > 0  # the colour baseline sees colour

    calls = []
    hook = gauss.backbone.conv4.register_forward_hook(lambda *a: calls.append(1))
    gauss.features(rgb, ["conv2"])
    assert calls == []  # stops at the deepest requested layer
    hook.remove()

    with pytest.raises(UserError, match="needs images"):
        load_encoder("kmeans:width=0.25")
    km = load_encoder("kmeans:width=0.25", init_data=lambda: [rgb[:, :, :99, :99]] * 2)
    assert km.info["init"] == "kmeans" and km.info["kmeans_layers"] == ["conv1.conv", "conv2.conv", "conv3.conv",
                                                                         "conv4.conv", "conv5.conv"]
    assert not torch.equal(km.backbone.conv1.conv.weight, gauss.backbone.conv1.conv.weight)


def test_torchvision_alexnet_taps_and_gray_input(tmp_path, rgb):
    """torchvision's AlexNet (64-192-384-256-256): taps are post-ReLU activations of its own modules; gray input is
    the lightness image as RGB (R = G = B)."""
    torch.manual_seed(0)
    ref = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path / "alexnet.pth"
    torch.save({"state_dict": ref.state_dict()}, path)  # wrapped state_dicts are unwrapped
    enc = load_encoder(f"torchvision-alexnet:{path}")
    x = enc.prepare(rgb)
    f = enc.features(rgb, enc.layer_names)
    with torch.no_grad():
        assert torch.allclose(f["conv1"], ref.features[:2](x), atol=1e-5)
        assert torch.allclose(f["conv5"], ref.features[:12](x), atol=1e-5)
        pooled = torch.flatten(ref.avgpool(ref.features(x)), 1)
        assert torch.allclose(f["fc7"], ref.classifier[:6](pooled), atol=1e-5)
    assert f["conv1"].shape[1] == 64 and f["conv2"].shape[1] == 192 and f["pool5"].shape[1:] == (256, 6, 6)
    gray = load_encoder(f"torchvision-alexnet:{path}", input_mode="gray")
    g = gray.prepare(rgb) * gray.std + gray.mean
    assert torch.allclose(g[:, 0], g[:, 1], atol=1e-4) and torch.allclose(g[:, 1], g[:, 2], atol=1e-4)
    assert torch.allclose(rgb_to_lab(g)[:, 0], rgb_to_lab(rgb)[:, 0], atol=0.05)  # same lightness


def test_timm_encoder_by_name_and_from_file(tmp_path):
    enc = load_encoder("timm:resnet18", seed=0)
    assert enc.layer_names == ("act1", "layer1", "layer2", "layer3", "layer4")
    x = torch.rand(2, 3, 64, 64)
    f = enc.features(x, ["layer2", "act1"])
    assert f["act1"].shape == (2, 64, 32, 32) and f["layer2"].shape == (2, 128, 8, 8)
    path = tmp_path / "r18.pth"
    torch.save(enc.backbone.state_dict(), path)
    again = load_encoder(f"timm:resnet18:{path}")
    assert torch.equal(again.features(x, ["layer2"])["layer2"], f["layer2"])
    with pytest.raises(UserError, match="resnet34.*missing keys"):
        load_encoder(f"timm:resnet34:{path}")


def test_state_dict_key_mappings(tmp_path, rgb):
    """Caffe-style (conv1.weight ... fc8.bias) and torchvision-style (features.N / classifier.N) keys map onto our
    AlexNet; fc8 is dropped; fc6 given as a 6x6 convolution is flattened."""
    src = AlexNet(width=0.25, geometry="transfer", batchnorm=False, seed=5).eval()
    caffe = {k.replace(".conv.", ".").replace(".fc.", "."): v for k, v in src.state_dict().items()}
    caffe["fc6.weight"] = caffe["fc6.weight"].reshape(1024, 64, 6, 6)
    torch.save(caffe, tmp_path / "caffe.pt")
    enc = load_encoder(f"state_dict:{tmp_path / 'caffe.pt'}:alexnet")
    want = src.features(rgb_to_lab(rgb)[:, :1], ["conv3", "fc7"])
    got = enc.features(rgb, ["conv3", "fc7"])
    assert torch.allclose(got["conv3"], want["conv3"], atol=1e-6) and torch.allclose(got["fc7"], want["fc7"], atol=1e-6)

    order = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    tv_style = {}
    for part, idx, names in (("features", (0, 3, 6, 8, 10), order), ("classifier", (1, 4, 6), ("fc6", "fc7", "fc8"))):
        for i, name in zip(idx, names):
            for kind in ("weight", "bias"):
                tv_style[f"{part}.{i}.{kind}"] = caffe[f"{name}.{kind}"]
    mapped = map_alexnet_state_dict(tv_style, "tv")
    assert "fc8.fc.weight" not in mapped and torch.equal(mapped["conv4.conv.weight"], caffe["conv4.weight"])
    with pytest.raises(UserError, match=r"x\.pt: cannot map key\(s\) \['head.weight'\]"):
        map_alexnet_state_dict({**caffe, "head.weight": torch.zeros(1)}, "x.pt")


def test_spec_errors_and_registry():
    assert list(ENCODERS) == ["checkpoint", "gaussian", "kmeans", "torchvision-alexnet", "timm", "state_dict"]
    with pytest.raises(UserError, match="unknown encoder kind 'vgg'.*gaussian"):
        load_encoder("vgg")
    with pytest.raises(UserError, match="missing.pt.*no such file"):
        load_encoder("/nowhere/missing.pt")
    with pytest.raises(UserError, match="unknown option 'depth'"):
        load_encoder("gaussian:depth=3")
    with pytest.raises(UserError, match="input mode must be gray or color"):
        load_encoder("gaussian:width=0.25", input_mode="rgb")
    with pytest.raises(UserError, match="Unknown model"):
        load_encoder("timm:no_such_net")
