"""The ``pretexts`` sweep: every registered pretext task and the baselines through Fig. 7's probes and Table 2.

* Expansion: one train job per task registered when the spec is expanded (a task added to the registry joins
  without a spec edit), probe and PASCAL jobs per encoder x input mode, each task's evaluations needing its own
  train job (and getting its run folder), the baselines as encoder specs; the variable sets switch the whole grid
  to ImageNet and PASCAL VOC when both data paths are given.
* Dependencies: the debug runner blocks what a failed job was needed by; the local runner starts a dependent job
  only after its dependency ended; a SLURM submission holds each task's evaluations with ``afterok`` on its train
  job (a fake executor records the arrays).
* End to end, in this process (``--cluster debug``), with a registry of two tasks (a gray-trained and a
  colour-trained one) on conftest.py's tiny data set: every job finishes or is skipped with its reason (colour
  probes of the gray-trained network); the report writes every file with one row per method; each encoder's
  features are extracted once, and a second probe run of the same encoders reads them from the cache.
* The comparison's pieces: paired probe verdicts, PASCAL interval verdicts, the sentence, training seeds pooled,
  published rows matched by the options a task was trained with.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from xchannel.cli import main as cli_main
from xchannel.errors import UserError
from xchannel.pretext import TASKS, task_config
from xchannel.pretext.rotation import RotationTask
from xchannel.probe import run as probe_run
from xchannel.sweep import runner
from xchannel.sweep.jobs import read_attempts, read_result
from xchannel.sweep.runner import load_sweep, missing_need, slurm_dependencies, submit_sweep
from xchannel.sweep.spec import JOB_REF, expand_spec, load_spec
from xchannel.utils.io import sha256_file

EVALUATIONS = ("probe", "cls-fc8", "cls-fc6-8", "cls-all", "det", "seg")
DENSE = ("det", "seg")  # on the embedded set: each network's own input (spec variable dense_inputs)
#: evaluation jobs per encoder on the embedded set: both inputs for probes and classification, one for det and seg
PER_ENCODER = 2 * (len(EVALUATIONS) - len(DENSE)) + len(DENSE)
BASELINES = ("gaussian", "kmeans")


class SecondRotationTask(RotationTask):
    """A task registered by the tests only: rotation under another name, with the rotation configs."""

    name = "rotation-twin"
    configs = {"demo": "demo-rotation", "imagenet": "rotation-imagenet"}


@pytest.fixture
def twin_task(monkeypatch):
    """The registry with one task more, as another engineer's new task would add it."""
    monkeypatch.setitem(TASKS, SecondRotationTask.name, f"{__name__}:SecondRotationTask")
    return SecondRotationTask.name


def _by_tag(sweep) -> dict[str, list]:
    out: dict[str, list] = {}
    for job in sweep.jobs:
        out.setdefault(job.tag, []).append(job)
    return out


# ----------------------------------------------------------------------------------------------------- expansion


def test_one_train_job_per_registered_task_and_a_new_task_joins_without_a_spec_edit(twin_task):
    sweep = load_spec("pretexts")
    tasks = list(TASKS)
    assert twin_task in tasks and sweep.variable_set == "embedded"
    jobs = _by_tag(sweep)
    train = {j.labels["method"]: j for j in jobs["train"]}
    assert list(train) == tasks  # every registered task, the new one included, in registry order
    assert {m: j.config["preset"] for m, j in train.items()} == {m: task_config(m, "demo") for m in tasks}
    assert train[twin_task].config["preset"] == "demo-rotation" and train["colorization"].config["preset"] == \
        "demo-alexnet"
    assert all(j.config["data"] == {"train": "runs/demo/data/imagenet/train", "val": "runs/demo/data/imagenet/val"}
               for j in train.values())
    methods = tasks + list(BASELINES)
    for tag in EVALUATIONS:  # every encoder x input mode, for the probes and every Table 2 column
        got = sorted((j.labels["method"], j.labels["input"]) for j in jobs[tag])
        modes = ("own",) if tag in DENSE else ("gray", "color")
        assert got == sorted((m, mode) for m in methods for mode in modes), tag
        for job in jobs[tag]:
            method = job.labels["method"]
            if method in BASELINES:  # the baselines are encoder specs of the tasks' width; nothing to wait for
                assert job.needs == {} and job.config["encoder"] == f"{method}:width=0.25"
            else:  # a task's evaluation needs its train job and takes its run folder as the encoder
                assert job.needs == {"encoder": train[method].id}
                assert job.config["encoder"] == JOB_REF + train[method].id
            own = job.labels["input"] == "own"
            assert job.config["input_mode"] == (None if own else job.labels["input"]) and job.config["seed"] == 0
    probe = next(j for j in jobs["probe"] if j.labels["method"] == "rotation")
    assert probe.config["layers"] == ["all"] and probe.config["cache"] == "runs/sweeps/pretexts-features"
    assert {j.config["layers"] for j in jobs["cls-fc6-8"]} == {"fc6-8"}
    assert all(j.config["preset"] == "demo" for tag in EVALUATIONS[1:] for j in jobs[tag])
    assert len(sweep.jobs) == len(tasks) + len(methods) * PER_ENCODER


