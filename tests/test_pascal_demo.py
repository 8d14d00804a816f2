"""The demo's PASCAL stage (``xchannel demo --only pascal``): which runs it makes and how they fill Table 2.

* the demo encoder runs every Table 2 column in gray and color, the Gaussian and k-means baselines the columns of
  ``BASELINE_RUNS``; detection is part of the package, never skipped;
* the classification and detection ``demo`` presets prepare a baseline from the same images, so the k-means
  network (initialised on them) is one network, with one weights fingerprint, and its results fill one Table 2
  row (results are grouped by fingerprint: two k-means networks would give two half-empty rows).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import synthetic_voc

from xchannel.pascal.prepare import prepare_encoder
from xchannel.pascal.demo import BASELINE_RUNS, DemoRun, demo_runs, run_config


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_voc(tmp_path_factory, voc_trainval=40, voc_test=4)


def test_stage_runs_every_column_for_the_encoder_and_the_baselines() -> None:
    runs = demo_runs("runs/demo/demo-alexnet/ckpt_00000320.pt", 0.25)
    ours = [(r.task, r.layers, r.input_mode) for r in runs if r.encoder.endswith(".pt")]
    assert ours == [(task, layers, mode) for mode in ("gray", "color")
                    for task, layers in (("cls", "fc8"), ("cls", "fc6-8"), ("cls", "all"), ("det", ""),
                                         ("seg", ""))]
    baselines = [(r.encoder, r.task, r.layers, r.input_mode) for r in runs if not r.encoder.endswith(".pt")]
    assert baselines == [(f"{kind}:width=0.25", task, layers, "gray") for kind in ("gaussian", "kmeans")
                         for task, layers in BASELINE_RUNS]
    assert ("det", "") in BASELINE_RUNS
    assert len({r.name for r in runs}) == len(runs)  # one result file each


def test_baseline_tasks_share_one_kmeans_network(voc: Path, tmp_path: Path) -> None:
    fingerprints = []
    for task, layers in BASELINE_RUNS:
        cfg = run_config(DemoRun(task, "kmeans:width=0.125", "gray", layers), voc, tmp_path / f"{task}.json", 0,
                         False)
        prepared = prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=cfg.year,
                                   split=cfg.train_split, rescale=cfg.rescale, seed=cfg.seed)
        assert prepared.record["preparation"][0]["step"] == "kmeans_init"
        fingerprints.append(prepared.record["weights_fingerprint"])
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
