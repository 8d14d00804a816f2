"""What a user relies on, proved end to end through the real commands: bad images are skipped, counted and named
(and never exhaust memory), bad VOC trees are refused by name, kills, signals and full disks lose nothing, a
crashed sweep job harms no other, and untrusted files and configs never run code.

The fault injections (a slow, torn checkpoint write; a signal sent from inside a training step; a disk that fills
up between two checkpoints) are made in the test, around the unchanged production code.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from badfiles import (BOMB_SIDE, UNUSABLE_REASONS, VOC_DAMAGE, break_voc, dirty_and_clean_folders, photo, voc_tree,
                      write_odd_valid, write_unusable)
from helpers import TINY_TASKS, with_task
from xchannel.cli import main
from xchannel.data import screen
from xchannel.data.images import BadImageError, check_image, is_grayscale, load_rgb
from xchannel.errors import UserError
from xchannel.train import checkpoint as ckpt
from xchannel.utils.io import safe_torch_load

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30


# --------------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """The networks here are tiny: one intra-op thread is as fast, and on a busy machine far faster than two
    threads waiting for each other."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A clean ImageFolder (photos + odd-but-valid files) and the same with the unusable files added."""
    return dirty_and_clean_folders(tmp_path_factory.mktemp("images"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``xchannel ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def train_config(path: Path, train: Path, out: Path, task: str = "colorization", **over) -> Path:
    """A YAML training config for a tiny AlexNet on ``task`` (colorization: 1/8 width, 32 px crops) on the CPU."""
    cfg = {"model": {"name": "alexnet", "width": 0.125},
           "data": {"train": str(train), "crop": 32, "batch_size": 4, "workers": 0},
           "steps": 4, "checkpoint_every": 2, "log_every": 1, "device": "cpu", "seed": 0, "out": str(out)}
    cfg = with_task(cfg, task)
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def skip_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "xchannel.data")


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


class CodeRunningPickle:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------------------------------
# Bad images


def test_every_odd_file_decodes_upright_rgb_and_every_unusable_one_is_refused_by_name(tmp_path):
    for kind, path in write_unusable(tmp_path / "bad").items():
        with pytest.raises(BadImageError) as exc:
            load_rgb(path)
        assert isinstance(exc.value, UserError) and exc.value.path == str(path)
        assert str(path) in str(exc.value) and UNUSABLE_REASONS[kind] in exc.value.reason, (kind, str(exc.value))

    odd = {kind: load_rgb(p) for kind, p in write_odd_valid(tmp_path / "odd").items()}
    assert all(img.mode == "RGB" for img in odd.values())
    rotated = np.asarray(odd["exif_rotated"]).astype(int)
    assert rotated.shape == (32, 16, 3) and rotated[4, 8, 0] > 200 and rotated[28, 8, 2] > 200  # red on top
    g16 = np.asarray(odd["png16"])[..., 0]
    assert g16.min() == 0 and g16.max() == 255 and 120 < g16.mean() < 135  # scaled by 255/65535, not clipped
    palette = np.asarray(odd["palette_transparency"])
    assert (palette[:, :10] == 255).all() and (palette[:, 10:] == (0, 255, 0)).all()  # transparent -> white
    cmyk = np.asarray(odd["cmyk_jpeg"]).astype(int)
    assert cmyk[12, 3, 0] > 230 and cmyk[12, 3, 1] < 30  # C=0 M=Y=255 K=0 is red
    assert odd["one_pixel"].size == (1, 1) and odd["smaller_than_crop"].size == (12, 10)
    assert is_grayscale(odd["gray_jpeg"]) and not is_grayscale(odd["cmyk_jpeg"])


def test_the_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = write_unusable(tmp_path)["bomb_png"]
    header = bomb.read_bytes()
    assert len(header) < 200  # a few bytes on disk ...
    assert struct.unpack(">II", header[16:24]) == (BOMB_SIDE, BOMB_SIDE)  # ... claiming 2.5 Gpx, 7.5 GB as RGB
    rss, peak = vm_rss_bytes(), peak_rss_bytes()
    for _ in range(3):
        with pytest.raises(BadImageError, match="too large"):
            load_rgb(bomb)
    assert peak_rss_bytes() <= max(peak, rss + GiB // 4)  # never decoded


def final_weights(run: Path, step: int = 4) -> dict[str, torch.Tensor]:
    return safe_torch_load(ckpt.checkpoint_path(run, step))["state_dict"]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def clean_run(folders, tmp_path_factory) -> Path:
    """A deterministic 4-step run on the clean folder (validated on it): the weights a dirty folder must give."""
    run = tmp_path_factory.mktemp("clean-run") / "run"
    cfg = train_config(run.parent / "cfg.yaml", folders.clean, run, deterministic=True, val_every=4,
                       data={"val": str(folders.clean), "val_images": 19})
    assert main(["train", str(cfg), "--no-progress"]) == 0
    return run


def test_train_on_a_dirty_folder_ends_with_the_clean_folders_weights_and_names_the_bad_files(
        tmp_path, folders, clean_run, capsys, caplog):
    """``xchannel train`` on a folder with every kind of bad image: the bad files are screened out before the data
    order is drawn, so the run ends with exactly the weights of the same folder cleaned; each bad file is named in
    the log once and in summary.json, and the 50000 x 50000 PNG never costs memory."""
    run = tmp_path / "run"
    cfg = train_config(tmp_path / "cfg.yaml", folders.dirty, run, deterministic=True, val_every=4,
                       data={"val": str(folders.dirty), "val_images": 19})
    rss, peak = vm_rss_bytes(), peak_rss_bytes()
    with caplog.at_level(logging.WARNING, logger="xchannel.data"):
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 0, err
    assert peak_rss_bytes() < max(peak, rss + 2 * GiB)  # decoding the bomb alone would take 7.5 GB
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    assert np.isfinite(summary["last_loss"]) and 0 < summary["val"]["auc"] <= 1
    data = summary["data"]
    assert data["skipped_files"] == folders.bad_paths and data["skipped"] == len(folders.bad_paths)
    for kind, path in folders.bad.items():
        assert UNUSABLE_REASONS[kind] in data["reasons"][str(path)]
    assert summary["val_data"]["skipped_files"] == folders.bad_paths  # validation on the dirty folder too
    assert {k: (v["files"], v["usable"]) for k, v in summary["screen"].items()} == {"train": (19, 15),
                                                                                      "val": (19, 15)}
    log = skip_log(caplog)
    assert all(log.count(p) == 2 for p in folders.bad_paths), log  # one warning per file, training and validation
    assert json.loads((run / "config.json").read_text())["data"]["train"] == str(folders.dirty)

    assert_same_weights(final_weights(run), final_weights(clean_run))
    clean = json.loads((clean_run / "summary.json").read_text())
    assert (summary["last_loss"], summary["val"]) == (clean["last_loss"], clean["val"])


def test_a_resumed_run_keeps_its_screened_data_even_when_the_folder_changes(
        tmp_path, folders, clean_run, capsys, monkeypatch):
    """Interrupted at step 2, the folder then changed (an image added, a bad file removed): the resumed run reads
    the screened list stored in its folder and still ends with the clean folder's weights."""
    dirty = tmp_path / "dirty"
    shutil.copytree(folders.dirty, dirty)
    bad = sorted(str(dirty / Path(p).relative_to(folders.dirty)) for p in folders.bad_paths)
    run = tmp_path / "run"
    cfg = train_config(tmp_path / "cfg.yaml", dirty, run, deterministic=True, checkpoint_every=100)
    with monkeypatch.context() as m:
        _signal_at_step(m, signal.SIGUSR1, step=2)
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 3, out + err
    assert (run / "data_screen.json.gz").is_file()

    photo(40, 32, seed=99).save(dirty / "a" / "a00-new.jpg")  # sorts among the first files: it would shift every batch
    (dirty / "b" / "notes.jpg").unlink()
    rc, _, err = run_cli(capsys, "train", cfg, "data.screen=false", "--resume", "--no-progress")
    assert rc == 2 and "was started with data.screen=true" in err, err
    rc, out, err = run_cli(capsys, "train", cfg, "--resume", "--no-progress")
    assert rc == 0 and f"resuming {run} from step 2" in out, out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["data"]["skipped_files"] == bad
    assert summary["screen"]["train"]["usable"] == 15
    assert_same_weights(final_weights(run), final_weights(clean_run))


def test_the_screen_refuses_exactly_what_load_rgb_refuses(tmp_path, folders, monkeypatch):
    """check_image decodes JPEGs at 1/8 scale: a JPEG cut anywhere is refused exactly when the full decode
    refuses it, with the same reason; every odd file passes; the screen keeps the input order, also in parallel."""
    cuts = []
    for progressive in (False, True):
        full = tmp_path / f"full-{progressive}.jpg"
        photo(96, 72, seed=3).save(full, quality=90, progressive=progressive)
        data = full.read_bytes()
        for k, n in enumerate(np.linspace(0, len(data), 40).astype(int).tolist() + [len(data) - 1, len(data) - 2]):
            cut = tmp_path / f"cut-{progressive}-{k}.jpg"
            cut.write_bytes(data[:n])
            cuts.append(cut)
    outcomes = set()
    for path in cuts + list(folders.odd.values()) + list(folders.bad.values()):
        try:
            load_rgb(path)
            want = None
        except BadImageError as err:
            want = err.reason
        assert check_image(path) == want, path
        outcomes.add(want is None)
    assert outcomes == {True, False}

    samples = [(str(p), i % 3) for i, p in enumerate(sorted(folders.dirty.rglob("*.*")))]
    serial = screen.screen_samples(samples, progress=False)
    monkeypatch.setattr(screen, "MIN_PARALLEL", 0)
    monkeypatch.setattr(screen, "CHUNK", 3)
    parallel = screen.screen_samples(samples, workers=2, progress=False)
    assert parallel.samples == serial.samples == [s for s in samples if s[0] not in folders.bad_paths]
    assert list(parallel.skipped) == list(serial.skipped) == [p for p, _ in samples if p in folders.bad_paths]


def test_prior_on_a_dirty_folder_equals_the_clean_folder(tmp_path, folders, capsys, caplog):
    runs = {}
    for name in ("clean", "dirty"):
        with caplog.at_level(logging.WARNING, logger="xchannel.data"):
            rc, out, err = run_cli(capsys, "prior", getattr(folders, name), "-o", tmp_path / f"{name}.npy",
                                   "--size", 32, "--batch-size", 3, "--workers", 0)
        assert rc == 0, err
        runs[name] = json.loads(out)
    assert runs["clean"]["skipped"] == 0 and runs["clean"]["images"] == 15
    assert runs["dirty"]["skipped_files"] == folders.bad_paths and runs["dirty"]["images"] == 19
    assert all(p in skip_log(caplog) for p in folders.bad_paths)
    clean, dirty = np.load(tmp_path / "clean.npy"), np.load(tmp_path / "dirty.npy")
    assert clean.shape == (313,) and clean.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(dirty, clean)  # the bad files change nothing


def test_colorize_on_a_dirty_folder_gives_the_clean_folder_images(tmp_path, folders, capsys):
    from xchannel.models import VGGColorizer, model_checkpoint
    from xchannel.utils.io import atomic_torch_save

    weights = tmp_path / "colorizer.pt"
    atomic_torch_save(model_checkpoint(VGGColorizer(width=0.125, seed=0).eval()), weights)
    rc, out, err = run_cli(capsys, "colorize", folders.clean, "-o", tmp_path / "clean", "--checkpoint", weights,
                           "--size", 224, "--device", "cpu")
    assert rc == 0 and "colorized 15 of 15 images" in out, out + err
    rc, out, err = run_cli(capsys, "colorize", folders.dirty, "-o", tmp_path / "dirty", "--checkpoint", weights,
                           "--size", 224, "--device", "cpu")
    assert rc == 1 and "colorized 15 of 19 images" in out and "4 unreadable, skipped:" in out, out + err
    for kind, path in folders.bad.items():  # named as they are met (the log) and in the closing summary
        assert f"skipped {path}: " in err and f"  {path}: " in out and UNUSABLE_REASONS[kind] in out
    made = sorted(p.relative_to(tmp_path / "clean") for p in (tmp_path / "clean").rglob("*.png"))
    assert len(made) == 15
    assert sorted(p.relative_to(tmp_path / "dirty") for p in (tmp_path / "dirty").rglob("*.png")) == made
    for rel in made:
        assert (tmp_path / "clean" / rel).read_bytes() == (tmp_path / "dirty" / rel).read_bytes(), rel
    assert Image.open(tmp_path / "clean" / "a" / "rotated.png").size == (16, 32)  # upright, full resolution


@pytest.mark.parametrize("cached", [True, False], ids=["feature-cache", "no-cache"])
def test_probe_on_a_dirty_folder_equals_the_clean_folder(tmp_path, capsys, caplog, cached):
    """``xchannel probe`` with a feature cache (features computed once, fixed crops) or without (random crops and
    mirrors drawn in the data order): the bad images of train/ and val/ are screened out, counted and named; the
    results equal those of the clean folders (to the bit without the cache)."""
    trees = {split: dirty_and_clean_folders(tmp_path, split=split, seed=seed)
             for split, seed in (("train", 0), ("val", 100))}
    results = {}
    for name in ("clean", "dirty"):
        out_json = tmp_path / f"{name}.json"
        with caplog.at_level(logging.WARNING, logger="xchannel.data"):
            rc, out, err = run_cli(capsys, "probe", "--encoder", "gaussian:width=0.25", "--data", tmp_path / name,
                                   "--layer", "conv1,conv2", "--crop", 67, "--resize", 70, "--epochs", 2, "--lr", 0.1,
                                   "--batch-size", 4, "--workers", 0, "--device", "cpu", "--no-progress",
                                   *(["--cache", tmp_path / "cache"] if cached else []), "-o", out_json)
        assert rc == 0, err
        results[name] = json.loads(out_json.read_text())
    clean, dirty = results["clean"], results["dirty"]
    assert clean["protocol"]["augment"] is not cached
    for split in ("train", "val"):
        assert dirty["data"]["skipped"][split]["skipped_files"] == trees[split].bad_paths
        for kind, path in trees[split].bad.items():
            assert UNUSABLE_REASONS[kind] in dirty["data"]["skipped"][split]["reasons"][str(path)]
        assert clean["data"]["skipped"][split]["skipped"] == 0
    assert all(p in skip_log(caplog) for t in trees.values() for p in t.bad_paths)
    assert dirty["data"]["evaluated"] == clean["data"]["evaluated"] == 15
    assert dirty["data"]["images"] == clean["data"]["images"] == {"train": 15, "val": 15}
    assert [h["loss"] for h in dirty["history"]] == [h["loss"] for h in clean["history"]]
    for layer in ("conv1", "conv2"):
        c, d = clean["layers"][layer], dirty["layers"][layer]
        assert (d["top1"], d["top5"], d["final_train_loss"]) == (c["top1"], c["top5"], c["final_train_loss"])


# --------------------------------------------------------------------------------------------------------------
# Bad VOC trees


@pytest.mark.parametrize("damage", list(VOC_DAMAGE))
def test_a_damaged_voc_tree_is_refused_naming_the_file(tmp_path, capsys, damage):
    voc = voc_tree(tmp_path)
    broken = break_voc(voc, damage)
    if damage == "missing_mask":
        argv = ["pascal", "seg", "gaussian:width=0.25", "--voc", tmp_path, "--preset", "voc2012", "--set",
                "data.year=2007", "--device", "cpu", "--no-progress", "-o", tmp_path / "seg.json"]
    else:
        argv = ["pascal", "cls", "gaussian:width=0.25", "--voc", tmp_path, "--device", "cpu", "--no-progress",
                "-o", tmp_path / "cls.json"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, out + err
    assert "Traceback" not in err and str(broken.parent) in err
    assert re.search(VOC_DAMAGE[damage], err), err
    assert not (tmp_path / "cls.json").exists() and not (tmp_path / "seg.json").exists()
    if damage == "box_outside_image":  # training names the option that clips such boxes, and runs with it
        assert "--clip-boxes" in err
        rc, _, err = run_cli(capsys, *argv, "--clip-boxes", "--iterations", "1", "--no-rescale", "--set",
                             "optim.batch_size=2", "--set", "data.test_crops=1")
        assert rc == 0 and json.loads((tmp_path / "cls.json").read_text())["config"]["clip_boxes"] is True, err
    if damage == "missing_mask":
        return
    # the devkit evaluator reads the same annotations: malformed XML stops it too, but a box past the image or an
    # object of another class is scored as VOCevaldet.m scores it, with one warning naming the file
    rc, _, err = run_cli(capsys, "evaluate", "voc-det", "--devkit", tmp_path, "--split", "trainval",
                         "--results", tmp_path)
    if damage == "malformed_xml":
        assert rc == 2 and re.search(VOC_DAMAGE[damage], err), err
    else:
        warnings = [ln for ln in err.splitlines() if "annotation file(s)" in ln]
        assert rc == 0 and len(warnings) == 1 and str(broken) in warnings[0], err


# --------------------------------------------------------------------------------------------------------------
# Faults: SIGKILL during a checkpoint write, SIGUSR1 and SIGTERM, a full disk, a crashed sweep job


# Runs `xchannel ARGS...` with torch.save replaced, for the checkpoint of step KILL_STEP, by a write that stops
# half way (flushed to disk), touches MARKER and sleeps: the test kills the process there.
_TORN_WRITER = textwrap.dedent("""
    import io, os, sys, time
    from pathlib import Path
    import torch
    marker, kill_step = Path(sys.argv[1]), int(sys.argv[2])
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == kill_step:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            marker.write_text(str(len(data)))
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = torn_save
    from xchannel.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, folders, capsys):
    run = tmp_path / "run"
    cfg = train_config(tmp_path / "cfg.yaml", folders.clean, run)
    marker = tmp_path / "half-written"
    proc = subprocess.Popen([sys.executable, "-c", _TORN_WRITER, str(marker), "4", "train", str(cfg), "--no-progress"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the write to kill:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "timed out waiting for the checkpoint write"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    full_size = int(marker.read_text())
    torn = list(run.glob(".ckpt_00000004.pt.*.tmp"))
    assert len(torn) == 1 and 0 < torn[0].stat().st_size == full_size // 2  # killed mid-write
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]  # the torn file is not a checkpoint
    with pytest.raises(UserError):
        safe_torch_load(torn[0])
    assert ckpt.load_latest(run)["step"] == 2

    # A torn copy under a checkpoint's name (an interrupted rsync) is skipped too, with a warning.
    good = (run / "ckpt_00000002.pt").read_bytes()
    (run / "ckpt_00000003.pt").write_bytes(good[: len(good) // 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run_cli(capsys, "train", cfg, "--resume", "--no-progress")
    assert rc == 0, out + err
    assert any("ckpt_00000003.pt" in str(w.message) for w in caught)
    assert f"resuming {run} from step 2" in out
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 3, 2]
    assert ckpt.load_latest(run)["step"] == 4
    assert not list(run.glob(".ckpt_*.tmp"))  # the next save removed the dead write's temporary


def _signal_at_step(monkeypatch, signum: int, step: int, task: str = "colorization") -> None:
    """Fault injection: the training process receives ``signum`` during step ``step`` (as from SLURM)."""
    from xchannel.pretext import get_task

    cls = get_task(task)
    real = cls.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real(self, model, batch)

    monkeypatch.setattr(cls, "loss", loss)


_SIGNAL_CASES = [(signal.SIGUSR1, "colorization"), (signal.SIGTERM, "colorization"),
                 *((signal.SIGUSR1, task) for task in TINY_TASKS if task != "colorization")]


@pytest.mark.parametrize("signum,task", _SIGNAL_CASES,
                         ids=[f"{signal.Signals(s).name}-{t}" for s, t in _SIGNAL_CASES])
def test_a_signal_checkpoints_and_exits_then_resume_finishes_and_a_finished_run_is_left_alone(
        tmp_path, folders, capsys, monkeypatch, signum, task):
    """SLURM warns a job with SIGUSR1 (``--signal``) or SIGTERM before pre-emption or its time limit; the
    resumed run ends with the very weights of an uninterrupted one, for every task."""
    reference = tmp_path / "reference"
    ref_cfg = train_config(tmp_path / "ref.yaml", folders.clean, reference, task, deterministic=True)
    assert run_cli(capsys, "train", ref_cfg, "--no-progress")[0] == 0
    run = tmp_path / "run"
    cfg = train_config(tmp_path / "cfg.yaml", folders.clean, run, task, checkpoint_every=100, deterministic=True)
    handler = signal.getsignal(signum)
    with monkeypatch.context() as m:
        _signal_at_step(m, signum, step=2, task=task)
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 3, out + err  # interrupted: resumable, not an error
    assert f"signal received: checkpointed {run} at step 2; resume with --resume" in out
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert signal.getsignal(signum) == handler  # the engine's handler is removed again

    rc, out, err = run_cli(capsys, "train", cfg, "--resume", "--no-progress")
    assert rc == 0 and f"resuming {run} from step 2" in out, out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    want, got = (torch.load(ckpt.list_checkpoints(r)[0][1], weights_only=True) for r in (reference, run))
    assert want["task"] == got["task"] == task and want["state_dict"].keys() == got["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    assert want["task_state"].keys() == got["task_state"].keys()  # a memory bank, a permutation set ...
    for key, value in want["task_state"].items():
        assert torch.equal(value, got["task_state"][key]), key

    before = snapshot(run)
    rc, out, err = run_cli(capsys, "train", cfg, "--resume", "--no-progress")
    assert rc == 0, out + err
    assert f"{run}: already finished (4 of 4 steps): nothing to do" in out
    assert '"status": "already-finished"' in out
    assert snapshot(run) == before  # not a byte, not a timestamp changed


@contextmanager
def small_disk(folder: Path, size: str, monkeypatch) -> Iterator[tuple[Path, callable]]:
    """A small filesystem at ``folder`` and a function that fills it up.

    A real tmpfs when this process may mount one (root in a sandbox); otherwise ``folder`` is an ordinary
    folder and "filling it" makes every fsync in :mod:`xchannel.utils.io` fail with ENOSPC, which is where a
    write to a full disk fails at the latest."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = (os.geteuid() == 0 and shutil.which("mount") is not None
               and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                  capture_output=True).returncode == 0)

    def fill() -> None:
        if mounted:
            with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                except OSError as err:
                    assert err.errno == errno.ENOSPC
        else:
            import xchannel.utils.io as io_mod

            def no_space(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(io_mod.os, "fsync", no_space)

    try:
        yield folder, fill
    finally:
        monkeypatch.undo()
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_loses_no_earlier_result_and_says_so(tmp_path, folders, capsys, monkeypatch):
    lists = {}
    for cls in ("a", "b"):  # two image lists (absolute paths): one class each, so two different priors
        lists[cls] = tmp_path / f"{cls}.txt"
        lists[cls].write_text("".join(f"{p}\n" for p in sorted((folders.clean / cls).iterdir())))
    with small_disk(tmp_path / "disk", "1m", monkeypatch) as (disk, fill):
        result = disk / "prior.npy"
        rc, _, err = run_cli(capsys, "prior", lists["a"], "-o", result, "--size", 32, "--workers", 0)
        assert rc == 0, err
        earlier = result.read_bytes()
        fill()
        rc, out, err = run_cli(capsys, "prior", lists["b"], "-o", result, "--size", 32, "--workers", 0)
        assert rc == 1 and "Traceback" not in err
        assert (f"xchannel prior: error: no space left on device while writing {result}; the previous version of "
                f"the file (if any) is unchanged") in err
        assert result.read_bytes() == earlier
        assert sorted(p.name for p in disk.iterdir()) in (["prior.npy"], ["filler", "prior.npy"])  # no temporary


def test_a_disk_filling_up_during_training_keeps_the_last_checkpoint(tmp_path, folders, capsys, monkeypatch):
    from xchannel.pretext.colorization import ColorizationTask

    with small_disk(tmp_path / "disk", "48m", monkeypatch) as (disk, fill):
        run = disk / "run"
        cfg = train_config(tmp_path / "cfg.yaml", folders.clean, run)
        real = ColorizationTask.loss
        calls = {"n": 0}

        def loss(self, model, batch):  # the disk fills up during step 3, after the step-2 checkpoint
            calls["n"] += 1
            if calls["n"] == 3:
                fill()
            return real(self, model, batch)

        monkeypatch.setattr(ColorizationTask, "loss", loss)
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
        assert rc == 1 and "Traceback" not in err, out + err
        assert f"no space left on device while writing {run / 'ckpt_00000004.pt'}" in err
        assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
        assert ckpt.load_latest(run)["step"] == 2
        assert not list(run.glob(".*.tmp"))
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_a_crashed_sweep_job_does_not_stop_or_corrupt_the_others(tmp_path, folders, capsys):
    base = yaml.safe_load(train_config(tmp_path / "base.yaml", folders.clean, tmp_path / "unused",
                                       steps=2, checkpoint_every=1).read_text())
    del base["out"]  # the sweep owns each job's folder
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "crash", "groups": [{"kind": "train", "config": base,
                                     "axes": [{"lr": {"diverges": {"optim.lr": 1e30}, "ok1": {"optim.lr": 1e-3},
                                                      "ok2": {"optim.lr": 1e-4}}}]}]}))
    sweep_dir = tmp_path / "sweep"
    rc, out, err = run_cli(capsys, "sweep", spec, "--dir", sweep_dir, "--cluster", "debug", "--no-progress")
    assert rc == 1 and "2 finished, 1 failed" in out, out + err
    jobs = {p.name.split("-")[1]: p for p in sweep_dir.iterdir() if p.is_dir() and p.name.startswith("train-")}
    assert sorted(jobs) == ["diverges", "ok1", "ok2"]
    error = json.loads((jobs["diverges"] / "error.json").read_text())
    assert error["error"] == "TrainingError" and "non-finite loss" in error["message"]
    assert not (jobs["diverges"] / "result.json").exists()
    for name in ("ok1", "ok2"):  # ran after the crash, finished, each in its own folder
        record = json.loads((jobs[name] / "result.json").read_text())
        assert record["result"]["status"] == "finished" and record["result"]["step"] == 2
        assert not (jobs[name] / "error.json").exists()
    assert {j["id"] for j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]} == \
        {p.name for p in jobs.values()}

    rc, out, err = run_cli(capsys, "sweep", sweep_dir, "--status")
    assert rc == 0 and "3 jobs: 2 done, 1 failed" in out and "TrainingError: non-finite loss" in out, out + err

    done = {name: snapshot(jobs[name]) for name in ("ok1", "ok2")}
    rc, out, err = run_cli(capsys, "sweep", spec, "--dir", sweep_dir, "--cluster", "debug", "--no-progress")
    assert rc == 1 and "2 done, 0 pending or running: 1 to run" in out, out + err  # only the failed job again
    assert {name: snapshot(jobs[name]) for name in ("ok1", "ok2")} == done


