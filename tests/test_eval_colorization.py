"""Table 1 evaluation (AuC raw / rebalanced, classifier top-1, Gray and Random baselines, released weights) and the
Fig. 4 temperature grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xchannel import color as C
from xchannel.cli import main
from xchannel.data.images import ImageFolderDataset, ResizeCenterCrop
from xchannel.data.synthetic import SyntheticSpec, make_dataset
from xchannel.evaluation.classifier import EmbeddedClassifierSpec, train_embedded_classifier
from xchannel.evaluation.colorization import EvalBatch, GroundTruth, Gray, RandomColors, build_colorizer, evaluate
from xchannel.evaluation.temperature import FIG4_TEMPERATURES, decode_temperatures
from xchannel.metrics.colorization import ab_auc
from xchannel.models import VGGColorizer, model_checkpoint
from xchannel.reports.table1 import COLUMNS, load_published
from xchannel.utils.io import atomic_torch_save

SIZE = 48  # side of the tiny embedded images (shorter side; evaluated as a center 48 x 48 crop)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These networks are tiny: one intra-op thread is as fast on an idle machine and far faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny embedded data set: 4 classes, 24 train and 8 val images each, 48 px."""
    out = tmp_path_factory.mktemp("embedded")
    make_dataset(out, SyntheticSpec(seed=3, classes=4, train_per_class=24, val_per_class=8, voc_trainval=0, seg_val=0,
                                    voc_test=0, voc2012=False, size=SIZE))
    return out / "imagenet"


@pytest.fixture(scope="module")
def network() -> VGGColorizer:
    return VGGColorizer(width=0.125, seed=0).eval()