def test_a_changed_training_renames_its_evaluations_and_seeds_pair_them(twin_task):
    base = load_spec("pretexts")
    longer = load_spec("pretexts", {"train_set": {"steps": 7}})
    changed = {j.id for j in base.jobs} ^ {j.id for j in longer.jobs}
    renamed = {j.labels["method"] for j in base.jobs if j.id in changed}
    assert renamed == set(TASKS)  # every task's train job and evaluations; the baselines keep their ids
    assert all(j.config["steps"] == 7 for j in longer.jobs if j.kind == "train")
    seeds = load_spec("pretexts", {"seeds": [0, 1]})
    train = {(j.labels["method"], j.labels["seed"]): j for j in seeds.jobs if j.kind == "train"}
    assert len(train) == 2 * len(TASKS) and train[("rotation", "s1")].config["seed"] == 1
    for job in seeds.jobs:
        if job.needs:
            assert job.needs["encoder"] == train[(job.labels["method"], job.labels["seed"])].id


def test_giving_imagenet_and_voc_switches_the_grid_to_the_full_protocol():
    sweep = load_spec("pretexts", {"imagenet": "/data/imagenet", "voc": "/data/VOCdevkit"})
    assert sweep.variable_set == "imagenet"
    jobs = _by_tag(sweep)
    assert {j.config["preset"] for j in jobs["train"]} == {task_config(t, "imagenet") for t in TASKS}
    assert all(j.config["data"]["train"] == "/data/imagenet/train" for j in jobs["train"])
    probe = jobs["probe"][0]
    assert probe.config["data"] == "/data/imagenet" and probe.config["data_name"] == "imagenet"
    assert "epochs" not in probe.config and "crop" not in probe.config  # the protocol's schedule and 227 px crops
    assert all(j.config["preset"] == "paper" and j.config["voc"] == "/data/VOCdevkit"
               for tag in EVALUATIONS[1:] for j in jobs[tag])
    assert {j.config["encoder"] for j in jobs["det"] if not j.needs} == {"gaussian:width=1", "kmeans:width=1"}
    assert {j.labels["input"] for tag in DENSE for j in jobs[tag]} == {"gray", "color"}  # both inputs at full scale
    with pytest.raises(UserError, match=r"variable_sets\.imagenet: imagenet given without voc"):
        load_spec("pretexts", {"imagenet": "/data/imagenet"})