# --------------------------------------------------------------------------------------------------------------
# Untrusted files


def test_a_pickle_that_would_run_code_is_refused_everywhere(tmp_path, folders, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CodeRunningPickle(marker)}, evil)

    with pytest.raises(UserError, match=r"evil\.pt: refused to load: .* could run code"):
        safe_torch_load(evil)

    run = tmp_path / "run"  # resume skips it and takes the newest checkpoint that is safe
    run.mkdir()
    torch.save({"state_dict": {"w": torch.ones(1)}, "step": 1}, run / "ckpt_00000001.pt")
    shutil.copy(evil, run / "ckpt_00000002.pt")
    with pytest.warns(UserWarning, match=r"ckpt_00000002\.pt.*refused to load"):
        assert ckpt.load_latest(run)["step"] == 1

    cfg = train_config(tmp_path / "cfg.yaml", folders.clean, tmp_path / "run2", model={"init_from": str(evil)})
    rc, _, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and f"{evil}: refused to load" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "probe", "--encoder", evil, "--data", folders.clean, "--no-progress")
    assert rc == 2 and f"{evil}: refused to load" in err
    rc, _, err = run_cli(capsys, "colorize", folders.clean, "-o", tmp_path / "out", "--checkpoint", evil)
    assert rc == 2 and f"{evil}: refused to load" in err

    from xchannel.export.detectron2 import read_detectron2  # detectron2's weight files are plain pickles

    evil_pkl = tmp_path / "model_final.pkl"
    evil_pkl.write_bytes(pickle.dumps({"model": {"w": CodeRunningPickle(marker)}, "__author__": "x"}))
    with pytest.raises(UserError, match=r"model_final\.pkl: not a plain detectron2 weight pickle .*refused"):
        read_detectron2(evil_pkl)
    assert not marker.exists()


