"""Sweeps on the real one-node SLURM cluster (slurm/local-cluster.sh, fixture ``slurm_cluster``).

One sweep of three tiny training jobs goes in as one job array (at most two tasks at a time, one core each):

* ``requeued``: while it trains, ``scontrol requeue`` kills it (SIGTERM); the engine checkpoints at the step
  boundary, SLURM starts it again, and it resumes from that checkpoint;
* ``signalled``: while it trains, ``scancel --signal=USR2`` (what SLURM sends before a time limit or with
  preemption) reaches submitit's handler; the engine checkpoints, submitit calls ``checkpoint()`` and requeues it;
* ``broken``: its data folder does not exist; it fails without affecting the others, and the status shows the
  end of its error from submitit's stderr log.

Both interrupted runs must end bit-identical (deterministic=true) to an uninterrupted run of the same config,
made meanwhile in this process on one thread, as the jobs are (one CPU per task).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import wait_for_steps
import torch

from xchannel.cli import main as cli_main
from xchannel.sweep.cluster import load_profile
from xchannel.sweep.jobs import read_attempts, read_json, read_result
from xchannel.sweep.runner import format_status, submit_sweep, wait_for
from xchannel.sweep.spec import expand_spec
from xchannel.train.checkpoint import checkpoint_path
from xchannel.utils.io import safe_torch_load

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
STEPS = 60
TRAIN = {"model": {"name": "alexnet", "width": 0.125}, "data": {"crop": 64, "batch_size": 4, "workers": 0},
         "steps": STEPS, "checkpoint_every": 1000, "log_every": 1, "deterministic": True, "seed": 11,
         "optim": {"lr": 1e-3}, "device": "cpu"}


def _spec(images: Path, missing: Path) -> dict:
    good = {**TRAIN, "data": {**TRAIN["data"], "train": str(images)}}
    bad = {**TRAIN, "steps": 2, "data": {**TRAIN["data"], "train": str(missing)}}
    return {"name": "slurm-test", "groups": [{"kind": "train", "tag": "requeued", "config": good},
                                             {"kind": "train", "tag": "signalled", "config": good},
                                             {"kind": "train", "tag": "broken", "config": bad}]}


@pytest.fixture(scope="module")
def finished_sweep(slurm_cluster, tmp_path_factory):
    """Submit the array, interrupt two jobs while they train, make the reference run, wait for the end."""
    from xchannel.data.synthetic import SyntheticSpec, make_dataset

    tmp = tmp_path_factory.mktemp("sweep-slurm")
    make_dataset(tmp / "data", SyntheticSpec(classes=2, train_per_class=8, val_per_class=2, voc_trainval=0, seg_val=0,
                                             voc_test=0, voc2012=False, size=64), overwrite=True)
    sweep = expand_spec(_spec(tmp / "data" / "imagenet" / "train", tmp / "nowhere"))
    requeued, signalled, broken = sweep.jobs
    folder = tmp / "sweep"
    profile = load_profile(REPO / "slurm" / "local-cluster.yaml", ["timeout_min=10"])
    report = submit_sweep(sweep, folder, "slurm", profile, progress=False, echo=lambda m: None)
    ids = report.cluster_job_ids
    wait_for_steps(folder / requeued.id / "run", 5, timeout=180.0)
    slurm_cluster.command("scontrol", "requeue", ids[requeued.id])
    wait_for_steps(folder / signalled.id / "run", 5, timeout=180.0)
    slurm_cluster.command("scancel", "--signal=USR2", ids[signalled.id])

    # The uninterrupted reference, in this process while the cluster runs the rest (one thread, like the jobs).
    reference = expand_spec({"name": "reference", "groups": [{"kind": "train", "tag": "reference",
                                                              "config": requeued.config}]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        submit_sweep(reference, tmp / "reference", "here", echo=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    states = wait_for(sweep, folder, [j.id for j in sweep.jobs], poll_s=1.0, timeout_s=600, progress=False)
    return {"sweep": sweep, "folder": folder, "report": report, "states": states, "profile": profile,
            "reference": tmp / "reference" / reference.jobs[0].id / "run"}


def test_a_job_array_of_three_collects_results_and_shows_the_failed_jobs_error(finished_sweep, capsys):
    sweep, folder, report = finished_sweep["sweep"], finished_sweep["folder"], finished_sweep["report"]
    requeued, signalled, broken = sweep.jobs
    assert report.submitted == [j.id for j in sweep.jobs]
    # One array: array job id shared, task ids 0, 1, 2.
    subs = [read_json(folder / j.id / "submission.json") for j in sweep.jobs]
    arrays = {s["job_id"].split("_")[0] for s in subs}
    assert len(arrays) == 1 and sorted(s["job_id"].split("_")[1] for s in subs) == ["0", "1", "2"]
    assert all(s["cluster"] == "slurm" for s in subs)
    states = {s.id: s for s in finished_sweep["states"]}
    assert states[requeued.id].state == "done" and states[signalled.id].state == "done", \
        format_status(finished_sweep["states"])
    assert states[broken.id].state == "failed" and states[broken.id].cluster_state == "FAILED"
    for job in (requeued, signalled):
        assert read_result(folder / job.id)["result"]["step"] == STEPS
    # --status from a new process: sacct through submitit; the failed job's stderr tail.
    assert cli_main(["sweep", str(folder), "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{broken.id}\s+train\s+failed \(FAILED\)\s+1\s+slurm:{subs[2]['job_id']}", out)
    assert re.search(r"\| xchannel\.errors\.UserError: .*nowhere: no such image folder or list", out)
    assert "3 jobs: 2 done, 1 failed" in out
    # Logs are reachable from the job folder; re-running submits nothing that has a result.
    assert (folder / requeued.id / "logs" / subs[0]["job_id"]).resolve().is_dir()
    again = submit_sweep(sweep, folder, "slurm", finished_sweep["profile"], jobs=["requeued-*", "signalled-*"],
                         progress=False, echo=lambda m: None)
    assert again.submitted == [] and sorted(again.done) == sorted([requeued.id, signalled.id])


def test_preempted_jobs_resume_from_their_checkpoint_and_end_bit_identical(finished_sweep):
    sweep, folder = finished_sweep["sweep"], finished_sweep["folder"]
    requeued, signalled, _ = sweep.jobs
    reference = safe_torch_load(checkpoint_path(finished_sweep["reference"], STEPS))["state_dict"]
    for job, requeues in ((requeued, 0), (signalled, 1)):
        first, second = read_attempts(folder / job.id)
        assert first["resumed_from"] is None and first["slurm_restart_count"] == 0
        # SLURM started it again (restart count 1); it began at the checkpoint made on the signal, not at 0.
        assert second["slurm_restart_count"] == 1 and 5 <= second["resumed_from"] < STEPS
        assert second["requeues"] == requeues  # USR2: submitit called checkpoint(); SIGTERM: SLURM requeued it
        steps = [json.loads(line)["step"] for line in (folder / job.id / "run" / "metrics.jsonl").read_text()
                 .splitlines()]
        assert steps[-1] == STEPS and steps.count(second["resumed_from"] + 1) == 1  # nothing trained twice
        weights = safe_torch_load(checkpoint_path(folder / job.id / "run", STEPS))["state_dict"]
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), f"{job.id} differs from reference"
