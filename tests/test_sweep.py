"""Sweeps: spec expansion and stable ids, idempotent submission, failure isolation and status, the debug, local and
in-process executors, preemption (submitit's checkpoint() + the training engine) and the report.

Real jobs throughout: tiny AlexNets (width 0.125, 64 px crops, batches of 4) on a tiny data set drawn by
``xchannel.data.synthetic.make_dataset`` (conftest.py's ``tiny``). The tests on the real SLURM cluster are in test_sweep_slurm.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest
from helpers import wait_for_steps
import torch
import yaml

from xchannel.cli import main as cli_main
from xchannel.errors import UserError
from xchannel.sweep.cluster import ClusterProfile
from xchannel.sweep.jobs import read_attempts, read_result
from xchannel.reports.figure7 import merge_probe_results
from xchannel.reports.sweep import write_report
from xchannel.sweep.runner import format_status, job_profile, job_states, submit_sweep
from xchannel.sweep.spec import config_hash, expand_spec, load_spec
from xchannel.train.checkpoint import checkpoint_path
from xchannel.utils.io import safe_torch_load

FIGURE7_VARS = {"imagenet": "/data/imagenet", "colorization": "runs/colorization",
                "supervised": "torchvision-alexnet:/models/alexnet.pth"}
TRAIN = {"model": {"name": "alexnet", "width": 0.125}, "data": {"crop": 64, "batch_size": 4, "workers": 0},
         "checkpoint_every": 1000, "log_every": 1, "deterministic": True, "optim": {"lr": 1e-3}, "device": "cpu"}


def _train_spec(tiny: Path, **groups) -> dict:
    """A spec with one train group per keyword: tag -> overrides of the tiny training config."""
    out = []
    for tag, over in groups.items():
        config = json.loads(json.dumps(TRAIN))
        config["data"]["train"] = str(tiny / "imagenet" / "train")
        for k, v in over.items():
            config[k] = {**config.get(k, {}), **v} if isinstance(v, dict) else v
        out.append({"kind": "train", "tag": tag, "config": config})
    return {"name": "t", "groups": out}


# --------------------------------------------------------------------------------------------- spec expansion


def test_named_sweeps_expand_to_the_papers_grids_with_stable_readable_ids():
    f7 = load_spec("figure7", FIGURE7_VARS)
    # Fig. 7: {colorization, Gaussian, k-means, supervised} x {gray, color}, ours with gray input only = 7 lines.
    assert len(f7.jobs) == 7
    assert all(re.fullmatch(r"probe-(colorization|gaussian|kmeans|supervised)-(gray|color)-s0-[0-9a-f]{8}", j.id)
               for j in f7.jobs)
    assert "colorization-color" not in " ".join(j.id for j in f7.jobs)
    by_labels = {(j.labels["encoder"], j.labels["input"]): j.config for j in f7.jobs}
    assert by_labels[("supervised", "color")]["input_mode"] == "rgb"  # an RGB network sees colour as RGB
    assert by_labels[("gaussian", "color")]["input_mode"] == "color"
    assert all(c["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5"] for c in by_labels.values())
    # Ids are a pure function of the spec: stable across expansions; the hash is SHA-256 of the canonical config.
    again = load_spec("figure7", dict(FIGURE7_VARS))
    assert [j.id for j in again.jobs] == [j.id for j in f7.jobs]
    j = f7.jobs[0]
    canonical = json.dumps({"kind": "probe", "config": j.config}, sort_keys=True, separators=(",", ":"))
    assert j.id.endswith(hashlib.sha256(canonical.encode()).hexdigest()[:8]) and j.config_hash == config_hash(
        "probe", j.config)
    # A changed config is a new job; jobs whose config did not change keep their ids.
    moved = load_spec("figure7", {**FIGURE7_VARS, "colorization": "runs/other"})
    changed = {a.id for a in f7.jobs} ^ {b.id for b in moved.jobs}
    assert changed == {f7.jobs[0].id, moved.jobs[0].id} and f7.jobs[0].labels["encoder"] == "colorization"

    t2 = load_spec("table2", {"voc": "/data/VOCdevkit", "colorization": "runs/c", "supervised": "torchvision-alexnet:/m"})
    # Table 2: 4 encoders x 2 input modes x 5 columns (cls fc8, cls fc6-8, cls all, det, seg).
    assert len(t2.jobs) == 40
    kinds = {k: sum(j.kind == k for j in t2.jobs) for k in ("pascal-cls", "pascal-det", "pascal-seg")}
    assert kinds == {"pascal-cls": 24, "pascal-det": 8, "pascal-seg": 8}
    assert {j.config["layers"] for j in t2.jobs if j.kind == "pascal-cls"} == {"fc8", "fc6-8", "all"}
    assert len({j.id for j in t2.jobs}) == 40

    demo = load_spec("demo")
    assert [j.kind for j in demo.jobs].count("probe") == 4 and len(demo.jobs) == 9


def test_spec_errors_name_the_file_and_the_problem(tmp_path):
    def expand(spec, **variables):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        return load_spec(path, variables)

    base = {"variables": {"data": None}, "groups": [{"kind": "probe", "config": {"data": "${data}"}}]}
    with pytest.raises(UserError, match=r"spec\.yaml: variable\(s\) data not set: give --var data=VALUE"):
        expand(base)
    assert len(expand(base, data="/d").jobs) == 1
    with pytest.raises(UserError, match=r"spec\.yaml.*unknown key\(s\) 'grups'"):
        expand({"grups": []})
    with pytest.raises(UserError, match=r"--var nope: no such variable"):
        expand(base, data="/d", nope=1)
    with pytest.raises(UserError, match=r"groups\[0\] \(probe\): job probe: unknown key\(s\) 'epoch'"):
        expand({"groups": [{"kind": "probe", "config": {"epoch": 3}}]})
    with pytest.raises(UserError, match=r"config\.out is set by the sweep"):
        expand({"groups": [{"kind": "probe", "config": {"out": "x.json"}}]})
    with pytest.raises(UserError, match=r"unknown job kind 'prob'"):
        expand({"groups": [{"kind": "prob"}]})
    with pytest.raises(UserError, match=r"exclude\[0\]: axis 'input' has no label\(s\) grey"):
        expand({"axes": {"input": {"gray": {"input_mode": "gray"}}},
                "groups": [{"kind": "probe", "axes": ["input"], "exclude": [{"input": "grey"}]}]})
    with pytest.raises(UserError, match=r"resources: unknown field\(s\) 'gpus'"):
        expand({"groups": [{"kind": "probe", "resources": {"gpus": 2}}]})
    with pytest.raises(UserError, match=r"job kind 'probe' runs as a single process"):
        job_profile(expand({"groups": [{"kind": "probe", "resources": {"tasks_per_node": 2}}]}).jobs[0],
                    ClusterProfile())
    # A GPU cluster profile's 4 tasks x 4 GPUs apply to DDP training; a probe job gets one task and one GPU.
    gpu = ClusterProfile(tasks_per_node=4, gpus_per_node=4)
    probe = expand({"groups": [{"kind": "probe"}]}).jobs[0]
    train = expand({"groups": [{"kind": "train", "resources": {"nodes": 2}}]}).jobs[0]
    assert (job_profile(probe, gpu).tasks_per_node, job_profile(probe, gpu).gpus_per_node) == (1, 1)
    assert (job_profile(train, gpu).nodes, job_profile(train, gpu).tasks_per_node) == (2, 4)


# -------------------------------------------------------------------------------- debug and local executors


def test_debug_sweep_isolates_a_failing_job_reports_it_and_only_reruns_what_has_no_result(tiny, tmp_path, capsys,
                                                                                           one_thread):
    spec = _train_spec(tiny, ok={"steps": 3})
    spec["groups"][0]["axes"] = [{"seed": {"key": "seed", "values": [0, 1], "label": "s{}"}}]
    spec["groups"].append({"kind": "train", "tag": "broken",
                           "config": {**TRAIN, "data": {**TRAIN["data"], "train": str(tmp_path / "nowhere")},
                                      "steps": 2}})
    sweep = expand_spec(spec)
    folder = tmp_path / "sweep"
    first = submit_sweep(sweep, folder, "debug", progress=False, echo=lambda m: None)
    assert first.submitted == [j.id for j in sweep.jobs]
    ok, broken = [j.id for j in sweep.jobs[:2]], sweep.jobs[2].id
    assert first.succeeded == ok and first.failed == [broken]  # the failure came last and stopped nothing
    for job_id in ok:
        record = read_result(folder / job_id)
        assert record["result"]["status"] == "finished" and record["result"]["step"] == 3
        assert record["job"]["id"] == job_id and record["job"]["attempts"] == 1
        assert checkpoint_path(folder / job_id / "run", 3).is_file()
    states = {s.id: s for s in job_states(sweep, folder)}
    assert [states[j].state for j in ok] == ["done", "done"] and states[broken].state == "failed"
    assert "no such image folder or list" in states[broken].detail
    assert any("UserError" in line and "nowhere" in line for line in states[broken].error_tail)
    # The status command, from a new "process" (everything read from the sweep folder):
    assert cli_main(["sweep", str(folder), "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{broken}\s+train\s+failed", out) and "| xchannel.errors.UserError:" in out
    assert "3 jobs: 2 done, 1 failed" in out
    # Idempotent: the finished jobs are never run again; the failed one is retried (and fails again).
    second = submit_sweep(sweep, folder, "debug", progress=False, echo=lambda m: None)
    assert second.submitted == [broken] and second.done == ok
    assert submit_sweep(sweep, folder, "debug", jobs=["ok-*"], progress=False, echo=lambda m: None).submitted == []
    assert len(read_attempts(folder / broken)) == 2 and len(read_attempts(folder / ok[0])) == 1


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return safe_torch_load(checkpoint_path(run_dir, step))["state_dict"]


@pytest.mark.slow
def test_local_executor_preemption_signal_checkpoints_requeues_and_resumes_to_the_bit(tiny, tmp_path, one_thread):
    """SIGUSR2 (SLURM's warning before a time limit or pre-emption) reaches submitit's handler in the job process;
    the job lets the training engine checkpoint at a step boundary, then submitit calls checkpoint() and requeues it
    (the local executor restarts it at once). The restart resumes from that checkpoint and ends bit-identical to
    an uninterrupted run of the same config (deterministic=true), which runs beside it."""
    steps = 60
    sweep = expand_spec(_train_spec(tiny, victim={"steps": steps, "seed": 7}, reference={"steps": steps, "seed": 7}))
    victim, reference = sweep.jobs
    assert victim.config_hash == reference.config_hash  # the same training; only the tag differs
    folder = tmp_path / "sweep"
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("report", submit_sweep(
        sweep, folder, "local", parallel=2, progress=False, echo=lambda m: None)))
    runner.start()
    wait_for_steps(folder / victim.id / "run", 5, timeout=120.0)
    os.kill(read_attempts(folder / victim.id)[0]["pid"], signal.SIGUSR2)
    runner.join(timeout=300)
    assert not runner.is_alive()
    assert sorted(outcome["report"].succeeded) == sorted([victim.id, reference.id])
    first, second = read_attempts(folder / victim.id)
    assert first["resumed_from"] is None and first["requeues"] == 0
    assert second["requeues"] == 1 and 5 <= second["resumed_from"] < steps  # checkpoint() was called, then resumed
    assert read_result(folder / victim.id)["job"]["attempts"] == 2
    assert len(read_attempts(folder / reference.id)) == 1
    a, b = _weights(folder / victim.id / "run", steps), _weights(folder / reference.id / "run", steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_local_executor_runs_a_ddp_training_job_as_two_tasks(tiny, tmp_path, one_thread):
    """tasks_per_node=2: submitit starts two processes; the job exports the rendezvous from submitit's job
    environment and the engine trains with DistributedDataParallel (gloo on CPU)."""
    spec = _train_spec(tiny, ddp={"steps": 2})
    spec["groups"][0]["resources"] = {"tasks_per_node": 2}
    sweep = expand_spec(spec)
    folder = tmp_path / "sweep"
    report = submit_sweep(sweep, folder, "local", progress=False, echo=lambda m: None)
    job = sweep.jobs[0]
    assert report.succeeded == [job.id], format_status(job_states(sweep, folder))
    record = read_result(folder / job.id)
    assert record["result"]["world_size"] == 2 and record["job"]["world_size"] == 2
    assert len(read_attempts(folder / job.id)) == 1  # written by rank 0 only


# ------------------------------------------------------------------------------------ in-process and report


def test_here_runs_probe_and_pascal_jobs_and_the_report_puts_published_numbers_beside_ours(tiny, tmp_path,
                                                                                            one_thread):
    spec = {
        "name": "mini",
        "report": ["figure7", "table2"],
        "axes": {"seed": {"key": "seed", "values": [0, 1], "label": "s{}"}},
        "groups": [
            {"kind": "probe", "config": {"encoder": "gaussian:width=0.125", "input_mode": "gray",
                                         "data": str(tiny / "imagenet"), "layers": ["conv1", "conv3"], "epochs": 1,
                                         "crop": 64, "resize": 72, "batch_size": 8, "workers": 0, "device": "cpu"},
             "axes": ["seed"]},
            {"kind": "pascal-cls", "tag": "cls-fc8",
             "config": {"encoder": "gaussian:width=0.125", "input_mode": "gray", "voc": str(tiny / "VOCdevkit"),
                        "layers": "fc8", "optim": {"iterations": 2, "batch_size": 4}, "data": {"test_crops": 1},
                        "rescale": {"images": 4}, "device": "cpu"}},
        ],
    }
    sweep = expand_spec(spec)
    folder = tmp_path / "sweep"
    report = submit_sweep(sweep, folder, "here", progress=False, echo=lambda m: None)
    assert report.succeeded == [j.id for j in sweep.jobs], format_status(job_states(sweep, folder))
    out = write_report(folder, tmp_path / "results")
    assert set(out["made"]) == {"figure7", "table2", "runs"} and out["counts"]["done"] == 3
    # Figure 7: the two seeds are one line, their mean (and spread); the published ImageNet rows are listed.
    seeds = [read_result(folder / j.id)["result"] for j in sweep.jobs[:2]]
    merged = json.loads(Path(out["made"]["figure7"]["merged"][0]).read_text())
    for layer in ("conv1", "conv3"):
        values = [s["layers"][layer]["top1"] for s in seeds]
        assert merged["layers"][layer]["top1"] == pytest.approx(sum(values) / 2)
        assert merged["layers"][layer]["top1_std"] == pytest.approx(abs(values[0] - values[1]) / 2)
        assert merged["layers"][layer]["runs"] == 2
    assert (tmp_path / "results" / "figure7.png").stat().st_size > 10_000
    f7 = (tmp_path / "results" / "figure7.md").read_text()
    assert "| Colorization (Zhang et al. 2016) | gray | imagenet, published | 13.1 | 24.8 | 31.0 | 32.6 | 31.8 |" in f7
    # Table 2: the published rows (Ours (gray): 52.4 / 61.5 / 65.9 / 46.9 / 35.0) and our measured row.
    t2 = (tmp_path / "results" / "table2.md").read_text()
    assert "| Ours (gray) | gray | PASCAL VOC, published | 52.4 | 61.5 | 65.9 | 46.9 | 35.0 |" in t2
    headline = read_result(folder / sweep.jobs[2].id)["result"]["headline"]
    cls, half = headline["value"], headline["uncertainty"]["half_width"]
    assert re.search(rf"\*\*Gaussian \(gray\)\*\* \(measured\).*embedded, measured \| {cls:.1f} ± {half:.1f} \|", t2)
    chance = headline["chance"]  # the random-score row of the classification columns
    assert f"| random scores (chance) | — | embedded, measured | {chance['mean']:.1f} [" in t2
    jobs_csv = (tmp_path / "results" / "jobs.csv").read_text().splitlines()
    assert jobs_csv[0].startswith("job,kind,tag,seed,state") and len(jobs_csv) == 4


def test_merge_probe_results_joins_layers_of_separate_jobs_and_averages_seeds():
    def result(seed, layers):
        return {"encoder": {"spec": "gaussian", "input_mode": "color", "name": "Gaussian (color)"},
                "data": {"name": "imagenet"}, "protocol": {"name": "zhang16"}, "config": {"seed": seed},
                "layer_order": list(layers), "layers": {k: {"top1": v, "top5": v + 10} for k, v in layers.items()}}

    merged = merge_probe_results([result(0, {"conv5": 10.0}), result(0, {"conv1": 4.0}), result(1, {"conv5": 14.0})])
    assert len(merged) == 1 and merged[0]["layer_order"] == ["conv1", "conv5"]
    assert merged[0]["layers"]["conv5"]["top1"] == 12.0 and merged[0]["layers"]["conv5"]["top1_std"] == 2.0
    assert merged[0]["layers"]["conv1"] == {"top1": 4.0, "top5": 14.0, "top1_std": 0.0, "top5_std": 0.0, "runs": 1}
    assert merged[0]["seeds"] == [0, 1]