#: Calls that build arbitrary objects from bytes or text (and so can run code), as written in the source.
_UNSAFE_CALLS = {"pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "yaml.load", "yaml.unsafe_load",
                 "yaml.full_load", "eval", "exec", "dill.load", "joblib.load", "torch.jit.load"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_every_load_in_the_code_is_a_safe_one():
    """A static check of all of xchannel: torch.load always with weights_only=True, numpy never with pickles,
    no pickle / yaml.load / eval / exec on data (the detectron2 reader's allow-list Unpickler is the exception
    by design: it subclasses pickle.Unpickler and refuses every class it does not list)."""
    problems = []
    for path in sorted((REPO / "xchannel").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}: {name}"
            if name == "torch.load":
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} without weights_only=True")
            elif name in ("np.load", "numpy.load"):
                flag = kw.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where} with allow_pickle other than False")
            elif name in _UNSAFE_CALLS:
                problems.append(where)
    assert not problems, "\n".join(problems)


def test_configs_name_unknown_and_duplicate_keys_and_never_run_code(tmp_path, folders, capsys):
    marker = tmp_path / "code-ran"
    cfg = train_config(tmp_path / "cfg.yaml", folders.clean, tmp_path / "run")
    text = cfg.read_text()

    cases = {
        "unknown.yaml": (text.replace("crop: 32", "croop: 32"),
                         r"unknown\.yaml\S*: unknown key\(s\) 'croop'; known keys: batch_size, crop, "),
        "duplicate.yaml": (text.replace("crop: 32", "crop: 32\n  crop: 64"),
                           r"duplicate.yaml:\d+: duplicate key 'crop' \(first given on line \d+\)"),
        "code.yaml": (text.replace("seed: 0", f"seed: !!python/object/apply:builtins.open ['{marker}', 'w']"),
                      r"code.yaml: not valid YAML: could not determine a constructor for the tag "
                      r"'tag:yaml.org,2002:python/object/apply:builtins.open'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        rc, _, err = run_cli(capsys, "train", path, "--no-progress")
        assert rc == 2 and "Traceback" not in err, err
        assert re.search(message, err), err

    overrides = {
        "optim.lrr=0.1": r"unknown key\(s\) 'lrr'",
        "steps=__import__('os').system('touch x')": r"config.steps: expected an integer, got \"__import__",
        f"out=!!python/object/apply:builtins.open ['{marker}', 'w']": "cannot parse value",
    }
    for override, message in overrides.items():
        rc, _, err = run_cli(capsys, "train", cfg, override, "--no-progress")
        assert rc == 2, err
        assert re.search(message, err), (override, err)

    probe_cfg = tmp_path / "probe.yaml"
    probe_cfg.write_text("epochs: 1\nlayers: [conv1]\nepochs: 2\n")
    rc, _, err = run_cli(capsys, "probe", "--config", probe_cfg, "--no-progress")
    assert rc == 2 and "probe.yaml:3: duplicate key 'epochs' (first given on line 1)" in err, err
    rc, _, err = run_cli(capsys, "probe", "--data", folders.clean, "--set", "epoch=2", "--no-progress")
    assert rc == 2 and "unknown key(s) 'epoch'" in err, err
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: s\ngroups:\n  - kind: train\n    confg: {steps: 1}\n")
    rc, _, err = run_cli(capsys, "sweep", spec, "--list")
    assert rc == 2 and "unknown key(s) 'confg'" in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()