def test_spec_support_errors_name_the_place():
    def expand(spec):
        return expand_spec(spec, where="spec.yaml")

    train = {"kind": "train", "tag": "train", "axes": [{"method": {"registry": "pretext", "config": "demo"}}]}
    probe = {"kind": "probe", "axes": [{"method": {"registry": "pretext"}}], "needs": {"encoder": "train"}}
    with pytest.raises(UserError, match=r"needs\.encoder: no earlier group with tag 'train'"):
        expand({"groups": [probe, train]})
    with pytest.raises(UserError, match=r"config\.encoder is set by 'needs'"):
        expand({"groups": [train, {**probe, "config": {"encoder": "gaussian"}}]})
    with pytest.raises(UserError, match=r"a registry axis is \{registry: pretext"):
        expand({"groups": [{"kind": "train", "axes": [{"method": {"registry": "losses"}}]}]})
    with pytest.raises(UserError, match=r"unknown scale 'huge'"):
        expand({"groups": [{"kind": "train", "axes": [{"method": {"registry": "pretext", "config": "huge"}}]}]})
    with pytest.raises(UserError, match=r"set must be a mapping"):
        expand({"groups": [{"kind": "probe", "set": [3]}]})
    with pytest.raises(UserError, match=r"variable_sets\.x: nope: not a variable of the spec"):
        expand({"variables": {"a": 1}, "variable_sets": {"x": {"values": {"nope": 1}}}, "groups": [{"kind": "probe"}]})


# -------------------------------------------------------------------------------------------------- dependencies


def _needs_spec(tiny: Path, train_data: Path) -> dict:
    """A train job and a probe job that needs it (the probe takes the training run as its encoder)."""
    return {"name": "needs", "groups": [
        {"kind": "train", "tag": "train",
         "config": {"task": "colorization", "model": {"name": "alexnet", "width": 0.125},
                    "data": {"train": str(train_data), "crop": 64, "batch_size": 4, "workers": 0}, "steps": 2,
                    "checkpoint_every": 2, "log_every": 1, "device": "cpu"}},
        {"kind": "probe", "tag": "probe", "needs": {"encoder": "train"},
         "config": {"data": str(tiny / "imagenet"), "layers": ["conv1"], "epochs": 1, "crop": 64, "resize": 64,
                    "batch_size": 8, "workers": 0, "device": "cpu"}}]}


def test_a_failed_dependency_blocks_its_dependents_and_a_local_dependent_starts_after_it(tiny, tmp_path, capsys,
                                                                                         one_thread):
    broken = expand_spec(_needs_spec(tiny, tmp_path / "nowhere"))
    train, probe = broken.jobs
    folder = tmp_path / "broken"
    report = submit_sweep(broken, folder, "debug", progress=False, echo=lambda m: None)
    assert report.failed == [train.id] and report.blocked == {probe.id: train.id}
    assert read_attempts(folder / probe.id) == [] and missing_need(probe, folder) == train.id
    assert cli_main(["sweep", str(folder), "--cluster", "debug", "--no-progress"]) == 1
    assert "1 blocked" in capsys.readouterr().out
    assert cli_main(["sweep", str(folder), "--status"]) == 0
    assert re.search(rf"{probe.id}\s+probe\s+missing .* needs {train.id}, which has no result yet",
                     capsys.readouterr().out)
    # The local runner (subprocesses, two at a time) starts the probe only when training has its result.
    sweep = expand_spec(_needs_spec(tiny, tiny / "imagenet" / "train"))
    train, probe = sweep.jobs
    folder = tmp_path / "local"
    report = submit_sweep(sweep, folder, "local", parallel=2, progress=False, echo=lambda m: None)
    assert report.succeeded == [train.id, probe.id]
    trained, probed = read_result(folder / train.id), read_result(folder / probe.id)
    assert probed["job"]["started"] >= trained["job"]["finished"]
    assert probed["job"]["needs"] == {"encoder": train.id}
    assert probed["result"]["encoder"]["weights_path"] == trained["result"]["checkpoint"]


class _FakeSlurm:
    """Stands in for submitit's SLURM executor: records each array's jobs and its additional #SBATCH options."""

    arrays: list[tuple[list[str], dict]] = []

    def __init__(self, kind, folder, profile):
        self.extra, self.jobs = dict(profile.additional_parameters), []

    def update_parameters(self, **kwargs):
        pass

    def batch(self):
        import contextlib

        return contextlib.nullcontext()

    def submit(self, sweep_job):
        self.jobs.append(sweep_job.job["id"])
        if len(self.jobs) == 1:
            _FakeSlurm.arrays.append((self.jobs, self.extra))
        return type("Job", (), {"job_id": f"{100 + len(_FakeSlurm.arrays)}_{len(self.jobs) - 1}"})()


