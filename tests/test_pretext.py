"""The pretext tasks: each task's math, the registry contract, and checkpoints that the benchmarks read unchanged.

What is checked, and why it would fail on a wrong implementation:

* rotation: every prepared input is its source image turned by exactly its label's number of counter-clockwise
  quarter turns (a marker in one corner moves to the corner that rotation puts it in), all four per image in
  RotNet's mode; the one-rotation mode draws its turns from the step's generator (same step, same draws);
* supervised: labels are the folder's classes, the gray network reads L alone (1 input channel);
* the registry: every task builds, trains two steps (its loss falls on a repeated batch), exports a backbone
  without the task head plus its heads and trained stages, and is listed by ``xchannel train --list-tasks``;
  unknown ``pretext`` keys are errors naming them; ``optim.name: sgd`` trains with momentum;
* checkpoints: the fixture written before backbone entries existed loads to the very features it gave then; a
  new colorization checkpoint's backbone gives the features of the whole network; stages a task did not train
  are re-drawn (k-means on the benchmark's images) and the encoder says which; each task's checkpoint runs through
  ``xchannel-probe`` and ``xchannel pascal cls --preset demo`` as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import synthetic_voc, with_task, write_image_folder

from xchannel import color as C
from xchannel.cli import main, probe_main
from xchannel.errors import UserError
from xchannel.features.encoders import load_encoder
from xchannel.pretext import TASKS, get_task
from xchannel.pretext.base import step_generator
from xchannel.train import checkpoint as ckpt
from xchannel.train.config import TrainConfig
from xchannel.train.engine import train
from xchannel.utils.config import build_config
from xchannel.utils.io import atomic_torch_save

FIXTURE = Path(__file__).parent / "fixtures" / "colorization-alexnet-2026-12.pt"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"), n_per_class=4)


def _config(tmp: Path, images: Path, task: str, **over) -> TrainConfig:
    base = with_task({"data": {"train": str(images), "val": str(images), "crop": 64, "batch_size": 4, "workers": 0,
                               "val_images": 4},
                      "steps": 2, "checkpoint_every": 2, "val_every": 2, "log_every": 1, "seed": 1, "out": str(tmp / task),
                      "optim": {"lr": 1e-3}, "device": "cpu"}, task)
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{task}.yaml").write_text(yaml.safe_dump(base))
    return build_config(TrainConfig, tmp / f"{task}.yaml")


#: the validation metric of each task, and the chance level it is reported beside
VALIDATION = {"colorization": ("auc", "gray_auc"), "rotation": ("accuracy", "chance"),
              "supervised": ("accuracy", "chance"), "autoencoder": ("l2", "chance_l2"),
              "splitbrain": ("L_to_ab_accuracy", "L_to_ab_chance"), "jigsaw": ("accuracy", "chance"),
              "context": ("accuracy", "chance"), "instance": ("knn_accuracy", "chance")}

#: the stages each task trains (and the benchmarks read as trained), and the heads its checkpoint holds
ALL_STAGES = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
STAGES = {"jigsaw": ALL_STAGES[:5], "context": ALL_STAGES[:5]}
HEADS = {"splitbrain": {"L_to_ab.fc8", "ab_to_L.fc8"}, "jigsaw": {"head"}, "context": {"head"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folder) -> dict[str, Path]:
    """A two-step checkpoint of every task, validated at its end."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in TASKS:
        cfg = _config(root, folder, task)
        summary = train(cfg, progress=False)
        metric, chance = VALIDATION[task]
        assert summary["val"]["val_images"] == 4 and 0 <= summary["val"][chance] and summary["val"][metric] >= 0
        out[task] = ckpt.list_checkpoints(Path(cfg.out))[0][1]
    return out


