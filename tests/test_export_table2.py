"""``xchannel export detectron2`` (the weight file detectron2's DetectionCheckpointer reads) and ``xchannel table2``
(the paper's Table 2, published rows beside ours)."""

from __future__ import annotations

import csv
import io
import json
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from xchannel.cli import main as cli_main
from xchannel.convert import fold_batchnorm
from xchannel.errors import UserError
from xchannel.export.detectron2 import export_detectron2, read_detectron2
from xchannel.features.encoders import load_encoder
from xchannel.models import AlexNet
from xchannel.reports import table2

CONVS = [f"backbone.conv{i}" for i in range(1, 6)]
FCS = ["roi_heads.box_head.fc1", "roi_heads.box_head.fc2"]


def _bn_alexnet_file(tmp_path: Path) -> tuple[Path, AlexNet]:
    """A transfer-geometry AlexNet with BatchNorm and non-trivial statistics, saved as a plain state_dict."""
    torch.manual_seed(0)
    net = AlexNet(in_channels=1, width=0.25, geometry="transfer", batchnorm=True, seed=0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "bn_alexnet.pt"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_detectron2_file_structure_keys_shapes_dtypes_and_values(tmp_path: Path) -> None:
    path, net = _bn_alexnet_file(tmp_path)
    out = tmp_path / "d2.pkl"
    assert cli_main(["export", "detectron2", f"state_dict:{path}", "-o", str(out), "--input-mode", "color"]) == 0

    with open(out, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # how DetectionCheckpointer._load_file reads a .pkl
    assert set(data) == {"model", "__author__", "matching_heuristics", "xchannel"}
    assert data["matching_heuristics"] is True and data["__author__"].startswith("xchannel")
    model = data["model"]
    assert set(model) == {f"{n}.{k}" for n in CONVS + FCS for k in ("weight", "bias")}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.flags.writeable for v in model.values())

    # values: BatchNorm folded into each layer (exact in eval mode); color input = zero ab weights in conv1
    folded = fold_batchnorm(net)
    w1 = model["backbone.conv1.weight"]
    assert w1.shape == (24, 3, 11, 11) and np.array_equal(w1[:, 1:], np.zeros_like(w1[:, 1:]))
    np.testing.assert_allclose(w1[:, :1], folded.conv1.conv.weight.detach().numpy(), rtol=1e-5, atol=1e-7)
    for i in range(2, 6):
        conv = getattr(folded, f"conv{i}").conv
        np.testing.assert_allclose(model[f"backbone.conv{i}.weight"], conv.weight.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(model[f"backbone.conv{i}.bias"], conv.bias.detach().numpy(), atol=1e-6)
    assert model["backbone.conv2.weight"].shape == (64, 12, 5, 5)  # CaffeNet's grouped conv2 (2 groups)
    assert data["xchannel"]["layers"]["backbone.conv2"]["groups"] == 2
    # fc6 is the box head's fc1 over 6 x 6 RoI features: 64 channels x 36 -> 1024
    assert model["roi_heads.box_head.fc1.weight"].shape == (1024, 64 * 36)
    np.testing.assert_allclose(model["roi_heads.box_head.fc2.weight"], folded.fc7.fc.weight.detach().numpy(),
                               atol=1e-6)
    assert data["xchannel"]["pooler_resolution"] == 6 and data["xchannel"]["input"]["channels"] == ["L", "a", "b"]

    # portable pickle: arrays rebuilt through numpy.ndarray (any numpy version), nothing else global
    blob = out.read_bytes()
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(blob):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            names.add(tuple(strings[-2:]))
    assert names == {("numpy", "ndarray"), ("builtins", "bytearray")}
    assert set(read_detectron2(out)["model"]) == set(model)


def test_detectron2_naming_options_and_refusals(tmp_path: Path) -> None:
    enc = load_encoder("gaussian:width=0.25", input_mode="gray", seed=3)
    ref = enc.backbone.conv3.conv.weight.detach().clone()
    summary = export_detectron2(enc, tmp_path / "a.pkl", prefix="", fc="backbone")
    data = read_detectron2(tmp_path / "a.pkl")
    assert summary["tensors"] == 14 and "conv1.weight" in data["model"] and "fc7.bias" in data["model"]
    assert np.array_equal(data["model"]["conv3.weight"], ref.numpy())  # no BatchNorm: copied exactly
    export_detectron2(enc, tmp_path / "b.pkl", fc="none")
    assert sorted(read_detectron2(tmp_path / "b.pkl")["model"]) == sorted(f"{n}.{k}" for n in CONVS
                                                                       for k in ("weight", "bias"))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": {}, "__author__": "x", "e": Evil()}))
    with pytest.raises(UserError, match="not a plain detectron2 weight pickle"):
        read_detectron2(tmp_path / "evil.pkl")
    with pytest.raises(UserError, match="fc placement"):
        export_detectron2(enc, tmp_path / "c.pkl", fc="head")


# --------------------------------------------------------------------------------------------------------------
# Table 2


PAPER_OURS = {"Ours (gray)": [52.4, 61.5, 65.9, 46.9, 35.0], "Ours (color)": [52.4, 61.5, 65.6, 47.9, 35.6]}


def _record(path: Path, column: str, value: float, mode: str, created: str, dataset: str = "embedded") -> Path:
    """A result file in the layout of xchannel.pascal.record.result_record (the fields Table 2 reads)."""
    path.write_text(json.dumps({
        "kind": "pascal", "task": {"det": "detection", "seg": "segmentation"}.get(column, "classification"),
        "table2_column": column, "headline": {"metric": "mAP", "value": value, "label": "..."},
        "row": {"encoder": f"colorizer ({mode})", "spec": "runs/colorizer.pt", "input_mode": mode,
                "weights_fingerprint": "f" * 64, "dataset": dataset, "rescaled": True},
        "created": created}))
    return path


def test_table2_published_rows_beside_ours(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    published = table2.load_published()
    assert published is not None and published["columns"] == list(table2.COLUMNS)
    rows = {r["name"]: r["values"] for r in published["rows"]}
    assert rows["Ours (gray)"] == PAPER_OURS["Ours (gray)"] and rows["Ours (color)"] == PAPER_OURS["Ours (color)"]
    assert rows["ImageNet [38]"] == [76.8, 78.9, 79.9, 56.8, 48.0] and rows["k-means [36]"][3] == 45.6
    assert rows["Gaussian"][:2] == [None, None] and len(rows) == 11

    d = tmp_path / "res"
    d.mkdir()
    _record(d / "det_gray.json", "det", 12.34, "gray", "2026-01-01T00:00:00+00:00")
    _record(d / "cls_gray.json", "cls_all", 40.0, "gray", "2026-01-01T00:00:00+00:00")
    _record(d / "det_gray_new.json", "det", 13.0, "gray", "2026-02-01T00:00:00+00:00")  # newer: wins
    _record(d / "seg_color.json", "seg", 20.5, "color", "2026-01-01T00:00:00+00:00")
    (d / "other.json").write_text(json.dumps({"kind": "linear_probe"}))  # found in a folder: skipped

    assert cli_main(["table2", str(d), "-o", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "table2.md").read_text()
    assert md.strip() in capsys.readouterr().out
    line = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[4:9]] for ln in md.splitlines()
            if ln.startswith("| ") and not ln.startswith("| Method")}
    assert line["Ours (gray)"] == ["52.4", "61.5", "65.9", "46.9", "35.0"]
    assert line["Ours (color)"] == ["52.4", "61.5", "65.6", "47.9", "35.6"]
    assert line["*Doersch et al. [14]"] == ["44.7", "55.1", "65.3", "51.1", "—"]
    gray = next(v for k, v in line.items() if k.startswith("**colorizer (gray)**"))
    color = next(v for k, v in line.items() if k.startswith("**colorizer (color)**"))
    assert gray == ["—", "—", "40.0", "13.0", "—"] and color == ["—", "—", "—", "—", "20.5"]
    assert "embedded, measured" in md and "not comparable" in md and "det_gray.json" in md  # superseded, named

    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table2.csv").read_text())))
    assert [r["kind"] for r in table].count("published") == 11 and len(table) == 13
    measured = [r for r in table if r["kind"] == "measured"]
    assert {r["input"] for r in measured} == {"gray", "color"} and all(r["dataset"] == "embedded" for r in measured)
    assert float(next(r for r in measured if r["input"] == "gray")["det"]) == 13.0
    assert next(r for r in table if r["method"] == "Gaussian")["cls_fc8"] == ""

    (tmp_path / "probe.json").write_text(json.dumps({"kind": "linear_probe"}))
    with pytest.raises(UserError, match=r"probe\.json: not a PASCAL task result"):
        table2.read_results([tmp_path / "probe.json"])