def test_slurm_holds_each_tasks_evaluations_until_its_training_ended(twin_task, tmp_path, monkeypatch):
    sweep = load_spec("pretexts")
    monkeypatch.setattr(runner, "make_executor", _FakeSlurm)
    _FakeSlurm.arrays = []
    report = submit_sweep(sweep, tmp_path / "sweep", "slurm", progress=False, echo=lambda m: None)
    assert sorted(report.submitted) == sorted(j.id for j in sweep.jobs) and not report.blocked
    (first, free), *rest = _FakeSlurm.arrays
    train = {j.id: j for j in sweep.jobs if j.kind == "train"}
    # One array of what waits for nothing: the trainings and the baselines' evaluations, held by nothing.
    assert free == {} and set(first) == {j.id for j in sweep.jobs if not j.needs}
    held = {}
    for ids, extra in rest:  # then one array per training, held until it ended well
        needs = {sweep.job(i).needs.get("encoder") for i in ids}
        assert len(needs) == 1 and None not in needs
        need = needs.pop()
        assert extra == {"dependency": f"afterok:{report.cluster_job_ids[need]}", "kill_on_invalid_dep": "yes"}
        held.setdefault(need, set()).update(ids)
    assert {k: len(v) for k, v in held.items()} == {t: PER_ENCODER for t in train}
    # A later submission waits for trainings still pending from the first, and blocks on one without a result.
    probe = next(j for j in sweep.jobs if j.needs)
    need = probe.needs["encoder"]
    assert slurm_dependencies(probe, tmp_path / "sweep", {}, {need: "7_0"}, set()) == ["7_0"]
    assert slurm_dependencies(probe, tmp_path / "sweep", {}, {}, {need}) is None
    assert slurm_dependencies(probe, tmp_path / "sweep", {}, {}, set()) == need


# ---------------------------------------------------------------------------------------------------- end to end


TINY_VARS = {
    "train_set": "{steps: 2, checkpoint_every: 2, val_every: 2, log_every: 1, data.batch_size: 4, data.workers: 0, "
                 "data.val_images: 4, model.width: 0.125, device: cpu}",
    "probe_set": "{crop: 64, resize: 64, layers: [conv1, conv3], epochs: 1, batch_size: 8, workers: 0, "
                 "kmeans_images: 8, device: cpu}",
    "pascal_set": "{optim.iterations: 1, rescale.images: 4, device: cpu}",
    "width": "0.125",
}


def _cli_vars(tiny: Path, cache: Path, **extra: str) -> list[str]:
    given = {"data": str(tiny), "cache": str(cache), **TINY_VARS, **extra}
    return [a for k, v in given.items() for a in ("--var", f"{k}={v}")]


