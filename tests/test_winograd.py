"""Winograd F(m x m, 3 x 3) convolutions (xchannel.models.winograd): the same function as nn.Conv2d for any padding,
dilation, size, batch and bias; the transformed VGG colorizer colours as the original; only eligible convolutions
are replaced and the original model is left as it was."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from xchannel import color as C
from xchannel.cli import main
from xchannel.colorize import colorize_rgb, inference_network
from xchannel.models import model_checkpoint
from xchannel.models.winograd import WinogradConv2d, is_eligible, layer_errors, winograd_inference, winograd_matrices
from xchannel.utils.io import atomic_torch_save

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level package beside xchannel/, not installed with it
    sys.path.insert(0, str(REPO))

from benchmarks.perf.colorize import network  # noqa: E402
from benchmarks.perf.common import photo_crops  # noqa: E402


@pytest.mark.parametrize("m", [2, 4])
def test_matrices_compute_the_1d_correlation(m):
    at, g, bt = winograd_matrices(m)
    gen = torch.Generator().manual_seed(m)
    for _ in range(5):
        filt = torch.randn(3, dtype=torch.float64, generator=gen)
        d = torch.randn(m + 2, dtype=torch.float64, generator=gen)
        expected = torch.stack([(filt * d[k:k + 3]).sum() for k in range(m)])
        assert torch.allclose(at @ ((g @ filt) * (bt @ d)), expected, rtol=0, atol=1e-12)
    assert torch.equal(bt * 8, (bt * 8).round())  # the input transform is exact in binary floating point


# (in, out, H, W, batch, padding, dilation, bias): odd sizes, output sizes that are not multiples of the tile,
# padding 0 / 1 / 2 (beyond the kernel's reach), dilation 2 with padding 1 and 2, per-axis values, string padding
CASES = [
    (3, 5, 7, 9, 1, 0, 1, True),
    (4, 3, 13, 6, 2, 1, 1, False),
    (5, 4, 11, 10, 3, 2, 1, True),
    (3, 6, 16, 16, 1, 2, 2, True),
    (2, 3, 9, 15, 2, 1, 2, False),
    (4, 4, 12, 17, 1, (1, 2), (2, 1), True),
    (3, 3, 10, 10, 2, "same", 2, True),
    (3, 2, 10, 11, 1, "valid", 1, False),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_equals_conv2d(m, case):
    c_in, c_out, h, w, n, padding, dilation, bias = case
    gen = torch.Generator().manual_seed(len(CASES) * m + CASES.index(case))
    conv = nn.Conv2d(c_in, c_out, 3, padding=padding, dilation=dilation, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
        if bias:
            conv.bias.copy_(torch.randn(c_out, generator=gen, dtype=torch.float64))
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    fast = WinogradConv2d(conv, m)
    want = conv(x)
    got = fast(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-11 * want.abs().max()


def test_float32_error_and_autocast():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 48, 3, padding=2, dilation=2)
    x = torch.randn(2, 64, 20, 20, generator=gen).relu()
    fast = WinogradConv2d(conv)
    with torch.no_grad():
        want = nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=2, dilation=2)
        got = fast(x)
        assert got.dtype == torch.float32
        assert (got - want).abs().max() < 1e-5 * want.abs().max()  # measured 3e-7 relative
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the transforms stay in float32
            under_autocast = fast(x)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, got)


@pytest.fixture(scope="module")
def colorizer():
    """A narrow VGG colorizer at a trained network's magnitudes (logits of std 2), and photo L inputs."""
    model = network(0.25, 64)
    L = C.rgb_to_lightness(photo_crops(2, 64, seed=5).float() / 255.0)
    return model, L


def test_colorizer_predicts_the_same_ab(colorizer):
    model, L = colorizer
    # in float64 (filters transformed from float64 weights) the Winograd network is the same function to rounding
    exact64 = inference_network(model, exact_conv=True).double()
    fast64 = winograd_inference(exact64)
    with torch.no_grad():
        ab64 = exact64.predict_ab(L.double())
        assert (fast64.predict_ab(L.double()) - ab64).abs().max() < 1e-9
        # float32: within a few times the direct convolutions' own float32 error (both against float64)
        err_fast = (winograd_inference(model).predict_ab(L).double() - ab64).abs().max()
        err_exact = (model.predict_ab(L).double() - ab64).abs().max()
    assert err_fast < 0.1 and err_fast < 10 * err_exact  # ab units; measured 0.02-0.04 and 2-4x
    errors = layer_errors(model, winograd_inference(model), L)
    assert len(errors) == 11 and max(errors.values()) < 1e-3  # activations of order 10


def test_only_eligible_convolutions_are_replaced_and_the_original_is_untouched(colorizer):
    model, _ = colorizer
    model.train()
    try:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fast = winograd_inference(model)
        assert not fast.training and model.training
    finally:
        model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    replaced = {name for name, m in fast.named_modules() if isinstance(m, WinogradConv2d)}
    # width 0.25: blocks 4-7 have 128 channels; block 4's first conv has 64 inputs, blocks 1-3 and 8 fewer
    assert replaced == {f"block{b}.{i}" for b in (4, 5, 6, 7) for i in (0, 2, 4)} - {"block4.0"}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and name not in replaced:
            kept = fast.get_submodule(name)
            assert type(kept) is type(m) and kept.weight is not m.weight and torch.equal(kept.weight, m.weight)
    assert fast.get_submodule("block5.0").dilation == (2, 2)
    for conv in (nn.Conv2d(256, 256, 3, stride=2, padding=1), nn.Conv2d(256, 256, 3, groups=2),
                 nn.Conv2d(256, 256, 1), nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"),
                 nn.Conv2d(64, 256, 3), nn.ConvTranspose2d(256, 256, 3)):
        assert not is_eligible(conv)
    assert is_eligible(nn.Conv2d(128, 256, 3, padding=2, dilation=2, bias=False))


def test_inference_network_and_the_cli_switch(tmp_path, colorizer):
    model, _ = colorizer
    fast, exact = inference_network(model), inference_network(model, exact_conv=True)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 11
    assert not any(isinstance(m, WinogradConv2d) for m in exact.modules()) and exact is not model
    photo = Image.fromarray(photo_crops(1, 64, seed=7)[0].permute(1, 2, 0).numpy()).resize((75, 50))
    assert (colorize_rgb(fast, photo, size=64) - colorize_rgb(exact, photo, size=64)).abs().max() <= 1e-3

    photo.save(tmp_path / "a.png")
    atomic_torch_save(model_checkpoint(model), tmp_path / "ours.pt")
    outs = []
    for flag in ([], ["--exact-conv"]):
        out = tmp_path / ("exact" if flag else "fast")
        assert main(["colorize", str(tmp_path / "a.png"), "-o", str(out), "--checkpoint", str(tmp_path / "ours.pt"),
                     "--device", "cpu", "--size", "224", *flag]) == 0
        outs.append(np.asarray(Image.open(out / "a.png"), dtype=int))
    assert outs[0].shape == (50, 75, 3) and np.abs(outs[0] - outs[1]).max() <= 1