def _images(n: int = 3, side: int = 32) -> torch.Tensor:
    """uint8 RGB images, each with a white 4 x 4 marker in its top-left corner on a dark noisy background."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, side, side, generator=g) * 100).to(torch.uint8)
    x[:, :, :4, :4] = 255
    return x


# --------------------------------------------------------------------------------------------------------------
# Task math


def test_rotation_label_is_the_number_of_quarter_turns_of_that_input():
    images = _images()
    lab = C.rgb_to_lab(images)
    corner = {0: (0, 0), 1: (-1, 0), 2: (-1, -1), 3: (0, -1)}  # where k CCW quarter turns take the top-left pixel
    for all_four in (True, False):
        cfg = build_config(TrainConfig, None, ["task=rotation", f"pretext.all_four={str(all_four).lower()}",
                                               "model.name=alexnet"])
        task = get_task("rotation")(cfg, torch.device("cpu"))
        b = task.prepare({"image": images}, step_generator(0, 5, 0, torch.device("cpu")))
        n = images.shape[0]
        assert b.x.shape[0] == (4 * n if all_four else n) and b.y.shape == (b.x.shape[0],)
        if all_four:  # every image in all four rotations
            assert sorted(b.y.tolist()) == sorted([0, 1, 2, 3] * n)
        for i in range(b.x.shape[0]):
            k = int(b.y[i])
            src = lab[i % n]
            assert torch.equal(torch.rot90(b.x[i], -k, dims=(1, 2)), src)
            r, c = corner[k]
            assert b.x[i, 0, r, c] > 99 and b.x[i, 0, 16, 16] < 60  # the white marker, now in that corner
        if not all_four:  # the draws are the step's: the same step draws them again, other steps draw others
            again = task.prepare({"image": images}, step_generator(0, 5, 0, torch.device("cpu"))).y
            others = [task.prepare({"image": images.repeat(4, 1, 1, 1)},
                                   step_generator(0, s, 0, torch.device("cpu"))).y for s in range(6, 9)]
            assert torch.equal(again, b.y) and any(not torch.equal(o[:n], b.y) for o in others)


def test_supervised_labels_are_the_folders_classes_and_gray_reads_L_alone(folder):
    cfg = build_config(TrainConfig, None, ["task=supervised", "model.name=alexnet", "model.width=0.0625",
                                           f"data.train={folder}", "pretext.input=gray"])
    task = get_task("supervised")(cfg, torch.device("cpu"))
    assert task.num_classes() == 2 and task.chance == 0.5
    model = task.build_model()
    assert model.input_space == "L" and model.fc8_outputs == 2
    images = _images(2, 227)
    b = task.prepare({"image": images, "label": torch.tensor([1, 0])})
    assert torch.equal(b.y, torch.tensor([1, 0])) and b.x.shape == (2, 1, 227, 227)
    torch.testing.assert_close(b.x, C.rgb_to_lab(images)[:, :1], rtol=0, atol=1e-4)
    with pytest.raises(UserError, match="labels must lie"):
        task.prepare({"image": images, "label": torch.tensor([-1, 0])})


def test_autoencoder_drops_seeded_pixels_and_regresses_the_clean_lab_at_the_head_cells():
    cfg = build_config(TrainConfig, None, ["task=autoencoder", "model.name=alexnet", "model.width=0.0625",
                                           "pretext.denoise=0.5", "pretext.loss_on=dropped"])
    task = get_task("autoencoder")(cfg, torch.device("cpu"))
    images = _images(4, 64)
    lab = C.rgb_to_lab(images)
    gen = lambda step: step_generator(3, step, 0, torch.device("cpu"))  # noqa: E731
    b = task.prepare({"image": images}, gen(7))
    assert torch.equal(b.kept, task.prepare({"image": images}, gen(7)).kept)  # seeded per step
    assert not torch.equal(b.kept, task.prepare({"image": images}, gen(8)).kept)
    assert abs(b.kept.float().mean().item() - 0.5) < 0.03
    kept = b.kept.expand_as(lab)
    assert torch.equal(b.x[kept], lab[kept])  # kept pixels are the image, dropped ones L = 50, a = b = 0
    dropped = b.x.permute(1, 0, 2, 3)[:, ~b.kept[:, 0]]
    assert torch.equal(dropped, torch.tensor([50.0, 0.0, 0.0]).view(3, 1).expand_as(dropped))
    torch.testing.assert_close(b.target, torch.cat([(lab[:, :1] - 50) / 100, lab[:, 1:] / 110], 1))
    # the loss: squared error summed over L, a, b at pixels (16 i, 16 j), averaged over the dropped cells only
    model = task.build_model()
    with torch.no_grad():
        out = model(b.x)
        got = task.loss(model, b)["l2"]
    cells = b.target[:, :, ::16, ::16][:, :, : out.shape[2], : out.shape[3]]
    counted = ~b.kept[:, :, ::16, ::16][:, :, : out.shape[2], : out.shape[3]]
    err = (out - cells).pow(2).sum(1, keepdim=True)
    assert out.shape[1] == 3 and counted.any() and not counted.all()
    torch.testing.assert_close(got, err[counted].mean(), rtol=1e-5, atol=1e-7)


def test_lightness_quantiser_has_50_bins_of_width_2():
    from xchannel.pretext.splitbrain import lightness_bins

    L = torch.tensor([0.0, 1.999, 2.0, 3.5, 49.99, 50.0, 98.0, 99.99, 100.0])
    assert lightness_bins(L).tolist() == [0, 0, 1, 1, 24, 25, 49, 49, 49]
    grid = torch.linspace(0, 100, 100001)
    assert torch.bincount(lightness_bins(grid)).shape == (50,)


def _splitbrain(width: float = 0.25, **options) -> tuple:
    sets = ["task=splitbrain", "model.name=alexnet", f"model.width={width}"]
    cfg = build_config(TrainConfig, None, sets + [f"pretext.{k}={v}" for k, v in options.items()])
    task = get_task("splitbrain")(cfg, torch.device("cpu"))
    return task, task.build_model()


def test_splitbrain_targets_are_1hot_ab_bins_and_L_bins_and_gray_images_count_for_neither():
    from xchannel.pretext.splitbrain import lightness_bins

    task, model = _splitbrain()
    assert model.halves["L_to_ab"].fc8_outputs == 313 and model.halves["ab_to_L"].fc8_outputs == 50
    images = _images(3, 64)
    images[2] = images[2].float().mean(0, keepdim=True).round().to(torch.uint8)  # R = G = B: a gray image
    b = task.prepare({"image": images})
    assert b.has_color.tolist() == [True, True, False]
    got = task.outputs_and_targets(model, b)
    lab = C.rgb_to_lab(images)[:, :, ::16, ::16][:, :, :4, :4]
    assert torch.equal(got["L_to_ab"][1], C.nearest_bins(lab[:, 1:])[0][:, 0])
    assert torch.equal(got["ab_to_L"][1], lightness_bins(lab[:, 0]))
    # the gray image adds nothing: changing its targets' logits leaves the loss as it is
    with torch.no_grad():
        losses = task.loss(model, b)
        expect = {f"ce_{n}": torch.nn.functional.cross_entropy(o[:2], t[:2]) for n, (o, t) in got.items()}
    for k in expect:
        torch.testing.assert_close(losses[k], expect[k], rtol=1e-5, atol=1e-6)


def test_splitbrain_export_is_exactly_block_diagonal_at_every_layer():
    task, model = _splitbrain()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
    model.eval()
    merged = task.backbone(model).eval()
    assert merged.in_channels == 3 and merged.fc8_outputs == 0 and merged.conv2.conv.groups == 2
    w3 = merged.conv3.conv.weight
    h_out, h_in = w3.shape[0] // 2, w3.shape[1] // 2
    assert (w3[:h_out, h_in:] == 0).all() and (w3[h_out:, :h_in] == 0).all()
    x = C.rgb_to_lab(_images(2, 96))
    y = x.clone()
    y[:, 1:] = torch.randn(y[:, 1:].shape, generator=g) * 40  # other colours, same lightness
    taps = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    with torch.no_grad():
        fx, fy = merged.features(x, taps), merged.features(y, taps)
        fl = model.halves["L_to_ab"].features(x[:, :1], taps)
        fab = model.halves["ab_to_L"].features(y[:, 1:], taps)
    for t in taps:
        half = fx[t].shape[1] // 2
        assert torch.equal(fx[t][:, :half], fy[t][:, :half]), t  # perturbing ab changes no channel of the L half
        assert not torch.equal(fx[t][:, half:], fy[t][:, half:]), t
        torch.testing.assert_close(fx[t][:, :half], fl[t], rtol=1e-4, atol=1e-5)  # the halves, side by side
        torch.testing.assert_close(fy[t][:, half:], fab[t], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# The registry contract


def test_every_task_is_listed_with_its_paper_and_its_options_are_strict(capsys):
    assert main(["train", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        cls = get_task(name)
        assert name in out and cls.paper in out and cls.description in out
    cfg = build_config(TrainConfig, None, ["task=rotation", "pretext.all_fuor=false"])
    with pytest.raises(UserError, match=r"pretext \(rotation\).*unknown key.*'all_fuor'"):
        get_task("rotation")(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="unknown pretext task 'inpainting'"):
        get_task("inpainting")


@pytest.mark.parametrize("task", TASKS)
def test_every_task_checkpoint_describes_its_backbone_heads_and_stages(trained, task):
    state = torch.load(trained[task], weights_only=True)
    assert state["task"] == task and state["format"] == 2
    backbone = state["backbone"]
    assert backbone["arch"] == "alexnet" and backbone["hparams"]["fc8_outputs"] == 0
    assert not any(k.startswith("fc8.") for k in backbone["state_dict"])
    assert state["pretrained_stages"] == STAGES.get(task, ALL_STAGES)
    assert set(state["heads"]) == HEADS.get(task, {"fc8"})
    if task == "splitbrain":  # the merged Lab network; each half's classifier is a head
        assert state["heads"]["ab_to_L.fc8"]["fc.weight"].shape[0] == 50
    elif task in ("jigsaw", "context"):  # the trunk's conv1 ... conv5, under the backbone's own names
        for k, v in backbone["state_dict"].items():
            if not k.startswith(("fc6.", "fc7.")):
                assert torch.equal(v, state["state_dict"][f"trunk.{k}"]), k
    else:  # the backbone entry is the trained network's weights, shared with the resume state
        for k, v in backbone["state_dict"].items():
            assert torch.equal(v, state["state_dict"][k]), k
    space = {"colorization": "L"}.get(task, "Lab")
    assert backbone["input_space"] == space


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_under_bf16_autocast(tmp_path, folder, task):
    """The same first step in fp32 and under bf16 autocast: the loss is computed in bf16 (it differs in the low
    digits) and stays finite and close."""
    first = {}
    for precision in ("fp32", "bf16"):
        cfg = _config(tmp_path / precision, folder, task, steps=1, precision=precision, data={"val": None})
        first[precision] = train(cfg, progress=False)["first_loss"]
    assert first["bf16"] != first["fp32"] and first["bf16"] == pytest.approx(first["fp32"], rel=0.05)


def test_sgd_with_nesterov_momentum_is_the_configured_optimiser(tmp_path, folder):
    cfg = _config(tmp_path, folder, "rotation", optim={"name": "sgd", "lr": 0.01, "momentum": 0.9,
                                                       "nesterov": True, "weight_decay": 5e-4})
    train(cfg, progress=False)
    opt = torch.load(ckpt.list_checkpoints(Path(cfg.out))[0][1], weights_only=True)["optimizer"]
    group = opt["param_groups"][0]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and "betas" not in group
    assert all("momentum_buffer" in s for s in opt["state"].values())


# --------------------------------------------------------------------------------------------------------------
# Checkpoints and the benchmarks


def test_a_checkpoint_written_before_backbone_entries_still_gives_its_features():
    """The fixture was written by the training engine of 2026-12 (no backbone entry); these are the features
    that code's encoder gave on this input."""
    enc = load_encoder(str(FIXTURE))
    assert enc.input_mode == "gray" and enc.info["task"] == "colorization" and enc.info["reinitialised"] == []
    assert enc.describe()["pretrained_stages"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = enc.features(x, ["conv1", "conv5", "fc7"])
    assert f["fc7"].shape == (2, 128)
    for layer, total in (("conv1", 359.59631009399874), ("conv5", 1.960386717966685),
                         ("fc7", 0.580661888106988)):
        assert f[layer].double().sum().item() == pytest.approx(total, rel=1e-5), layer


def test_colorization_trains_to_the_very_weights_it_trained_to_before_the_redesign(tmp_path):
    """The fixture's run, trained again by today's engine: same initialisation, RNG stream and math, so the
    same bits (the fixture holds the weights after its 2 steps).
    On one thread, as the fixture was written: thread counts change float rounding."""
    images = write_image_folder(tmp_path / "imgs", n_per_class=4, size=48)
    old = torch.load(FIXTURE, weights_only=True)
    cfg = old["config"]
    cfg["data"]["train"], cfg["out"] = str(images), str(tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(build_config(TrainConfig, tmp_path / "cfg.yaml"), progress=False)
    finally:
        torch.set_num_threads(threads)
    new = torch.load(ckpt.list_checkpoints(tmp_path / "run")[0][1], weights_only=True)
    assert new["state_dict"].keys() == old["state_dict"].keys()
    for k, v in old["state_dict"].items():
        assert torch.equal(v, new["state_dict"][k]), k


def test_backbone_entry_gives_the_whole_networks_features(trained):
    from xchannel.checkpoints import load_network
    from xchannel.features.encoders import _adapt_alexnet

    enc = load_encoder(str(trained["colorization"]))
    assert "fc8" not in dict(enc.backbone.named_children()) and enc.info["pretrained_stages"][-1] == "fc7"
    whole, _ = load_network(trained["colorization"])
    assert whole.fc8_outputs == 313  # the colorizer still loads whole (for colorize)
    whole, _ = _adapt_alexnet(whole, "gray", "transfer", "test")
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = enc.features(x, ["conv3", "fc7"])
        b = whole.features(enc.prepare(x), ["conv3", "fc7"])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_untrained_stages_are_kmeans_initialised_and_named(trained, tmp_path):
    state = torch.load(trained["rotation"], weights_only=True)
    state["pretrained_stages"] = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    path = tmp_path / "conv_only.pt"
    atomic_torch_save(state, path)
    g = torch.Generator().manual_seed(2)
    images = torch.rand(12, 3, 227, 227, generator=g)
    enc = load_encoder(str(path), init_data=[images])
    full = load_encoder(str(trained["rotation"]))
    assert enc.info["reinitialised"] == ["fc6", "fc7"] and full.info["reinitialised"] == []
    assert enc.describe()["pretrained_stages"] == state["pretrained_stages"]
    trained_sd, redrawn = full.backbone.state_dict(), enc.backbone.state_dict()
    for k in trained_sd:
        same = torch.equal(trained_sd[k], redrawn[k])
        assert same == (not k.startswith(("fc6.", "fc7."))) or "num_batches" in k, k
    # k-means' within-layer step: every fc6 unit has mean 0 and variance 1 on the images it was drawn from
    with torch.no_grad():
        pre = enc.backbone.features(enc.prepare(images), ["pool5"])["pool5"]
        z = enc.backbone.fc6.fc(enc.backbone.fc6.flatten(pre))
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-2, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(z.shape[1]), atol=2e-2, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("task", [t for t in TASKS if t != "colorization"])
def test_each_task_checkpoint_runs_through_the_probe_and_pascal_classification(trained, task, tmp_path,
                                                                                tmp_path_factory, capsys):
    voc = synthetic_voc(tmp_path_factory, voc_trainval=8, voc_test=4)
    data = voc.parent / "imagenet"
    rc = probe_main(["--encoder", str(trained[task]), "--data", str(data), "--layer", "conv2,fc7", "--epochs", "1",
                     "--batch-size", "4", "--workers", "0", "--no-progress", "--out", str(tmp_path / "probe.json")])
    assert rc == 0, capsys.readouterr()
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert set(probe["layers"]) == {"conv2", "fc7"} and probe["encoder"]["task"] == task
    assert probe["encoder"]["pretrained_stages"] == STAGES.get(task, ALL_STAGES)
    untrained = [s for s in ALL_STAGES if s not in STAGES.get(task, ALL_STAGES)]  # fc6, fc7 of the patch tasks
    assert probe["encoder"]["reinitialised"] == untrained
    rc = main(["pascal", "cls", str(trained[task]), "--preset", "demo", "--voc", str(voc),
               "--iterations", "2", "--set", "data.test_crops=1", "--set", "rescale.images=4", "--no-progress",
               "--out", str(tmp_path / "cls.json")])
    assert rc == 0, capsys.readouterr()
    cls = json.loads((tmp_path / "cls.json").read_text())
    assert cls["encoder"]["task"] == task and cls["encoder"]["input_mode"] == "color"
    assert cls["encoder"]["reinitialised"] == untrained
    assert 0 <= cls["metrics"]["sklearn"]["map"] <= 100
