"""``xchannel demo`` bookkeeping: a run of some stages keeps the other stages' summary entries, and the Table 1
stage evaluates at the scale the demo colorizer was trained at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import xchannel.demo as demo
from xchannel.evaluation.demo import training_scale


def stage_a(ctx) -> dict:
    return {"value": "a"}


def stage_b(ctx) -> dict:
    return {"value": "b"}


def test_only_run_keeps_the_other_stages_of_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "STAGES", [("data", f"{__name__}:stage_a"), ("alpha", f"{__name__}:stage_a"),
                                         ("beta", f"{__name__}:stage_b")])
    monkeypatch.setattr(demo, "_reuse_trained", lambda ctx: None)
    results = tmp_path / "results"
    threads = torch.get_num_threads()
    demo.run_demo(results, tmp_path / "work", progress=False, threads=threads)
    first = json.loads((results / "summary.json").read_text())
    assert list(first) == ["data", "alpha", "beta", "machine"] and not any("earlier_run" in v for v in first.values())
    assert first["machine"]["threads"] == threads and first["machine"]["precision"]["requested"] == "auto"

    demo.run_demo(results, tmp_path / "work", only=["beta"], progress=False, threads=threads)
    second = json.loads((results / "summary.json").read_text())
    assert list(second) == ["data", "alpha", "beta", "machine"]  # the stages' order, not the order written in
    assert second["alpha"] == {**first["alpha"], "earlier_run": True}
    assert "earlier_run" not in second["beta"] and "earlier_run" not in second["data"]  # data always runs
    assert json.loads((results / "beta.json").read_text())["value"] == "b"


def test_table1_scale_is_the_colorizer_training_scale(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "ckpt_00000010.pt"
    assert training_scale(ckpt) == 160  # no config beside it: the embedded images' native size
    (run / "config.json").write_text(json.dumps({"data": {"crop": 96, "resize": None}}))
    assert training_scale(ckpt) == 96
    (run / "config.json").write_text(json.dumps({"data": {"crop": 128, "resize": 160}}))
    assert training_scale(ckpt) == 160
    # the shipped demo config trains the VGG colorizer on 96 px images
    from xchannel.configs import resolve
    from xchannel.train.config import TrainConfig
    from xchannel.utils.config import build_config

    cfg = build_config(TrainConfig, resolve("demo-vgg"))
    assert (cfg.data.resize or cfg.data.crop) == 96
