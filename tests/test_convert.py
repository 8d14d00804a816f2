"""Importing the authors' released ECCV16 colorizer, and AlexNet checkpoint conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from xchannel.color import ab_bins
from xchannel.convert import (AB_NORM, T_FOLDED, alexnet_to_geometry, convert_checkpoint, fold_batchnorm,
                              from_official_eccv16, load_official_eccv16, to_official_eccv16)
from xchannel.errors import UserError
from xchannel.models import AlexNet, VGGColorizer, model_checkpoint, model_from_checkpoint
from xchannel.utils.io import atomic_torch_save, safe_torch_load


class ReleasedECCV16(nn.Module):
    """The released forward pass, written from its description: blocks ``model1`` ... ``model8`` as
    nn.Sequential of conv / ReLU / BatchNorm, softmax over the 313 logits, the 1x1 ``model_out`` conv (313 -> 2, no
    bias), bilinear x4 upsampling (align_corners=False), times 110; the input is (L - 50) / 100."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, n: int, last_stride: int = 1, dil: int = 1) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(n):
                s = last_stride if i == n - 1 else 1
                layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, s, padding=dil, dilation=dil),
                           nn.ReLU(True)]
            return nn.Sequential(*layers, nn.BatchNorm2d(c_out))

        self.model1 = block(1, 64, 2, 2)
        self.model2 = block(64, 128, 2, 2)
        self.model3 = block(128, 256, 3, 2)
        self.model4 = block(256, 512, 3)
        self.model5 = block(512, 512, 3, dil=2)
        self.model6 = block(512, 512, 3, dil=2)
        self.model7 = block(512, 512, 3)
        self.model8 = nn.Sequential(
            nn.ConvTranspose2d(512, 256, 4, 2, 1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(256, 313, 1),
        )
        self.softmax = nn.Softmax(dim=1)
        self.model_out = nn.Conv2d(313, 2, 1, bias=False)
        self.upsample4 = nn.Upsample(scale_factor=4, mode="bilinear")

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = (L - 50.0) / 100.0
        for i in range(1, 9):
            x = getattr(self, f"model{i}")(x)
        return self.upsample4(self.model_out(self.softmax(x))) * 110.0


def random_release(seed: int = 0) -> ReleasedECCV16:
    """A release-shaped network with random weights, non-trivial BatchNorm statistics, and peaked softmaxes."""
    torch.manual_seed(seed)
    net = ReleasedECCV16()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # running statistics := those of the batch below
        net.train()(torch.rand(2, 1, 64, 64) * 100)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.add_(0.05 * torch.randn_like(m.running_mean))
        # logits with a standard deviation of 3 (the released net's softmax input has a comparable spread):
        # peaked distributions, far from a uniform softmax
        L = torch.rand(2, 1, 64, 64) * 100
        x = (L - 50.0) / 100.0
        for i in range(1, 9):
            x = getattr(net, f"model{i}")(x)
        net.model8[6].weight.mul_(3.0 / x.std())
        net.model8[6].bias.mul_(3.0 / x.std())
        # model_out holds the bin centres / 110 in the release: perturb them, so the import must read the file
        net.model_out.weight.copy_((ab_bins() / 110.0 + 0.1 * torch.randn(313, 2)).T[:, :, None, None])
    return net.eval()


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    net = random_release()
    path = tmp_path_factory.mktemp("release") / "colorization_release_v2-9b330a0b.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_released_keys_are_the_documented_ones(release_file):
    net, _ = release_file
    keys = set(net.state_dict())
    for k in ("model1.0.weight", "model1.2.weight", "model1.4.running_var", "model3.4.weight", "model3.6.weight",
              "model8.0.weight", "model8.2.bias", "model8.4.weight", "model8.6.bias", "model_out.weight"):
        assert k in keys
    assert net.state_dict()["model8.6.weight"].shape == (313, 256, 1, 1)


def test_import_reproduces_the_released_forward_pass(release_file):
    net, path = release_file
    model = from_official_eccv16(safe_torch_load(path), where=str(path))
    assert model.width == 1.0 and not model.training
    L = torch.rand(2, 1, 64, 64) * 100
    L[1] = torch.linspace(0, 100, 64).view(1, 64, 1)  # a smooth ramp too
    with torch.no_grad():
        expect = net(L)
        got = model.predict_ab(L)
        # The same weights evaluated in float64: the forward passes agree to 1e-4 (the only difference left is
        # the float32 rounding of the folded 0.38 x model8.6 weights).
        expect64 = net.double()(L.double())
        got64 = model.double().predict_ab(L.double())
    net.float(), model.float()
    assert got.shape == expect.shape == (2, 2, 64, 64)
    assert expect.std() > 5.0  # the comparison is not between two near-constant maps
    assert torch.allclose(got64, expect64, atol=1e-4, rtol=0)
    # In float32 the two passes differ by float32 rounding of ~30-unit logits, as much as the reference differs
    # from its own float64 evaluation.
    noise = (expect.double() - expect64).abs().max()
    assert (got.double() - expect64).abs().max() < max(5 * noise, 1e-4)
    assert torch.allclose(got, expect, atol=2e-3, rtol=0)
    # the 313-way conv carries the folded temperature: softmax(logits / 0.38) is the released softmax
    state = net.state_dict()
    assert torch.allclose(model.classifier.weight, state["model8.6.weight"] * T_FOLDED)
    assert torch.allclose(model.ab_projection, state["model_out.weight"][:, :, 0, 0].T * AB_NORM)
    assert torch.equal(load_official_eccv16(path).block5[0].weight, state["model5.0.weight"])


def test_export_round_trip(release_file):
    net, _ = release_file
    original = net.state_dict()
    exported = to_official_eccv16(from_official_eccv16(original))
    assert set(exported) == set(original)
    for k, v in original.items():
        assert torch.allclose(exported[k].to(v.dtype), v, rtol=1e-6, atol=1e-7), k


def test_import_refuses_other_files_clearly(release_file, tmp_path):
    net, _ = release_file
    state = dict(net.state_dict())
    del state["model5.2.weight"]
    with pytest.raises(UserError, match=r"released.pth.*model5\.2\.weight"):
        from_official_eccv16(state, where="released.pth")
    state = dict(net.state_dict())
    state["model1.0.weight"] = state["model1.0.weight"][:32]
    with pytest.raises(UserError, match=r"model1\.0\.bias has shape \(64,\), expected \(32,\)"):
        from_official_eccv16(state)
    with pytest.raises(UserError, match="not the released ECCV16 colorizer"):
        from_official_eccv16({"conv1.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="no such file"):
        load_official_eccv16(tmp_path / "missing.pth")


def test_alexnet_checkpoint_conversion_on_disk(tmp_path):
    torch.manual_seed(0)
    pretext = AlexNet(width=0.125, seed=2)
    with torch.no_grad():
        for m in pretext.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    src, dst = tmp_path / "pretext.pt", tmp_path / "transfer.pt"
    atomic_torch_save(model_checkpoint(pretext), src)
    convert_checkpoint(src, dst, geometry="transfer", fold_bn=True)
    loaded = model_from_checkpoint(safe_torch_load(dst), where=str(dst)).eval()
    assert loaded.hparams["geometry"] == "transfer" and loaded.hparams["batchnorm"] is False
    reference = fold_batchnorm(alexnet_to_geometry(pretext, "transfer"))
    x = torch.rand(2, 1, 227, 227) * 100
    with torch.no_grad():
        assert torch.allclose(loaded.features(x, ("fc7",))["fc7"], reference.features(x, ("fc7",))["fc7"])
        unfolded = alexnet_to_geometry(pretext, "transfer").eval()
        assert torch.allclose(loaded(x), unfolded(x), atol=1e-5, rtol=1e-4)
    atomic_torch_save(model_checkpoint(VGGColorizer(width=0.125)), src)
    with pytest.raises(UserError, match="holds a vgg_colorizer"):
        convert_checkpoint(src, dst, geometry="pretext")