@pytest.mark.slow
def test_end_to_end_in_process_report_and_features_extracted_once_per_encoder(tiny, tmp_path, monkeypatch,
                                                                               capsys, one_thread):
    for name in [t for t in TASKS if t not in ("colorization", "rotation")]:
        monkeypatch.delitem(TASKS, name)  # a gray-trained and a colour-trained task keep the run short
    fills: list[tuple[str, str]] = []
    real_fill = probe_run._fill_cache

    def counting_fill(cache, split, *args, **kwargs):
        fills.append((cache.key, split))
        return real_fill(cache, split, *args, **kwargs)

    monkeypatch.setattr(probe_run, "_fill_cache", counting_fill)
    folder, cache, out = tmp_path / "sweep", tmp_path / "cache", tmp_path / "results"
    args = ["sweep", "pretexts", "--dir", str(folder), "--cluster", "debug", "--no-progress"]
    assert cli_main(args + _cli_vars(tiny, cache)) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/result.json")}
    methods = ["colorization", "rotation", *BASELINES]
    assert len(records) == 2 + len(methods) * PER_ENCODER
    skipped = {k: r["result"]["reason"] for k, r in records.items() if r["result"].get("status") == "skipped"}
    probe_skips = [k for k in records if k.startswith("probe-colorization-color-")]
    cls_skips = [k for k in records if re.match(r"cls-fc(8|6-8)-colorization-color-", k)]
    assert sorted(skipped) == sorted(probe_skips + cls_skips) and len(cls_skips) == 2
    assert "trained on gray L" in skipped[probe_skips[0]]
    assert all("conv1 frozen" in skipped[k] for k in cls_skips)
    # Each encoder (and input mode) probed had its features computed once, both splits, for all its layers.
    probes = [r for k, r in records.items() if k.startswith("probe-") and k not in skipped]
    assert len(fills) == 2 * len(probes) == len(set(fills))
    assert all(r["result"]["cache"]["computed"] == {"train": ["conv1", "conv3"], "val": ["conv1", "conv3"]}
               for r in probes)
    # A second probe run of the same encoders (other head settings: new jobs) reads every feature from the cache.
    fills.clear()
    again = _cli_vars(tiny, cache, probe_set=TINY_VARS["probe_set"].replace("epochs: 1", "epochs: 2"))
    assert cli_main(args + again + ["--job", "probe-*"]) == 0
    rerun = [json.loads(p.read_text()) for p in folder.glob("probe-*/result.json")]
    second = [r for r in rerun if r["job"]["config"].get("epochs") == 2 and r["result"].get("status") != "skipped"]
    assert fills == [] and len(second) == len(probes)
    assert all(r["result"]["cache"]["computed"] == {"train": [], "val": []} for r in second)
    capsys.readouterr()

    assert cli_main(["report", str(folder), "-o", str(out)]) == 0
    for name in ("figure7.png", "figure7.md", "figure7.csv", "table2.md", "table2.csv", "comparison.md",
                 "runs.json", "runs.csv", "README.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    names = {"colorization": "colorization", "rotation": "rotation", "gaussian": "Gaussian",
             "kmeans": r"k-means \(Krähenbühl et al\.\)"}
    table2 = (out / "table2.md").read_text()
    measured = [line for line in table2.splitlines() if "(measured)" in line]
    assert len(measured) == len(methods) * 2  # one row per method and input mode
    cells = {}
    own = {"colorization": "gray", "rotation": "color", "gaussian": "gray", "kmeans": "gray"}  # trained inputs
    for method, name in names.items():
        for mode in ("gray", "color"):
            row = next(line for line in measured if re.match(rf"\| \*\*{name} \({mode}\)\*\*", line))
            # mean ± half-width in every column: detection and segmentation on the network's own input only
            assert row.count("±") == (5 if mode == own[method] else 3), (method, mode)
            cells[method, mode] = row.split("|")[4:9]
    # the skipped colour fc8 / fc6-8 runs of the gray-trained network show the gray runs' numbers (the paper's too)
    assert cells["colorization", "color"][:2] == cells["colorization", "gray"][:2]
    assert "| random scores (chance) |" in table2
    figure7 = (out / "figure7.md").read_text()
    assert len([line for line in figure7.splitlines() if "(measured)" in line]) == len(methods) * 2 - 1
    comparison = (out / "comparison.md").read_text()
    for method, name in names.items():  # a sentence per method against colorization and the Gaussian baseline
        assert re.search(rf"^- \*\*{name} \(gray\)\*\* against", comparison, re.M), method
    assert re.search(r"^- \*\*rotation \(color\)\*\* against colorization \(gray\): probes .*\. Against Gaussian "
                     r"\(color\): probes .*; PASCAL .*\.$", comparison, re.M)
    # ... beside the published rows of the same method, with their protocol and backbone
    assert re.search(r"\*\*colorization \(gray\)\*\* \| gray \| measured: embedded.*\n"
                     r"\| Colorization \(Zhang et al\. 2016\) \[p1\] \| gray \| published: imagenet \| 12\.5 \|",
                     comparison)
    assert "RotNet (Gidaris et al. 2018) [P" in comparison and "No published probe row (in that file) for: rotation" \
        in comparison and "one-tower AlexNet (64-192-384-256-256)" in comparison
    assert "protocol: frozen network, one linear (logistic) classifier per layer" in comparison
    assert re.search(r"`probe-colorization-color-s0-[0-9a-f]{8}`: colour input to a network trained on gray L",
                     comparison)
    # runs.json / runs.csv: every run's config, seed and the sha256 of the weights it is about
    runs = json.loads((out / "runs.json").read_text())
    assert runs["command"].startswith("xchannel sweep pretexts --var data=") and runs["variable_set"] == "embedded"
    by_id = {r["job"]: r for r in runs["runs"]}
    assert set(by_id) == {j.id for j in load_sweep(folder).jobs}  # the sweep as last expanded: the second probes
    trains = {r["labels"]["method"]: r for r in runs["runs"] if r["kind"] == "train"}
    for method, run in trains.items():
        assert run["checkpoint_sha256"] == sha256_file(run["checkpoint"]) and run["resolved_config"]["task"] == method
    for run in runs["runs"]:
        assert run["config"] and run["seed"] == 0 and run["seconds"] is not None and run["machine"]["cpus"] >= 1
        if run["needs"] and "skipped" not in run:
            assert run["checkpoint_sha256"] == trains[run["labels"]["method"]]["checkpoint_sha256"]
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == len(runs["runs"]) and {r["state"] for r in rows} == {"done", "skipped"}
    assert all(json.loads(r["config"]) for r in rows)


