"""Cluster profiles, submitit executors, and real jobs on this machine's one-node SLURM cluster.

The ``slurm``-marked tests submit through ``make_executor("slurm", ...)`` to the cluster that
``slurm/local-cluster.sh`` runs (fixture ``slurm_cluster`` in conftest.py). Jobs call functions that the job's
interpreter can import (stdlib, xchannel): the test module itself is not importable from a job.
"""

from __future__ import annotations

import operator
import shutil
import time
from pathlib import Path

import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import _make_sbatch_string

from xchannel.errors import UserError
from xchannel.sweep.cluster import ClusterProfile, executor_parameters, load_profile, make_executor, probe_job

REPO = Path(__file__).resolve().parents[1]
LOCAL_PROFILE = REPO / "slurm" / "local-cluster.yaml"
GPU_PROFILE = REPO / "slurm" / "example-gpu.yaml"


# ------------------------------------------------------------------------------------------- profiles (no SLURM)

def test_profile_unknown_key_is_an_error_naming_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("partition: gpu\ngpus_per_nodes: 8\n")
    with pytest.raises(UserError, match=r"typo\.yaml.*'gpus_per_nodes'"):
        load_profile(path)
    path.write_text("partition: gpu\ngpus_per_node: eight\n")
    with pytest.raises(UserError, match=r"gpus_per_node: expected an integer"):
        load_profile(path)
    path.write_text("additional_parameters: {output: /tmp/x.log}\n")
    with pytest.raises(UserError, match=r"typo\.yaml: additional_parameters\['output'\]"):
        load_profile(path)
    path.write_text("timeout_min: 1\nsignal_delay_s: 90\n")
    with pytest.raises(UserError, match=r"signal_delay_s .* shorter than the time limit"):
        load_profile(path)
    with pytest.raises(UserError, match="kind 'local' runs on this one machine"):
        executor_parameters("local", ClusterProfile(nodes=2))
    with pytest.raises(UserError, match="not one of"):
        executor_parameters("kubernetes", ClusterProfile())  # type: ignore[arg-type]


def test_gpu_profile_maps_every_field_onto_submitit_slurm_parameters(tmp_path):
    profile = load_profile(GPU_PROFILE, ["partition=a100-long", "mem_gb=200.5"])
    ctor, params = executor_parameters("slurm", profile)
    assert ctor == {"slurm_max_num_timeout": 5}
    assert params == {
        "name": "xchannel", "timeout_min": 720, "nodes": 1, "tasks_per_node": 4, "cpus_per_task": 8,
        "gpus_per_node": 4, "mem_gb": 200.5, "slurm_partition": "a100-long", "slurm_account": "my-project",
        "slurm_qos": "normal", "slurm_constraint": "a100", "slurm_array_parallelism": 16,
        "slurm_signal_delay_s": 120, "slurm_additional_parameters": {"mail_type": "END,FAIL", "hint": "nomultithread"},
        "slurm_setup": ["module load cuda/12.4", "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"],
    }
    # Local runs keep the job's shape but drop what only a scheduler understands.
    ctor, params = executor_parameters("local", profile)
    assert ctor == {"local_max_num_timeout": 5}
    assert set(params) == {"name", "timeout_min", "tasks_per_node", "gpus_per_node", "local_setup"}
    # The local cluster's profile: no GPU line, no memory request, 2 array tasks at a time.
    _, params = executor_parameters("slurm", load_profile(LOCAL_PROFILE))
    assert "gpus_per_node" not in params and "mem_gb" not in params
    assert params["slurm_partition"] == "debug" and params["slurm_array_parallelism"] == 2


def test_local_and_debug_executors_run_jobs(tmp_path):
    profile = load_profile(LOCAL_PROFILE, ["timeout_min=5"])
    assert make_executor("debug", tmp_path / "debug", profile).submit(operator.mul, 6, 7).result() == 42
    job = make_executor("local", tmp_path / "local", profile).submit(probe_job)
    info = job.result()
    assert info["SUBMITIT_EXECUTOR"] == "local" and "SLURM_JOB_ID" not in info


# ----------------------------------------------------------------------------------- real jobs on the cluster