def _colour_images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(sRGB N x 3 x 48 x 48, dataset indices) of the colour images of an ImageFolder, loaded independently of
    the evaluator."""
    ds = ImageFolderDataset(root, ResizeCenterCrop(SIZE, resize=None, dtype=torch.float32))
    items = [ds[i] for i in range(len(ds))]
    keep = [it for it in items if it["has_color"]]
    return torch.stack([it["image"] for it in keep]), torch.tensor([it["index"] for it in keep])


def _batch(rgb: torch.Tensor, index: torch.Tensor) -> EvalBatch:
    return EvalBatch(rgb, C.rgb_to_lab(rgb), torch.zeros(len(rgb), dtype=torch.long), index)


def test_published_table1_holds_the_papers_rows():
    pub = load_published()
    assert [k for k, _ in COLUMNS] == pub["columns"]
    rows = {r["name"]: r["values"][3:] for r in pub["rows"]}
    # Table 1: AuC non-rebal, AuC rebal, VGG top-1, AMT labeled real (%)
    assert rows["Ground Truth"] == [100, 100, 68.3, 50]
    assert rows["Gray"] == [89.1, 58.0, 52.7, None]
    assert rows["Random"] == [84.2, 57.3, 41.0, 13.0]
    assert rows["Ours (full)"] == [89.5, 67.3, 56.0, 32.3]
    assert rows["Larsson et al."] == [91.7, 65.9, 59.4, 27.2]
    full = next(r for r in pub["rows"] if r["name"] == "Ours (full)")
    assert full["values"][:3] == [129, 142, 22.1] and full["se"][6] == 2.2
    assert "ECCV 2016, Table 1" in pub["source"]


def test_auc_columns_equal_direct_ab_auc(data, network):
    """Gray (a = b = 0) and a network, scored by the streaming evaluator and by ab_auc on all images at once."""
    rows = ["Ground Truth", "Gray", "net"]
    ds = ImageFolderDataset(data / "val", ResizeCenterCrop(SIZE, resize=None))
    from xchannel.evaluation.colorization import NetworkColorizer

    colorizers = [GroundTruth(), Gray(), NetworkColorizer(network, {"loss_kind": "classification"}, "net")]
    result = evaluate(ds, colorizers, batch_size=5, progress=False)
    got = {r.name: r for r in result["rows"]}
    assert list(got) == rows

    rgb, _ = _colour_images(data / "val")
    assert result["images"] == len(rgb) and result["gray_left_out"] == len(ds) - len(rgb)
    lab = C.rgb_to_lab(rgb)
    true_ab = lab[:, 1:]
    gray = torch.zeros_like(true_ab)
    assert got["Gray"].auc_nonrebal == pytest.approx(ab_auc(gray, true_ab), abs=1e-9)
    assert got["Gray"].auc_rebal == pytest.approx(ab_auc(gray, true_ab, rebalanced=True), abs=1e-9)
    with torch.no_grad():
        pred = network.predict_ab(lab[:, :1], 0.38)
    assert got["net"].auc_nonrebal == pytest.approx(ab_auc(pred, true_ab), abs=1e-6)
    assert got["net"].auc_rebal == pytest.approx(ab_auc(pred, true_ab, rebalanced=True), abs=1e-6)
    assert got["Ground Truth"].auc_nonrebal == got["Ground Truth"].auc_rebal == 1.0
    # the rebalanced metric weights saturated (rare) colours up: gray scores far lower on it (paper: 89.1 vs 58.0)
    assert got["Gray"].auc_rebal < got["Gray"].auc_nonrebal - 0.1
    assert got["Gray"].vgg_top1 is None


def test_random_baseline_keeps_L_and_copies_ab_of_a_seeded_training_image(data):
    transform = ResizeCenterCrop(SIZE, resize=None, dtype=torch.float32)
    train = ImageFolderDataset(data / "train", transform)
    rnd = RandomColors(train, seed=7)
    rgb, index = _colour_images(data / "val")
    batch = _batch(rgb[:6], index[:6])
    ab = rnd.colorize(batch)
    lab = rnd.lab(batch, ab)
    assert torch.equal(lab[:, :1], batch.L)  # the image keeps its own lightness
    sources = []
    for k, i in enumerate(batch.index.tolist()):
        j = rnd.source_index(i)
        src = C.rgb_to_lab(train[j]["image"][None])[0, 1:]
        assert torch.equal(ab[k], src)  # ... and takes all its ab from training image j
        sources.append(j)
        assert not torch.allclose(ab[k], batch.ab[k])
    assert len(set(sources)) > 1
    # the choice depends on (seed, image index) only: not on batching, not on call order
    again = rnd.colorize(_batch(rgb[[3, 1]], index[[3, 1]]))
    assert torch.equal(again, ab[[3, 1]])
    assert [RandomColors(train, seed=8).source_index(i) for i in range(20)] != [rnd.source_index(i)
                                                                                for i in range(20)]


def test_released_weights_are_evaluated_like_the_model_they_came_from(data, network, tmp_path, capsys):
    from xchannel.convert import to_official_eccv16

    path = tmp_path / "colorization_release_v2-9b330a0b.pth"
    atomic_torch_save(to_official_eccv16(network), path)
    col = build_colorizer(str(path))
    assert col.describe()["source"] == "official_eccv16" and col.name.startswith("released weights")
    rgb, index = _colour_images(data / "val")
    batch = _batch(rgb[:4], index[:4])
    with torch.no_grad():
        expected = network.predict_ab(batch.L, 0.38)
    torch.testing.assert_close(col.colorize(batch), expected, atol=1e-3, rtol=1e-4)

    # the command: rows Ground Truth, Gray (always), the released weights, Random; the paper's rows after ours
    out = tmp_path / "t1"
    amt = tmp_path / "turing.json"  # the shape of `xchannel turing-test report --json`
    amt.write_text(json.dumps({"methods": {"Random": {"fool_rate": {"rate": 0.12, "se": 0.031}}}}))
    code = main(["evaluate", "colorization", "--checkpoint", str(path), "--checkpoint", "random", "--data",
                 str(data / "val"), "--size", str(SIZE), "--resize", "0", "--workers", "0", "--classifier", "none",
                 "--batch-size", "8", "--amt", str(amt), "-o", str(out), "--no-progress"])
    assert code == 0
    md = (out / "table1.md").read_text()
    header = ("| Method | Params (MB) | Feats (MB) | Runtime (ms) | AuC non-rebal (%) | AuC rebal (%) | "
              "VGG Top-1 Class Acc (%) | AMT Labeled Real (%) | Measured on |")
    assert header in md and "Our rows measured on: imagenet/val (" in md
    table = list(csv.reader((out / "table1.csv").read_text().splitlines()))
    assert table[0] == ["Method", *(t for _, t in COLUMNS), "Measured on"]
    names = [r[0] for r in table[1:]]
    assert names[:4] == ["Ground Truth", "Gray", f"released weights ({path.name})", "Random"]
    assert "Ours (full)" in names[4:]
    ours = {r[0]: r for r in table[1:5]}
    assert ours["Ground Truth"][4] == "100.0" and ours["Random"][-1].startswith("imagenet/val (")
    # AuC columns: mean ± half-width of the 95 % interval over the images, the value the JSON records
    for name in ("Gray", names[2], "Random"):
        for col, key in ((4, "auc_nonrebal"), (5, "auc_rebal")):
            row = next(r for r in json.loads((out / "table1.json").read_text())["rows"] if r["name"] == name)
            ci = row[f"{key}_ci"]
            assert ci["value"] == pytest.approx(100 * row[key]) and ci["ci95"][0] <= ci["value"] <= ci["ci95"][1]
            assert ours[name][col] == f"{100 * row[key]:.1f} ± {ci['half_width']:.1f}"
    assert ours["Random"][7] == "12.0±3.1" and ours["Gray"][7] == ""  # AMT Labeled Real (%) from the report
    result = json.loads((out / "table1.json").read_text())
    released = result["rows"][2]
    assert released["params_mb"] == pytest.approx(sum(p.numel() for p in network.parameters()) * 4e-6)
    assert ours[names[2]][1] == f"{released['params_mb']:.1f}"
    assert result["kind"] == "colorization_table1" and result["config"]["checkpoints"] == [str(path), "random"]

    # bad input: a clear error naming the file, no traceback
    capsys.readouterr()
    assert main(["evaluate", "colorization", "--checkpoint", str(tmp_path / "missing.pt"), "--data",
                 str(data / "val"), "--classifier", "none", "-o", str(out), "--no-progress"]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_embedded_classifier_is_worse_on_gray_images_and_fills_the_top1_column(data):
    """The fixed classifier learned from colour photos: gray inputs hurt it (paper, VGG-16: 68.3 -> 52.7 %)."""
    spec = EmbeddedClassifierSpec(input_size=32, widths=(8, 16, 32), epochs=12, lr=1e-2, seed=0)
    clf, info = train_embedded_classifier(data / "train", spec, val_dir=data / "val", progress=False)
    # measured here (generator v3): colour 0.72, gray 0.22 on the 32 val images (chance 0.25)
    assert info["val_accuracy_colour"] >= 0.45
    assert info["val_accuracy_gray"] <= info["val_accuracy_colour"] - 0.2

    ds = ImageFolderDataset(data / "val", ResizeCenterCrop(SIZE, resize=None))
    result = evaluate(ds, [GroundTruth(), Gray()], clf, batch_size=16, progress=False)
    gt, gray = result["rows"]
    assert gt.classified == gray.classified == result["images"]
    assert gray.vgg_top1 < gt.vgg_top1


def test_figure4_grid_has_seven_decodings_from_mean_to_mode(data, network, tmp_path):
    assert FIG4_TEMPERATURES == (1.0, 0.77, 0.58, 0.38, 0.29, 0.14, 0.0)
    rgb, _ = _colour_images(data / "val")
    L = C.rgb_to_lab(rgb[:3])[:, :1]
    grid = decode_temperatures(network, L)
    assert grid.shape == (3, 7, 2, SIZE, SIZE)
    with torch.no_grad():
        logits = network(L)
    up = lambda ab: F.interpolate(ab, size=(SIZE, SIZE), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(grid[:, 0], up(C.decode_mean(logits)))  # T = 1: the mean, first
    torch.testing.assert_close(grid[:, 3], up(C.annealed_mean(logits, 0.38)))  # the paper's T, 4th
    torch.testing.assert_close(grid[:, -1], up(C.decode_mode(logits)))  # T -> 0: the mode, last

    ckpt = tmp_path / "vgg.pt"
    atomic_torch_save(model_checkpoint(network), ckpt)
    out = tmp_path / "fig4.png"
    assert main(["evaluate", "temperature-grid", "--checkpoint", str(ckpt), "--images", str(data / "val"),
                 "--max-images", "2", "--size", "32", "--show-truth", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["columns"] == ["Mean T = 1", "T = 0.77", "T = 0.58", "T = 0.38", "T = 0.29", "T = 0.14",
                               "Mode T → 0", "Ground truth"]
    assert len(meta["images"]) == 2


def test_params_column_of_the_full_network_is_the_papers_129_mb():
    from xchannel.evaluation.colorization import NetworkColorizer, model_cost

    full = NetworkColorizer(VGGColorizer(width=1.0, seed=0).eval(), {"loss_kind": "classification"}, "full")
    cost = model_cost(full, size=64, repeats=1)
    assert round(cost["params_mb"]) == 129  # Table 1, "Ours": 129 MB (32.2 M fp32 parameters)
    # activations at 64 x 64 are 1/16 of those at 256 x 256; the 313 logits alone are 313 x 16 x 16 floats
    assert cost["feats_mb"] > 313 * 16 * 16 * 4 / 1e6 and cost["runtime_ms"] > 0
