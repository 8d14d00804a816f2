"""The colorization objective and the training engine: losses, resume-to-the-bit, faults, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_TASKS, with_task, write_image_folder

from xchannel import color as C
from xchannel.errors import UserError
from xchannel.pretext.losses import l2_regression, rebalanced_cross_entropy
from xchannel.train import checkpoint as ckpt
from xchannel.train.config import TrainConfig
from xchannel.train.engine import ResumableSampler, TrainingError, train
from xchannel.train.distributed import World
from xchannel.utils.config import build_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp: Path, images: Path, task: str = "colorization", **over) -> TrainConfig:
    base = {"model": {"name": "alexnet", "width": 0.125}, "data": {"train": str(images), "val": str(images), "crop": 64,
            "batch_size": 4, "workers": 0, "val_images": 8}, "steps": 6, "checkpoint_every": 2, "val_every": 100,
            "log_every": 1, "deterministic": True, "seed": 3, "out": str(tmp / "run"),
            "optim": {"lr": 1e-3}}
    base = with_task(base, task)
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(base))
    return build_config(TrainConfig, p)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


def test_loss_equals_eq2_with_dense_targets_and_ignores_gray_images():
    g = torch.Generator().manual_seed(0)
    ab = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64) * 40
    ab[2] = 0.0  # a gray image: no loss
    logits = torch.randn(3, 313, 5, 5, generator=g, dtype=torch.float64)
    w = C.rebalance_weights(C.reference_prior(), 0.5, 5.0)
    idx, wts = C.soft_encode_sparse(ab)
    mask = C.has_color(ab)
    v = w[idx[:, :1]]
    got = rebalanced_cross_entropy(logits, idx, wts, v, mask)
    Z = C.soft_encode(ab)
    dense = -(Z * logits.log_softmax(1)).sum(1)  # N x H x W
    vz = w[Z.argmax(1)]
    expect = (vz * dense)[:2].sum() / (2 * 25)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-6)
    # lambda = 1 (no rebalancing) is the plain soft cross-entropy
    ones = C.rebalance_weights(C.reference_prior(), 1.0, 5.0)[idx[:, :1]]
    torch.testing.assert_close(rebalanced_cross_entropy(logits, idx, wts, ones, mask).double(),
                               dense[:2].mean(), rtol=1e-5, atol=1e-6)
    # Eq. 1
    pred = torch.zeros_like(ab)
    torch.testing.assert_close(l2_regression(pred, ab, mask).double(), 0.5 * ab[:2].pow(2).sum(1).mean(), rtol=1e-6, atol=1e-6)


def test_sampler_restarts_at_any_step():
    world = World()
    full = ResumableSampler(20, 4, seed=1, world=world)
    it = iter(full)
    seq = [next(it) for _ in range(4 * 12)]  # 12 batches: spans epochs (5 batches each)
    for start in (0, 3, 5, 7):
        it2 = iter(ResumableSampler(20, 4, seed=1, world=world, start_step=start))
        assert [next(it2) for _ in range(8)] == seq[start * 4 : start * 4 + 8]
    # each epoch is a permutation; two ranks split it without overlap
    assert sorted(i for i, _ in seq[:20]) == list(range(20))
    r0, r1 = (iter(ResumableSampler(20, 2, 1, World(r, 2, 0))) for r in (0, 1))
    a, b = {next(r0)[0] for _ in range(10)}, {next(r1)[0] for _ in range(10)}
    assert not a & b and len(a | b) == 20


def _final_weights(run: Path) -> dict:
    step, path = ckpt.list_checkpoints(run)[0]
    return torch.load(path, weights_only=True)["state_dict"]


def _run_cli(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "xchannel", "train", str(cfg_path), "--no-progress", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if time.time() - t > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, folder):
    """SIGKILL at an arbitrary moment, SIGTERM (SLURM's warning): resuming gives bit-identical final weights."""
    ref_cfg = _cfg(tmp_path / "a", folder)
    summary = train(ref_cfg, progress=False)
    assert summary["status"] == "finished" and summary["step"] == 6
    assert summary["val"]["auc"] > 0 and (Path(ref_cfg.out) / "samples").is_dir()
    ref = _final_weights(Path(ref_cfg.out))

    # SIGKILL right after the step-2 checkpoint appeared (mid-step 3), then resume with another worker count
    cfg = _cfg(tmp_path / "b", folder, steps=6, data={"workers": 1})
    cfg_path = tmp_path / "b" / "cfg.yaml"
    proc = _run_cli(cfg_path)
    _wait_for(ckpt.checkpoint_path(Path(cfg.out), 2), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in ckpt.list_checkpoints(Path(cfg.out))]
    assert done and max(done) < 6, "the run was meant to be killed before the end"
    with pytest.raises(UserError, match="--resume"):
        train(cfg, progress=False)
    out = train(cfg, resume=True, progress=False)
    assert out["status"] == "finished"
    got = _final_weights(Path(cfg.out))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    # SIGTERM: checkpoint at the next step and exit with status 3 ("interrupted"), then resume
    cfg_c = _cfg(tmp_path / "c", folder, steps=6, checkpoint_every=100)
    proc = _run_cli(tmp_path / "c" / "cfg.yaml")
    _wait_for(Path(cfg_c.out) / "metrics.jsonl", proc)  # step 1 done
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3
    steps = [s for s, _ in ckpt.list_checkpoints(Path(cfg_c.out))]
    assert len(steps) == 1 and 1 <= steps[0] < 6
    train(cfg_c, resume=True, progress=False)
    got = _final_weights(Path(cfg_c.out))
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    # resuming a finished run does nothing and says so
    again = train(cfg_c, resume=True, progress=False)
    assert again["status"] == "already-finished"


@pytest.mark.parametrize("task", TINY_TASKS)
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, folder, monkeypatch, task):
    from xchannel.pretext import get_task

    cfg = _cfg(tmp_path, folder, task, steps=3, checkpoint_every=2, data={"val": None})
    cls = get_task(task)
    real = cls.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):  # fault injection: the 3rd loss is NaN
        calls["n"] += 1
        losses = real(self, model, batch)
        return {k: v * float("nan") for k, v in losses.items()} if calls["n"] == 3 else losses

    monkeypatch.setattr(cls, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss .* step 3.*ckpt_00000002\.pt"):
        train(cfg, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(Path(cfg.out))] == [2]
    assert ckpt.load_latest(Path(cfg.out))["step"] == 2


def test_config_is_strict_and_saved(tmp_path, folder):
    with pytest.raises(UserError, match="unknown key.*'lrr'"):
        build_config(TrainConfig, None, ["optim.lrr=1"])
    # a task's options are validated by the task's own config: colorization names the unknown key
    from xchannel.pretext import get_task

    with pytest.raises(UserError, match="unknown key.*'lamda'"):
        get_task("colorization")(build_config(TrainConfig, None, ["pretext.loss.lamda=1"]), torch.device("cpu"))
    # configs of the older layout (colorization's loss: and temperature: at the top level) still read
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("loss: {kind: l2}\ntemperature: 0.5\n")
    old = build_config(TrainConfig, legacy, ["loss.lam=1.0"])
    assert old.pretext == {"loss": {"kind": "l2", "lam": 1.0}, "temperature": 0.5}
    task = get_task("colorization")(old, torch.device("cpu"))
    assert task.opt.loss.kind == "l2" and task.opt.loss.lam == 1.0 and task.opt.temperature == 0.5
    p = tmp_path / "dup.yaml"
    p.write_text("steps: 1\nsteps: 2\n")
    with pytest.raises(UserError, match="duplicate key 'steps'"):
        build_config(TrainConfig, p)
    # "3e-5" is a string to YAML 1.1; a float field takes it as the number it means (strings stay strings)
    cfg = build_config(TrainConfig, None, ["optim.lr=3e-5", "optim.lr_values=[1E-5, 3e-6]", "out=1e-3"])
    assert cfg.optim.lr == 3e-5 and cfg.optim.lr_values == [1e-5, 3e-6] and cfg.out == "1e-3"
    with pytest.raises(UserError, match="expected a number"):
        build_config(TrainConfig, None, ["optim.lr=fast"])
    cfg = _cfg(tmp_path, folder, steps=1, data={"val": None})
    train(cfg, progress=False)
    saved = json.loads((Path(cfg.out) / "config.json").read_text())
    assert saved["pretext"] == to_dict(cfg)["pretext"] and saved["steps"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("task,port", [(task, 29533 + i) for i, task in enumerate(TINY_TASKS)])
def test_ddp_two_gloo_processes(tmp_path, folder, task, port):
    """Every task in two processes (split-brain's two towers with their dict of inputs are the network least like
    the others; rotation and supervised draw per-step labels)."""
    cfg = _cfg(tmp_path, folder, task, steps=3, checkpoint_every=3, data={"val": None, "batch_size": 2})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "xchannel", "train", str(tmp_path / "cfg.yaml"), "--no-progress"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    # 2 processes x 2 images per step
    state = ckpt.load_latest(Path(cfg.out))
    assert state["step"] == 3 and state["task"] == task
    if task == "instance":  # every process's images moved their bank rows: 3 steps x 2 processes x 2 images
        from xchannel.pretext import get_task

        fresh = get_task(task)(cfg, torch.device("cpu"))
        fresh.set_training_data(16, [0] * 16)
        moved = (state["task_state"]["weight.image"] != fresh.banks["image"].weight).any(1)
        assert int(moved.sum()) == 12


def test_table1_variants_and_kmeans_init(tmp_path, folder):
    """Ours (class) (lambda = 1), Ours (L2) from a k-means init, Ours (L2, ft) from a classification checkpoint."""
    from xchannel.checkpoints import load_network
    from xchannel.colorize import predict_ab

    cls = _cfg(tmp_path / "cls", folder, steps=2, checkpoint_every=2, pretext={"loss": {"lam": 1.0}}, data={"val": None})
    train(cls, progress=False)
    cls_ckpt = ckpt.list_checkpoints(Path(cls.out))[0][1]
    l2 = _cfg(tmp_path / "l2", folder, steps=2, checkpoint_every=2, pretext={"loss": {"kind": "l2"}},
              model={"init": "kmeans", "init_batches": 2}, data={"val": None})
    assert train(l2, progress=False)["status"] == "finished"
    ft = _cfg(tmp_path / "ft", folder, steps=1, checkpoint_every=1, pretext={"loss": {"kind": "l2"}},
              model={"init_from": str(cls_ckpt)}, optim={"lr": 0.0}, data={"val": None})
    train(ft, progress=False)
    src = torch.load(cls_ckpt, weights_only=True)["state_dict"]
    got = _final_weights(Path(ft.out))
    # with lr = 0 every weight but the new 2-channel regression head is the classification network's
    shared = [k for k in src if got[k].shape == src[k].shape and "running" not in k and "num_batches" not in k]
    assert len(shared) > 10 and all(torch.equal(src[k], got[k]) for k in shared)
    model, info = load_network(ckpt.list_checkpoints(Path(ft.out))[0][1])
    assert info["loss_kind"] == "l2"
    L = torch.rand(1, 1, 64, 64) * 100
    assert predict_ab(model, L, loss_kind="l2").shape == (1, 2, 64, 64)