def _executor(folder: Path) -> submitit.Executor:
    return make_executor("slurm", folder / "%j", load_profile(LOCAL_PROFILE, ["timeout_min=5"]))


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slurm
def test_job_runs_under_slurm_and_returns_result(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(probe_job)
    info = job.result()
    assert info["SLURM_JOB_ID"] == job.job_id
    assert info["SLURM_JOB_PARTITION"] == "debug" and info["SLURM_JOB_ACCOUNT"] == "xchannel"
    assert info["SUBMITIT_EXECUTOR"] == "slurm"


@pytest.mark.slurm
def test_map_array_returns_every_task_result(slurm_cluster, tmp_path):
    jobs = _executor(tmp_path).map_array(operator.mul, [1, 2, 3], [10, 20, 30])
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert [j.result() for j in jobs] == [10, 40, 90]
    # at most array_parallelism=2 tasks at once (one per core)
    assert "#SBATCH --array=0-2%2" in (tmp_path / array_id / f"{array_id}_submission.sh").read_text()


@pytest.mark.slurm
def test_exception_in_job_comes_back_as_failed_job_error(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(int, "not-a-number")
    with pytest.raises(FailedJobError, match=r"ValueError: invalid literal for int\(\) with base 10: 'not-a-number'"):
        job.result()


@pytest.mark.slurm
def test_scancel_shows_cancelled_in_accounting(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(time.sleep, 300)
    state = lambda: slurm_cluster.command("squeue", "-h", "-j", job.job_id, "-o", "%T").strip()  # noqa: E731
    _wait(lambda: state() == "RUNNING", 60, f"job {job.job_id} to run")
    slurm_cluster.command("scancel", job.job_id)
    sacct = lambda: slurm_cluster.command("sacct", "-n", "-X", "-P", "-j", job.job_id, "-o", "State")  # noqa: E731
    _wait(lambda: sacct().startswith("CANCELLED"), 30, "sacct to report CANCELLED")
    # submitit reads the same accounting: the job is finished, and result() raises instead of waiting forever.
    _wait(lambda: job.done(force_check=True), 30, "submitit to see the job finished")
    assert job.state.startswith("CANCELLED")
    # submitit then waits up to 15 s for a result file to show up on a slow shared filesystem; the job folder
    # is on the local disk here, so 1 s is plenty (submitit's own tests set it to 0).
    job._results_timeout_s = 1
    with pytest.raises(UncompletedJobError, match="CANCELLED"):
        job.result()


# ------------------------------------------------------------- submitit's own SLURM executor (no cluster)

def test_slurm_executor_parameters_and_sbatch_lines(tmp_path):
    """No cluster needed, but submitit's SlurmExecutor refuses to exist without SLURM's srun on PATH: on a machine
    without SLURM packages this runs once the ``slurm`` tests above have installed them (it is last for that)."""
    if shutil.which("srun") is None:
        pytest.skip("submitit's SlurmExecutor needs SLURM's srun on PATH (slurm/local-cluster.sh start installs "
                    "it); the pure mapping is tested by test_gpu_profile_maps_every_field_...")
    executor = make_executor("slurm", tmp_path, load_profile(GPU_PROFILE))
    assert isinstance(executor, submitit.AutoExecutor) and executor.cluster == "slurm"
    p = executor.parameters  # submitit's SlurmExecutor names
    assert (p["partition"], p["account"], p["qos"], p["constraint"]) == ("gpu", "my-project", "normal", "a100")
    assert (p["nodes"], p["ntasks_per_node"], p["cpus_per_task"], p["gpus_per_node"]) == (1, 4, 8, 4)
    assert (p["mem"], p["time"], p["array_parallelism"], p["job_name"]) == ("160GB", 720, 16, "xchannel")
    sbatch = _make_sbatch_string(command="python -m job", folder=tmp_path, map_count=40, **p).splitlines()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=my-project", "#SBATCH --qos=normal",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=160GB", "#SBATCH --time=720", "#SBATCH --constraint=a100",
                 "#SBATCH --signal=USR2@120", "#SBATCH --array=0-39%16", "#SBATCH --mail-type=END,FAIL",
                 "#SBATCH --hint=nomultithread", "module load cuda/12.4"]:
        assert line in sbatch
