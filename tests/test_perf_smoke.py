"""The performance benchmarks (benchmarks/perf, `make bench`) run end to end on tiny workloads and write their
results. No timing is asserted here: timings are what `make bench` measures; only the equivalence figures, which
do not depend on the machine, are checked."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level package beside xchannel/, not installed with it
    sys.path.insert(0, str(REPO))

from benchmarks.perf import BENCHMARKS  # noqa: E402
from benchmarks.perf.__main__ import main  # noqa: E402
from benchmarks.perf.common import NOT_NATIVE, bf16_native  # noqa: E402

RECORD_KEYS = {"benchmark", "title", "mode", "workload", "figures", "checks", "notes", "machine", "seconds", "created"}
CHECK_KEYS = {"name", "value", "op", "target", "unit", "baseline", "met", "note"}
FIGURES = {
    "targets": {"vgg_k5_seconds", "vgg_k5_speedup", "vgg_k5_equivalence"},
    "train_step": {"matmul_peak_gflops", "fp32", "bf16", "best_full_images_per_s"},
    "loader": {"loader", "loader_no_workers", "training_step_images_per_s", "loader_over_step"},
    "probes": {"one_pass_over_one_layer", "separate_over_one_pass", "cached_over_encoder_epoch"},
    "colorize": {"seconds_per_photo", "speedup", "max_abs_diff_rgb", "max_8bit_level_diff"},
    "task_steps": {"colorization", "rotation", "supervised", "autoencoder", "splitbrain", "jigsaw", "context",
                   "instance"},
}


@pytest.fixture
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_every_benchmark_runs_and_writes_its_result(tmp_path, restore_threads, capsys):
    out = tmp_path / "out"
    # one thread: tiny kernels on a shared, busy machine only lose to OpenMP synchronisation
    rc = main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work"), "--threads", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"] == list(BENCHMARKS) and summary["mode"] == "smoke"
    table = (out / "table.md").read_text()
    for name in BENCHMARKS:
        rec = json.loads((out / f"{name}.json").read_text())
        assert set(rec) == RECORD_KEYS and rec["benchmark"] == name and rec["mode"] == "smoke"
        assert FIGURES[name] <= set(rec["figures"]), name
        assert rec["checks"], name
        for c in rec["checks"]:
            assert set(c) == CHECK_KEYS
            if c["met"] is None:  # only a bf16 check, only where bf16 is emulated (test_runtime.py runs that case)
                assert c["value"] is None and not bf16_native() and "bf16" in c["name"]
                assert f"| {name} | {c['name']} |" in table and NOT_NATIVE in c["note"]
                continue
            assert isinstance(c["met"], bool) and math.isfinite(c["value"])
            assert c["met"] == (c["value"] >= c["target"] if c["op"] == ">=" else c["value"] <= c["target"])
            assert f"| {name} | {c['name']} |" in table
        assert f"[{name}]" in printed
    assert len(summary["checks"]) == sum(len(json.loads((out / f"{n}.json").read_text())["checks"])
                                         for n in BENCHMARKS)
    # machine-independent results: our targets equal the authors' layers' (ties aside), our colorization the
    # released pipeline's, to the tolerances
    targets = json.loads((out / "targets.json").read_text())["figures"]["vgg_k5_equivalence"]
    assert targets["max_abs_diff_targets"] <= 1e-5 and targets["gray_mask_equal"]
    assert targets["max_rel_diff_pixel_weights"] <= 1e-5
    colorize = json.loads((out / "colorize.json").read_text())["figures"]
    assert colorize["max_abs_diff_rgb"] <= 1e-3 and colorize["max_8bit_level_diff"] <= 1

    # a partial run (--only) rewrites its own result and keeps the others' in the summary and the table
    assert main(["--smoke", "--only", "targets", "--out", str(out), "--work", str(tmp_path / "work"), "--threads",
                 "1", "--no-progress"]) == 0
    partial = json.loads((out / "summary.json").read_text())
    assert partial["benchmarks"] == list(BENCHMARKS) and partial["run_now"] == ["targets"]
    assert len(partial["checks"]) == len(summary["checks"])
    assert (out / "table.md").read_text().count("\n| ") == table.count("\n| ")