@pytest.mark.slurm
def test_on_the_real_cluster_a_dependent_array_starts_after_its_training_and_a_failed_one_cancels_its_own(
        slurm_cluster, tiny, tmp_path):
    from xchannel.sweep.cluster import load_profile
    from xchannel.sweep.runner import wait_for

    good = _needs_spec(tiny, tiny / "imagenet" / "train")["groups"]
    bad = _needs_spec(tiny, tmp_path / "nowhere")["groups"]
    spec = {"name": "needs-slurm", "groups": [good[0], {**bad[0], "tag": "broken"}, good[1],
                                              {**bad[1], "tag": "orphan", "needs": {"encoder": "broken"}}]}
    sweep = expand_spec(spec)
    train, broken, probe, orphan = sweep.jobs
    folder = tmp_path / "sweep"
    profile = load_profile(Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.yaml", ["timeout_min=10"])
    report = submit_sweep(sweep, folder, "slurm", profile, progress=False, echo=lambda m: None)
    assert sorted(report.submitted) == sorted(j.id for j in sweep.jobs)
    states = {s.id: s for s in wait_for(sweep, folder, [j.id for j in sweep.jobs], poll_s=1.0, timeout_s=300,
                                        progress=False)}
    assert states[train.id].state == "done" and states[probe.id].state == "done", runner.format_status(
        list(states.values()))
    assert read_result(folder / probe.id)["job"]["started"] >= read_result(folder / train.id)["job"]["finished"]
    assert states[broken.id].state == "failed"
    # The orphan never ran: SLURM cancelled it when its dependency failed (--kill-on-invalid-dep=yes).
    assert states[orphan.id].state == "failed" and read_attempts(folder / orphan.id) == []
    assert states[orphan.id].cluster_state.split()[0] == "CANCELLED"


def test_the_dependency_options_reach_the_sbatch_script():
    from submitit.slurm.slurm import _make_sbatch_string

    from xchannel.sweep.runner import dependency_parameters

    script = _make_sbatch_string(command="true", folder="/tmp/x", additional_parameters=dependency_parameters(
        ["101_0", "101_3"]))
    assert "#SBATCH --dependency=afterok:101_0:101_3" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
    assert dependency_parameters([]) == {}


# -------------------------------------------------------------------------------------------- comparison pieces


def _probe(method_hits: list[list[int]]) -> dict:
    """A probe result of one layer (conv1) with per-image hits (one row per head seed) on 8 images."""
    import numpy as np

    from xchannel.probe.run import pack_hits

    hits = np.array(method_hits, dtype=bool)
    return {"kind": "linear_probe", "encoder": {"spec": "m", "input_mode": "gray", "name": "m"},
            "data": {"name": "embedded", "path": "/d"}, "protocol": {"name": "zhang16-release"},
            "config": {"seed": 0}, "layer_order": ["conv1"],
            "layers": {"conv1": {"top1": 100.0 * hits.mean(), "top5": 100.0}},
            "per_image": {"images": hits.shape[1], "top1_hits": {"conv1": [pack_hits(h) for h in hits]}}}


def _pascal(column: str, value: float, lo: float, hi: float) -> dict:
    return {"kind": "pascal", "table2_column": column, "row": {"dataset": "embedded"},
            "headline": {"value": value, "uncertainty": {"ci95": [lo, hi], "half_width": (hi - lo) / 2}}}


def test_comparison_verdicts_pooled_seeds_and_published_rows_by_options():
    from xchannel.metrics.uncertainty import accuracy_interval
    from xchannel.reports import published
    from xchannel.reports.comparison import (Evaluation, MethodRow, method_rows, pascal_differences,
                                             pascal_value, probe_differences, published_for, sentence)
    from xchannel.reports.figure7 import merge_probe_results, pooled_hits

    right, wrong = [1] * 40, [0] * 40
    good = _probe([right, right])
    bad = _probe([wrong, wrong])
    rows = method_rows([Evaluation("rotation", "color", good), Evaluation("colorization", "gray", bad),
                        Evaluation("gaussian", "color", bad),
                        Evaluation("rotation", "color", _pascal("det", 30, 25, 35)),
                        Evaluation("colorization", "color", _pascal("det", 10, 5, 15)),
                        Evaluation("gaussian", "color", _pascal("det", 28, 20, 36))], {})
    rotation = rows[0]
    assert [(r.method, r.input_mode) for r in rows] == [("rotation", "color"), ("colorization", "gray"),
                                                        ("colorization", "color"), ("gaussian", "color")]
    (diff,) = probe_differences(rotation, rows[1], ["conv1"])
    assert diff.verdict == "ahead" and diff.value == pytest.approx(100.0)
    assert [d.verdict for d in pascal_differences(rotation, rows[2], ["det", "seg"])] == ["ahead"]
    assert [d.verdict for d in pascal_differences(rotation, rows[3], ["det"])] == ["not separable"]
    text = sentence(rotation, rows, ["conv1"], ["det"])
    assert text == ("**rotation (color)** against colorization (gray): probes ahead at conv1 +100.0; PASCAL "
                    "(against colorization (color)) ahead at det +20.0. Against Gaussian (color): probes ahead at "
                    "conv1 +100.0; PASCAL not separable anywhere (det +2.0).")
    # Two training seeds of one method: one line, its interval over the images and every head seed of both.
    seeds = [_probe([right[:20] + wrong[:20]] * 3), _probe([wrong[:10] + right[:30]] * 3)]
    merged = merge_probe_results(seeds)[0]["layers"]["conv1"]
    pooled = accuracy_interval(pooled_hits(seeds, "conv1"))
    assert merged["runs"] == 2 and merged["top1_ci"]["ci95"] == [pooled.lo, pooled.hi]
    assert merged["top1"] == pytest.approx(pooled.value) == pytest.approx(62.5)
    assert pooled_hits(seeds, "conv1").shape == (6, 40)
    assert pascal_value([_pascal("det", 10, 5, 15), _pascal("det", 20, 12, 30)]) == (15.0, 5, 30)
    # Published rows of a task are those whose options agree with the options it was trained with.
    linear = published.load("pretext_imagenet_linear")
    names = lambda method, options: [r["name"] for r in published_for(MethodRow(method, "color", options=options),
                                                                       linear)]
    assert names("autoencoder", {"denoise": 0.5, "loss_on": "all"}) == ["Lab(drop50) → Lab (denoising autoencoder)"]
    assert names("splitbrain", {"halves": "both", "loss": "cl"}) == ["Split-brain autoencoder (cl,cl)"]
    assert names("kmeans", None) == ["Krähenbühl et al. (k-means)"] and names("rotation", {}) == []
