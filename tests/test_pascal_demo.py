"""The demo's PASCAL stage (``xchannel demo --only pascal``): which runs it makes and how they fill Table 2.

* the demo encoder (gray) and the two calibration encoders, supervised and Gaussian, run every Table 2 column; the
  color variant and k-means run classification with all layers fine-tuned;
  detection is part of the package, never skipped;
* every task's ``demo`` preset prepares a baseline from the same seed, so the Gaussian network is one network, with
  one weights fingerprint, and its results fill one Table 2 row (results are grouped by fingerprint: two Gaussian
  networks would give several half-empty rows).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import synthetic_voc

from xchannel.pascal.prepare import prepare_encoder
from xchannel.pascal.demo import ALL_COLUMNS, DemoRun, demo_runs, run_config


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_voc(tmp_path_factory, voc_trainval=40, voc_test=4)


def test_stage_runs_every_column_for_the_encoder_and_the_calibration_encoders() -> None:
    runs = demo_runs("runs/demo/demo-alexnet/ckpt_00000320.pt", 0.25, supervised="runs/demo/sup/ckpt.pt")
    by_encoder: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in runs:
        by_encoder.setdefault((r.encoder, r.input_mode), []).append((r.task, r.layers))
    assert ALL_COLUMNS == (("cls", "fc8"), ("cls", "fc6-8"), ("cls", "all"), ("det", ""), ("seg", ""))
    for key in (("runs/demo/sup/ckpt.pt", "gray"), ("gaussian:width=0.25", "gray"),
                ("runs/demo/demo-alexnet/ckpt_00000320.pt", "gray")):
        assert by_encoder[key] == list(ALL_COLUMNS)
    assert by_encoder[("runs/demo/demo-alexnet/ckpt_00000320.pt", "color")] == [("cls", "all")]
    assert by_encoder[("kmeans:width=0.25", "gray")] == [("cls", "all")]
    assert len({r.name for r in runs}) == len(runs)  # one result file each
    assert [r.name for r in runs][:2] == ["cls-fc8_supervised_gray", "cls-fc6-8_supervised_gray"]
    # without a supervised encoder (an older run) its rows are left out; baselines=False keeps ours alone
    assert not any(r.label == "supervised" for r in demo_runs("a.pt", 0.25))
    assert {r.label for r in demo_runs("a.pt", 0.25, "s.pt", baselines=False)} == {"demo-alexnet"}


def test_every_task_prepares_one_gaussian_network(voc: Path, tmp_path: Path) -> None:
    fingerprints = []
    for task, layers in (("cls", "all"), ("det", "")):
        cfg = run_config(DemoRun(task, "gaussian:width=0.125", "gray", layers), voc, tmp_path / f"{task}.json", 0,
                         False)
        prepared = prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=cfg.year,
                                   split=cfg.train_split, rescale=cfg.rescale, seed=cfg.seed)
        fingerprints.append(prepared.record["weights_fingerprint"])
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
