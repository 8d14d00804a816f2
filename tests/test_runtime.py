"""Machine-dependent defaults (xchannel.runtime): precision auto is bf16 only where bf16 is native, an explicit bf16
on an emulating CPU warns once, runs record what they chose, and the load monitor sees other processes.

An AVX2-only CPU is imitated on a bigger one with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (they restrict
oneDNN's and ATen's kernels; on the development machine a bf16 training step of the demo AlexNet went from 0.19 s
to 9.1 s with them, fp32 0.36 s -> 0.42 s). Both only take effect at process start, hence the subprocesses."""

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from xchannel import runtime
from xchannel.configs import resolve
from xchannel.train.config import TrainConfig
from xchannel.utils.config import build_config

REPO = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
DEMO_CONFIGS = tuple(sorted(p.stem for p in (REPO / "xchannel" / "configs").glob("demo-*.yaml")))


def _python(code: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_avx2_only_cpu_resolves_auto_to_fp32_and_warns_once_on_explicit_bf16():
    out = _python(f"""
        import json, warnings, torch
        from xchannel import runtime
        from xchannel.configs import resolve
        from xchannel.train.config import TrainConfig
        from xchannel.utils.config import build_config
        cfgs = {{n: build_config(TrainConfig, resolve(n)).precision for n in {DEMO_CONFIGS!r}}}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            explicit = [runtime.resolve_precision("bf16", "cpu") for _ in range(3)]
        print(json.dumps({{"aten": torch.backends.cpu.get_cpu_capability(), "configs": cfgs,
                          "auto": runtime.resolve_precision("auto", "cpu"), "explicit": explicit,
                          "warnings": [str(w.message) for w in caught
                                       if issubclass(w.category, runtime.SlowPrecisionWarning)],
                          "record": runtime.precision_record("auto", "cpu")}}))
    """, AVX2_ONLY)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["aten"] == "AVX2"  # the restriction took effect
    assert got["configs"] == {n: "auto" for n in DEMO_CONFIGS}  # the demo configs ask for auto ...
    assert got["auto"] == "fp32"  # ... which is fp32 on this CPU
    assert got["explicit"] == ["bf16"] * 3  # explicit bf16 is honoured ...
    assert len(got["warnings"]) == 1 and "slowly" in got["warnings"][0]  # ... with one warning per process
    assert got["record"]["resolved"] == "fp32" and "emulated" in got["record"]["reason"]


def test_training_run_records_its_precision_under_the_restriction(tmp_path):
    """The real entry point under an AVX2-only imitation: a demo config trains in fp32, logs and saves the
    choice; the same run with an explicit bf16 runs in bf16 and warns on stderr."""
    from helpers import write_image_folder

    images = write_image_folder(tmp_path / "images", n_per_class=4, size=40)
    common = ["demo-alexnet", f"data.train={images}", "data.val=", "data.crop=32", "data.resize=32",
              "data.batch_size=4", "data.workers=0", "steps=1", "checkpoint_every=1", "log_every=1",
              "model.width=0.125"]
    for name, extra in (("auto", []), ("bf16", ["precision=bf16"])):
        run = tmp_path / name
        out = subprocess.run([sys.executable, "-m", "xchannel", "train", *common, f"out={run}", *extra,
                              "--no-progress"], env={**os.environ, **AVX2_ONLY, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        saved = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        resolved = "fp32" if name == "auto" else "bf16"
        assert saved["precision"] == name and saved["runtime"]["precision"]["resolved"] == resolved
        assert summary["precision"]["resolved"] == resolved and saved["runtime"]["cpu"]["aten"] == "AVX2"
        assert f"precision {name} -> {resolved}" in out.stdout
        assert (out.stderr.count("SlowPrecisionWarning") == 1) == (name == "bf16"), out.stderr


def test_native_bf16_where_the_hardware_has_it():
    cap = runtime.cpu_capability()
    native = (cap["avx512_bf16"] or cap["amx"]) and cap["onednn_bf16"]
    assert runtime.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(Exception, match="precision must be one of"):
        runtime.resolve_precision("half", "cpu")
    with runtime.autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with runtime.autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="resolve"):
        runtime.autocast("cpu", "auto")


def test_bench_reports_bf16_as_not_native_on_an_avx2_cpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.perf", "--smoke", "--only", "train_step", "--out",
                          str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--threads", "1",
                          "--no-progress"], env={**os.environ, **AVX2_ONLY, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "out" / "train_step.json").read_text())
    assert rec["machine"]["cpu_capability"]["aten"] == "AVX2" and rec["machine"]["bf16_native"] is False
    bf16 = [c for c in rec["checks"] if c["name"].startswith("bf16")]
    assert len(bf16) == 1 and bf16[0]["value"] is None and bf16[0]["met"] is None
    assert "not native here" in bf16[0]["note"] and rec["figures"]["bf16"]["measured"] is False
    fp32 = [c for c in rec["checks"] if c["name"].startswith("fp32")]
    assert len(fp32) == 1 and isinstance(fp32[0]["met"], bool)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "torch uses AVX2" in table and "bf16 emulated" in table
    assert "| train_step | bf16: images/s, full step / bare |" in table and "not native here" in table


def test_load_monitor_sees_other_processes_not_this_ones_workers(monkeypatch):
    burn = "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass\n"
    if runtime._busy_jiffies() is None:
        pytest.skip("no /proc/stat on this platform")
    monitor = runtime.LoadMonitor()
    # a grandchild (not this process's child) is another process's work ...
    other = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{burn}' & wait"])
    time.sleep(0.3)
    monitor.others()
    time.sleep(1.5)
    seen_other = monitor.others()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = runtime.choose_threads(0.6)  # the same busy core: at most one thread per free core
    other.wait()
    assert seen_other >= 0.5  # it burnt a core for the whole interval (plus whatever else ran)
    assert threads <= max(1, monitor.cores - 1) and "busy" in why
    # ... while a direct child (what a DataLoader worker is) counts as this run's own CPU time, so it is not "other"
    tick = os.sysconf("SC_CLK_TCK")
    child = subprocess.Popen([sys.executable, "-c", burn])
    before, t0 = runtime._own_seconds(tick), time.monotonic()
    time.sleep(1.5)  # this process itself only sleeps
    own = runtime._own_seconds(tick) - before
    child.wait()
    assert own >= 0.25 * (time.monotonic() - t0)  # the child's CPU time (a quarter core even on a loaded machine)
