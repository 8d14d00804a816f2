"""Instance discrimination (NPID) and its L/ab form (CMC): the memory bank's math, the losses against hand
computations, the kNN validation, the image index the bank is addressed by, resume to the bit with the bank, and
the export the benchmarks read.

* the bank's update is v <- (m v + (1 - m) f) / |m v + (1 - m) f| on the step's rows only, rows stay unit vectors;
* NCE: Z = N mean(exp(v . f / tau)) on the first batch, then -log h(own) - sum log(1 - h(noise)) with
  h = P / (P + K / N), P = exp(v . f / tau) / Z, against a hand computation in plain Python; the softmax over the
  whole bank and over sampled rows against -log of the own row's share;
* the weighted kNN votes exp(s / tau) per neighbour's class (a hand case where the plain majority is wrong);
* the colour jitter is torchvision's brightness, contrast and saturation with the factors drawn from the step; the
  random-resized training crop (``data.scale``) covers the asked share of the image;
* every item's ``index`` is its position in the run's (screened) training list, so the bank row is the image's;
* a run stopped after its step-2 checkpoint, in the middle of step 3, and resumed ends on the very weights, banks
  and Z of the uninterrupted run (NPID with NCE, CMC with two banks);
* the CMC export is one Lab network whose L half ignores ab, and it loads as a benchmark encoder.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import write_image_folder

from xchannel import color as C
from xchannel.pretext import get_task
from xchannel.pretext import memory as M
from xchannel.pretext.base import step_generator
from xchannel.pretext.instance import InstanceTask
from xchannel.train import checkpoint as ckpt
from xchannel.train.config import TrainConfig
from xchannel.train.engine import train
from xchannel.utils.config import build_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"), n_per_class=4)


def _bank(rows: list[list[float]]) -> M.MemoryBank:
    bank = M.MemoryBank(len(rows), len(rows[0]), 0, CPU)
    bank.weight = F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)
    return bank


def test_bank_update_is_the_momentum_update_of_the_steps_rows_and_keeps_unit_rows():
    bank = M.MemoryBank(6, 4, seed=3, device=CPU)
    assert torch.allclose(bank.weight.norm(dim=1), torch.ones(6))
    assert torch.equal(bank.weight, M.MemoryBank(6, 4, seed=3, device=CPU).weight)  # a function of the seed
    before = bank.weight.clone()
    f = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]]), dim=1)
    index = torch.tensor([4, 1])
    bank.update(index, f, momentum=0.5)
    for row, i in enumerate(index.tolist()):
        mixed = [0.5 * float(v) + 0.5 * float(w) for v, w in zip(before[i], f[row])]
        norm = math.sqrt(sum(x * x for x in mixed))
        assert bank.weight[i].tolist() == pytest.approx([x / norm for x in mixed], abs=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank.weight[untouched], before[untouched])
    assert torch.allclose(bank.weight.norm(dim=1), torch.ones(6))
    bank.update(index, f, momentum=0.0)  # m = 0: the rows become the embeddings
    torch.testing.assert_close(bank.weight[index], f)


def test_nce_and_softmax_losses_equal_a_hand_computation():
    rows = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]]
    bank = _bank(rows)
    f = F.normalize(torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.1, 1.0]]), dim=1)
    index, noise, tau = torch.tensor([0, 2]), torch.tensor([[1, 4], [3, 3]]), 0.5
    v = bank.weight.tolist()
    fv = f.tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    n, k = 5, 2
    e = [[math.exp(dot(v[j], fv[b]) / tau) for j in [int(index[b])] + noise[b].tolist()] for b in range(2)]
    z = n * sum(sum(r) for r in e) / (2 * (k + 1))  # N times the mean over the batch's rows
    expect = 0.0
    for b in range(2):
        p = [x / z for x in e[b]]
        expect -= math.log(p[0] / (p[0] + k / n)) + sum(math.log((k / n) / (q + k / n)) for q in p[1:])
    expect /= 2
    logits = M.contrast(f, bank, index, noise, tau)
    assert M.nce_constant(logits, n) == pytest.approx(z, rel=1e-6)
    assert float(M.nce_loss(logits, z, n)) == pytest.approx(expect, rel=1e-5)
    # softmax over the whole bank: -log exp(v_i f / tau) / sum_j exp(v_j f / tau)
    full = M.contrast(f, bank, index, None, tau)
    want = -sum(math.log(math.exp(dot(v[int(index[b])], fv[b]) / tau) /
                         sum(math.exp(dot(v[j], fv[b]) / tau) for j in range(n))) for b in range(2)) / 2
    assert float(M.softmax_loss(full, index, sampled=False)) == pytest.approx(want, rel=1e-5)
    want = -sum(math.log(e[b][0] / sum(e[b])) for b in range(2)) / 2  # over the own row and the sampled ones
    assert float(M.softmax_loss(logits, index, sampled=True)) == pytest.approx(want, rel=1e-5)


def test_weighted_knn_votes_with_exp_similarity_over_temperature():
    sim = torch.tensor([[0.9, 0.2, 0.2, 0.2, -1.0]])  # one close neighbour of class 1, three far ones of class 0
    labels = torch.tensor([1, 0, 0, 0, 1])
    assert M.weighted_knn(sim, labels, k=4, temperature=0.1, classes=2).tolist() == [1]  # e^9 > 3 e^2
    assert M.weighted_knn(sim, labels, k=4, temperature=10.0, classes=2).tolist() == [0]  # nearly a plain vote
    assert M.weighted_knn(sim, torch.tensor([-1, 0, 0, 0, 1]), k=4, temperature=0.1, classes=2).tolist() == [0]
    assert M.majority_share(torch.tensor([0, 1, 1, -1, 1])) == 0.75


def test_colour_jitter_is_torchvisions_brightness_contrast_saturation_with_the_drawn_factors():
    from torchvision.transforms import functional as TF

    from xchannel.pretext.augment import colour_jitter

    rgb = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    got = colour_jitter(rgb, 0.4, torch.Generator().manual_seed(1))
    f = 1 + (torch.rand((3, 3, 1, 1, 1), generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.4
    for i in range(3):
        want = TF.adjust_brightness(rgb[i], float(f[0, i]))
        want = TF.adjust_contrast(want, float(f[1, i]))
        want = TF.adjust_saturation(want, float(f[2, i]))
        torch.testing.assert_close(got[i], want, rtol=0, atol=2e-6)
    assert torch.equal(colour_jitter(rgb, 0.0, None), rgb)


def test_random_resized_training_crop_covers_the_asked_share_of_the_image():
    from PIL import Image

    from xchannel.data.images import RandomCropMirror

    rows = torch.arange(90).view(90, 1).expand(90, 90)
    img = Image.fromarray(torch.stack([rows, rows.T, torch.zeros_like(rows)], -1).to(torch.uint8).numpy())
    whole = RandomCropMirror(30, scale=(1.0, 1.0), mirror=False)
    torch.manual_seed(0)
    out = whole(img).long()  # all of the image, scaled to 30 px: rows and columns 0 ... 89 in 3 px steps
    assert out.shape == (3, 30, 30) and abs(int(out[0, 0, 0]) - 1) <= 1 and abs(int(out[0, -1, 0]) - 88) <= 1
    part = RandomCropMirror(30, scale=(0.1, 0.1), mirror=False)
    for seed in range(5):  # a tenth of the area: the box spans about sqrt(0.1 x 90^2 x r) rows for r in 3/4 ... 4/3
        torch.manual_seed(seed)
        crop = part(img).long()
        span_rows = int(crop[0, -1, 0] - crop[0, 0, 0]) + 1
        span_cols = int(crop[1, 0, -1] - crop[1, 0, 0]) + 1
        assert 0.1 * 0.8 <= span_rows * span_cols / 90 ** 2 <= 0.1 * 1.25, (span_rows, span_cols)
        torch.manual_seed(seed)
        assert torch.equal(part(img).long(), crop)  # the item's seeded generator decides
    with pytest.raises(ValueError, match="area share"):
        RandomCropMirror(30, scale=(0.5, 0.2))


def _task(*sets: str, width: float = 0.0625) -> InstanceTask:
    cfg = build_config(TrainConfig, None, ["task=instance", "model.name=alexnet", f"model.width={width}", *sets])
    return get_task("instance")(cfg, CPU)


def test_prepare_draws_negatives_and_augmentation_from_the_step_and_checks_indices():
    task = _task("pretext.negatives=7", "pretext.gray=0.5")
    task.set_training_data(10, [0, 1] * 5)
    images = (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    batch = {"image": images, "index": torch.tensor([3, 0, 9, 5])}
    a = task.prepare(batch, step_generator(1, 2, 0, CPU))
    b = task.prepare(batch, step_generator(1, 2, 0, CPU))
    c = task.prepare(batch, step_generator(1, 3, 0, CPU))
    assert a.negatives.shape == (4, 7) and int(a.negatives.max()) < 10 and torch.equal(a.index, batch["index"])
    assert torch.equal(a.negatives, b.negatives) and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    with pytest.raises(Exception, match=r"indices must lie in 0 \.\.\. 9"):
        task.prepare({"image": images, "index": torch.tensor([3, 0, 10, 5])}, step_generator(1, 2, 0, CPU))
    halves = _task("pretext.views=lab-halves", "pretext.loss=softmax", "pretext.negatives=0", width=0.125)
    halves.set_training_data(10, [0] * 10)
    h = halves.prepare(batch, step_generator(1, 2, 0, CPU))
    lab = C.rgb_to_lab(images)
    assert h.negatives is None and torch.equal(h.x["L"], lab[:, :1]) and torch.equal(h.x["ab"], lab[:, 1:])


def test_each_item_carries_its_position_in_the_screened_training_list(tmp_path, folder, monkeypatch):
    """The bank row of a batch item is its image's: ``index`` is the position in the screened list the run
    stores (a bad file, left out by the screen, shifts the positions after it)."""
    from xchannel.data.screen import load_screens
    from xchannel.train.engine import SCREEN_FILE

    (folder / "bar" / "000_broken.jpg").write_bytes(b"not an image")
    seen: list[tuple[int, str]] = []
    real = InstanceTask.prepare

    def record(self, batch, gen=None):
        seen.extend(zip(batch["index"].tolist(), batch["path"]))
        return real(self, batch, gen)

    monkeypatch.setattr(InstanceTask, "prepare", record)
    try:
        cfg = _config(tmp_path, folder, steps=3, data={"val": None})
        train(cfg, progress=False)
    finally:
        (folder / "bar" / "000_broken.jpg").unlink()
    samples = load_screens(Path(cfg.out) / SCREEN_FILE)["train"].samples
    assert len(samples) == 8 and not any("broken" in p for p, _ in samples)
    assert len(seen) == 12 and all(samples[i][0] == path for i, path in seen)


def _config(tmp: Path, images: Path, **over) -> TrainConfig:
    base = {"task": "instance", "model": {"name": "alexnet", "width": 0.0625},
            "data": {"train": str(images), "val": str(images), "crop": 227, "batch_size": 4, "workers": 0,
                     "val_images": 8},
            "pretext": {"negatives": 8}, "steps": 4, "checkpoint_every": 2, "val_every": 100, "log_every": 1,
            "deterministic": True, "seed": 5, "out": str(tmp / "run"), "optim": {"lr": 1e-2}, "device": "cpu"}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(base))
    return build_config(TrainConfig, tmp / "cfg.yaml")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("views", ["image", "lab-halves"])
def test_a_run_stopped_mid_step_resumes_to_the_very_weights_bank_and_z(tmp_path, folder, monkeypatch, views):
    over = {"pretext": {"negatives": 8, "views": views}}
    if views == "lab-halves":
        over["model"] = {"width": 0.125}
    ref = train(_config(tmp_path / "ref", folder, **over), progress=False)
    assert ref["status"] == "finished" and 0 <= ref["val"]["knn_accuracy"] <= 1
    want = torch.load(ckpt.list_checkpoints(tmp_path / "ref" / "run")[0][1], weights_only=True)
    cfg = _config(tmp_path / "cut", folder, **over)
    calls = {"n": 0}
    real = InstanceTask.after_step

    def killed_in_step_3(self, batch):  # the optimiser has stepped, the bank not yet: the step is half done
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed
        return real(self, batch)

    with monkeypatch.context() as m:
        m.setattr(InstanceTask, "after_step", killed_in_step_3)
        with pytest.raises(_Killed):
            train(cfg, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(Path(cfg.out))] == [2]
    assert train(cfg, resume=True, progress=False)["status"] == "finished"
    got = torch.load(ckpt.list_checkpoints(Path(cfg.out))[0][1], weights_only=True)
    assert got["step"] == want["step"] == 4
    for k, v in want["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k
    banks = ["image"] if views == "image" else ["L", "ab"]
    assert set(want["task_state"]) == {f"{part}.{b}" for b in banks for part in ("weight", "z")}
    for k, v in want["task_state"].items():
        assert torch.equal(v, got["task_state"][k]), k
    fresh = get_task("instance")(cfg, CPU)
    fresh.set_training_data(8, [0] * 8)  # the banks the run started from: every row has moved since (2 epochs)
    for b in banks:
        assert math.isfinite(float(got["task_state"][f"z.{b}"]))  # NCE's constant, estimated at step 1
        assert bool((got["task_state"][f"weight.{b}"] != fresh.banks[b].weight).any(1).all()), b


def test_cmc_export_is_a_lab_network_whose_L_half_ignores_ab_and_loads_as_an_encoder(tmp_path):
    from xchannel.features.encoders import load_encoder
    from xchannel.utils.io import atomic_torch_save

    task = _task("pretext.views=lab-halves", width=0.125)
    model = task.build_model().eval()
    entries = task.export(model)
    assert set(entries["heads"]) == {"L.fc8", "ab.fc8"} and entries["heads"]["L.fc8"]["fc.weight"].shape[0] == 128
    assert entries["backbone"]["input_space"] == "Lab" and entries["backbone"]["hparams"]["width"] == 0.125
    assert entries["pretrained_stages"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    merged = task.backbone(model).eval()
    g = torch.Generator().manual_seed(0)
    x = C.rgb_to_lab(torch.rand(2, 3, 227, 227, generator=g))
    y = x.clone()
    y[:, 1:] = torch.randn(y[:, 1:].shape, generator=g) * 30
    with torch.no_grad():
        fx, fy = merged.features(x, ["conv5", "fc7"]), merged.features(y, ["conv5", "fc7"])
        own = model.towers["L"].features(x[:, :1], ["conv5", "fc7"])
    for t in fx:
        half = fx[t].shape[1] // 2
        assert torch.equal(fx[t][:, :half], fy[t][:, :half]), t
        torch.testing.assert_close(fx[t][:, :half], own[t], rtol=1e-4, atol=1e-5)
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({**entries, "step": 1}, path)
    enc = load_encoder(str(path))
    assert enc.input_mode == "color" and enc.info["task"] == "instance" and enc.info["reinitialised"] == []
    with torch.no_grad():
        fc7 = enc.features(torch.rand(1, 3, 227, 227, generator=g), ["fc7"])["fc7"]
    assert fc7.shape == (1, 512)  # fc 4096 x 0.125
