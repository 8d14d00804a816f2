"""The networks (paper Fig. 2 and Sec. 3.2), the registry, and the initialisations of Krähenbühl et al. [36]."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from xchannel.color import Q, ab_bins, annealed_mean
from xchannel.convert import alexnet_to_geometry, fold_batchnorm
from xchannel.errors import UserError
from xchannel.models import (MODELS, AlexNet, VGGColorizer, build_model, model_checkpoint, model_from_checkpoint,
                             to_color_input)
from xchannel.models.init import affine_layers, gaussian_init_, kmeans_filters, kmeans_init_, rescale_
from xchannel.utils.io import atomic_torch_save, safe_torch_load


def lab_batch(n: int, size: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth random images in Lab units (L in [0, 100], ab in [-100, 100])."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 8 + 1, size // 8 + 1, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.rand(n, channels, size, size, generator=g)
    scale = torch.tensor([100.0, 200.0, 200.0][:channels]).view(1, -1, 1, 1)
    shift = torch.tensor([0.0, -100.0, -100.0][:channels]).view(1, -1, 1, 1)
    return x.clamp(0, 1) * scale + shift


def randomise_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(0.2 * torch.randn(c, generator=g))
    return model


# --------------------------------------------------------------------------------------------------------------
# VGG colorizer (Fig. 2)


def test_vgg_layout_is_the_released_network():
    m = VGGColorizer()
    convs = [(n, c) for n, c in m.named_modules() if isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))]
    # (in, out, kernel, stride, dilation) of every convolution, blocks 1-8 then the classifier
    expected = ([(1, 64, 3, 1, 1), (64, 64, 3, 2, 1), (64, 128, 3, 1, 1), (128, 128, 3, 2, 1),
                 (128, 256, 3, 1, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2, 1)]
                + [(256, 512, 3, 1, 1)] + [(512, 512, 3, 1, 1)] * 2
                + [(512, 512, 3, 1, 2)] * 6 + [(512, 512, 3, 1, 1)] * 3
                + [(512, 256, 4, 2, 1), (256, 256, 3, 1, 1), (256, 256, 3, 1, 1), (256, Q, 1, 1, 1)])
    got = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.dilation[0]) for _, c in convs]
    assert got == expected
    assert all(c.bias is not None for _, c in convs)
    assert all(c.padding[0] == c.dilation[0] for _, c in convs if c.kernel_size[0] == 3)  # "same" padding
    assert isinstance(m.block8[0], nn.ConvTranspose2d) and m.block8[0].padding == (1, 1)
    # BatchNorm closes blocks 1-7 (after the last ReLU), block 8 has none
    for i in range(1, 8):
        block = getattr(m, f"block{i}")
        assert isinstance(block[-1], nn.BatchNorm2d) and isinstance(block[-2], nn.ReLU)
        assert sum(isinstance(x, nn.BatchNorm2d) for x in block) == 1
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.block8)
    assert torch.equal(m.ab_projection, ab_bins())


def test_vgg_shapes_full_width_and_reduced_width():
    # full width on the meta device: shapes only, no arithmetic
    with torch.device("meta"):
        m = VGGColorizer()
        L = torch.empty(1, 1, 256, 256)
        assert m(L).shape == (1, 313, 64, 64)
        assert m.predict_ab(L).shape == (1, 2, 256, 256)
    # the same shapes with real arithmetic at a quarter of the width
    small = VGGColorizer(width=0.25, seed=0).eval()
    L = lab_batch(1, 256)
    with torch.no_grad():
        logits = small(L)
        ab = small.predict_ab(L)
    assert logits.shape == (1, 313, 64, 64) and small.output_size(256) == 64
    assert ab.shape == (1, 2, 256, 256)
    assert small.block4[0].out_channels == 128 and small.classifier.in_channels == 64
    # predict_ab is the annealed mean (Eq. 5, T = 0.38) upsampled by 4
    expect = F.interpolate(annealed_mean(logits, 0.38), scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(ab, expect, atol=1e-5)
    feats = small.features(L, ("block3", "block7"))
    assert feats["block3"].shape == (1, 64, 32, 32) and feats["block7"].shape == (1, 128, 32, 32)


def test_vgg_seed_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = VGGColorizer(width=0.125, seed=7), VGGColorizer(width=0.125, seed=7)
    after = torch.rand(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(before, after)


# --------------------------------------------------------------------------------------------------------------
# AlexNet (Sec. 3.2)


def test_alexnet_caffenet_layers_at_full_width():
    m = AlexNet(geometry="pretext", seed=0)
    spec = {  # out, in per group, kernel, stride, groups
        "conv1": (96, 1, 11, 4, 1), "conv2": (256, 48, 5, 1, 2), "conv3": (384, 256, 3, 1, 1),
        "conv4": (384, 192, 3, 1, 2), "conv5": (256, 192, 3, 1, 2),
    }
    for name, (o, i, k, s, g) in spec.items():
        conv = getattr(m, name).conv
        assert tuple(conv.weight.shape) == (o, i, k, k) and conv.stride == (s, s) and conv.groups == g
        assert isinstance(getattr(m, name).bn, nn.BatchNorm2d)
    assert m.conv1.conv.padding == (5, 5)
    assert (m.pool5.stride, m.pool5.padding) == (1, 1)
    assert tuple(m.fc6.fc.weight.shape) == (4096, 256, 6, 6)
    assert m.fc6.fc.dilation == (2, 2) and m.fc6.fc.padding == (5, 5)
    assert tuple(m.fc7.fc.weight.shape) == (4096, 4096, 1, 1) and tuple(m.fc8.fc.weight.shape) == (313, 4096, 1, 1)
    t = AlexNet(geometry="transfer", seed=0)
    assert t.conv1.conv.padding == (0, 0) and (t.pool5.stride, t.pool5.padding) == (2, 0)
    assert isinstance(t.fc6.fc, nn.Linear) and tuple(t.fc6.fc.weight.shape) == (4096, 9216)


def test_alexnet_transfer_shapes_at_227():
    m = AlexNet(geometry="transfer", width=0.25, seed=0).eval()
    x = lab_batch(2, 227)
    f = m.features(x, ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7"))
    sizes = {k: tuple(v.shape[2:]) for k, v in f.items()}
    assert sizes == {"conv1": (55, 55), "pool1": (27, 27), "conv2": (27, 27), "pool2": (13, 13),
                     "conv3": (13, 13), "conv4": (13, 13), "conv5": (13, 13), "pool5": (6, 6),
                     "fc6": (), "fc7": ()}
    assert f["conv1"].shape[1] == 24 and f["fc7"].shape == (2, 1024)
    with torch.no_grad():
        assert m(x).shape == (2, 313, 1, 1)
    assert m.output_size(227) == 1
    with pytest.raises(ValueError, match="227"):
        m(lab_batch(2, 180))


def test_alexnet_pretext_head_geometry():
    m = AlexNet(width=0.125, seed=0).eval()
    assert (m.head_stride, m.head_offset) == (16, 0.0)
    for size in (64, 176, 177, 180):
        with torch.no_grad():
            logits = m(lab_batch(1, size))
        assert logits.shape[1:] == (313, m.output_size(size), m.output_size(size))
    assert m.output_size(180) == 12
    assert m.head_pixels(180).tolist() == [16 * i for i in range(12)]
    # Cell i is centred on pixel 16 i: at 177 px the 12 centres 0 ... 176 are mirror images of each other, so
    # with left-right symmetric filters a mirrored input must give exactly mirrored logits.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(mod.weight + mod.weight.flip(-1))
    x = lab_batch(1, 177)
    with torch.no_grad():
        a, b = m(x), m(x.flip(-1))
    assert a.shape[-1] == 12
    assert torch.allclose(a.flip(-1), b, atol=1e-5 * a.abs().max())
    ab = m.predict_ab(x)
    assert ab.shape == (1, 2, 177, 177)
    cells = annealed_mean(a, 0.38)
    assert torch.allclose(ab[..., ::16, ::16], cells, atol=1e-4)  # each cell's ab sits on its centre pixel


def test_features_stop_after_deepest_layer_and_can_resume():
    m = AlexNet(width=0.125, seed=0).eval()
    called = []
    m.fc6.register_forward_hook(lambda *_: called.append("fc6"))
    x = lab_batch(2, 64)
    f = m.features(x, ("conv3", "conv5"))
    assert set(f) == {"conv3", "conv5"} and not called
    assert (f["conv5"] >= 0).all()  # post-ReLU
    g = m.features(f["conv5"], ("fc7",), from_layer="conv5")
    with torch.no_grad():
        assert torch.allclose(g["fc7"], m.features(x, ("fc7",))["fc7"])
    with pytest.raises(UserError, match="known layers"):
        m.features(x, ("conv9",))


def test_color_variant_equals_gray_model_for_any_ab():
    gray = randomise_bn_(AlexNet(width=0.125, seed=3), seed=1).eval()
    from_gray = to_color_input(gray).eval()
    fresh_gray = AlexNet(width=0.125, seed=5).eval()
    fresh_color = AlexNet(in_channels=3, width=0.125, seed=5).eval()
    assert torch.count_nonzero(fresh_color.conv1.conv.weight[:, 1:]) == 0
    lab = lab_batch(2, 64, channels=3, seed=2)
    lab_other_ab = torch.cat([lab[:, :1], lab_batch(2, 64, channels=3, seed=9)[:, 1:]], dim=1)
    layers = AlexNet.layer_names
    with torch.no_grad():
        for g_model, c_model in ((gray, from_gray), (fresh_gray, fresh_color)):
            ref = g_model.features(lab[:, :1], layers)
            for inp in (lab, lab_other_ab):
                got = c_model.features(inp, layers)
                for name in layers:
                    assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), name
            assert torch.allclose(c_model(lab), g_model(lab[:, :1]), atol=1e-5)
    # the "Gaussian, color input" baseline draws ab weights too
    assert torch.count_nonzero(AlexNet(in_channels=3, width=0.125, seed=5, zero_init_ab=False)
                               .conv1.conv.weight[:, 1:]) > 0


def test_geometry_conversion_is_the_a_trous_identity():
    pretext = randomise_bn_(AlexNet(width=0.125, seed=0), seed=2).eval()
    transfer = alexnet_to_geometry(pretext, "transfer").eval()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert torch.equal(getattr(pretext, name).conv.weight, getattr(transfer, name).conv.weight)
    assert torch.equal(transfer.fc6.fc.weight, pretext.fc6.fc.weight.reshape(512, -1))
    # On the same 13x13 conv5 map, pretext (pool5 stride 1 pad 1, fc6 6x6 dilation 2 pad 5) at cell (6, 6)
    # equals transfer (pool5 stride 2, fc6 over the 6x6 map) -- through fc7 and the fc8 logits.
    conv5 = torch.rand(2, 32, 13, 13)
    with torch.no_grad():
        p = pretext.features(conv5, ("fc6", "fc7", "fc8"), from_layer="conv5")
        t = transfer.features(conv5, ("fc6", "fc7", "fc8"), from_layer="conv5")
    assert p["fc6"].shape[-2:] == (13, 13) and t["fc6"].shape == (2, 512)
    for name in ("fc6", "fc7", "fc8"):
        assert torch.allclose(p[name][:, :, 6, 6], t[name], atol=1e-5, rtol=1e-4), name
    back = alexnet_to_geometry(transfer, "pretext")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), pretext.state_dict().values()))


def test_batchnorm_folding_is_exact_in_eval_mode():
    for geometry, size in (("transfer", 227), ("pretext", 96)):
        m = randomise_bn_(AlexNet(width=0.125, geometry=geometry, seed=1), seed=4).eval()
        folded = fold_batchnorm(m)
        assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in folded.modules())
        x = lab_batch(2, size)
        with torch.no_grad():
            a = m.features(x, ("conv5", "fc7", "fc8"))
            b = folded.features(x, ("conv5", "fc7", "fc8"))
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), (geometry, name)


# --------------------------------------------------------------------------------------------------------------
# Registry and checkpoints


def test_registry_and_checkpoint_round_trip(tmp_path):
    assert set(MODELS) == {"vgg_colorizer", "alexnet"}
    m = build_model("alexnet", width=0.125, in_channels=3, geometry="transfer")
    assert isinstance(m, AlexNet) and m.layer_names[-1] == "fc7"
    with pytest.raises(UserError, match="known models"):
        build_model("resnet")
    with pytest.raises(UserError, match="widht"):
        build_model("vgg_colorizer", widht=0.5)
    path = tmp_path / "m.pt"
    atomic_torch_save(model_checkpoint(m, step=3), path)
    ckpt = safe_torch_load(path)
    assert ckpt["step"] == 3
    back = model_from_checkpoint(ckpt, where=str(path))
    assert back.hparams == m.hparams
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
    ckpt["hparams"]["width"] = 0.25
    with pytest.raises(UserError, match=str(path)):
        model_from_checkpoint(ckpt, where=str(path))


# --------------------------------------------------------------------------------------------------------------
# Initialisations


def test_gaussian_init_stds_and_zero_bias():
    m = AlexNet(width=0.25, seed=0)
    gaussian_init_(m, seed=1)
    for name, layer in affine_layers(m):
        expected = 0.005 if name.startswith("fc") else 0.01
        assert abs(layer.weight.std().item() / expected - 1) < 0.05, name
        assert torch.count_nonzero(layer.bias) == 0


def test_kmeans_filters_find_the_clusters():
    g = torch.Generator().manual_seed(0)
    centres = 5.0 * torch.randn(4, 8, generator=g)
    labels = torch.arange(2000) % 4
    data = centres[labels] + 0.3 * torch.randn(2000, 8, generator=g)
    # exact whitening (eigh), and the randomised top-4 directions used when d exceeds max_whiten_dims
    for cap in (2048, 4):
        w, b = kmeans_filters(data, 4, torch.Generator().manual_seed(1), iters=20, max_whiten_dims=cap)
        winner = (data @ w.T + b).argmax(1)
        # every true cluster maps to one filter, and different clusters to different filters
        mapping = {int(c): torch.mode(winner[labels == c]).values.item() for c in range(4)}
        assert len(set(mapping.values())) == 4
        purity = sum((winner[labels == c] == mapping[c]).float().mean().item() for c in range(4)) / 4
        assert purity > 0.99


def test_kmeans_init_gives_zero_mean_unit_variance_outputs():
    m = AlexNet(width=0.125, seed=0)
    x = lab_batch(16, 64, seed=3)
    kmeans_init_(m, x, max_patches=4000, iters=5, progress=False)
    assert m.training  # mode restored
    m.eval()
    outputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, i, o, n=name: outputs.__setitem__(n, o))
             for name, layer in affine_layers(m)]
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == 8
    for name, z in outputs.items():
        dims = [0, 2, 3] if z.ndim == 4 else [0]
        assert torch.allclose(z.mean(dims), torch.zeros(z.shape[1]), atol=1e-3), name
        assert torch.allclose(z.var(dims, unbiased=False), torch.ones(z.shape[1]), atol=1e-3), name
    # conv1's filters are distinct whitened-patch centroids, not copies
    w = m.conv1.conv.weight.flatten(1)
    cos = F.normalize(w, dim=1) @ F.normalize(w, dim=1).T
    assert (cos - torch.eye(len(w))).abs().max() < 0.99


def test_rescale_equalises_learning_rates_and_preserves_function():
    m = fold_batchnorm(AlexNet(width=0.125, geometry="transfer", seed=0))
    with torch.no_grad():
        for _, layer in affine_layers(m):
            layer.bias.normal_(0.0, 0.05)
    x = lab_batch(4, 227, seed=5)
    with torch.no_grad():
        before = m(x)
    info = rescale_(m, x, iters=5)
    assert info["log_ratio_spread_before"] > 1.0  # Gaussian init: rates differ by orders of magnitude
    assert info["log_ratio_spread_after"] < 0.01
    assert info["iterations"] == 1  # one step suffices for a ReLU / max-pool network
    with torch.no_grad():
        after = m(x)
    assert abs(info["output_scale"] - 1.0) < 1e-6  # all layers rescaled: the product of the scales is 1
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-6 * after.abs().max())
    partial = rescale_(m, x, layers=("conv1", "conv2", "fc7"), iters=5)
    assert partial["iterations"] == 0  # already balanced
    with pytest.raises(UserError, match="fold"):
        rescale_(AlexNet(width=0.125, seed=0), x)


def test_kmeans_init_accepts_layer_subsets_in_forward_order():
    m = AlexNet(width=0.125, seed=0)
    fc8_before = m.fc8.fc.weight.clone()
    kmeans_init_(m, [lab_batch(4, 64, seed=1), lab_batch(4, 64, seed=2)], layers=("conv2", "conv1"),
                 max_patches=2000, iters=3, progress=False)
    assert torch.equal(m.fc8.fc.weight, fc8_before)
    with pytest.raises(UserError, match="affine layers"):
        kmeans_init_(m, lab_batch(2, 64), layers=("conv7",), progress=False)
    assert math.isfinite(float(m.conv2.conv.weight.detach().sum()))
