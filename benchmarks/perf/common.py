"""What the performance benchmarks share: settings, interleaved timing, machine facts, the matmul peak, checks,
result files and the summary table.

Timing protocol
---------------
Timings on a shared 2-core machine vary by +-20 % from one minute to the next, so a figure is never compared with
one measured at another time. :func:`interleave` runs the candidate and its baseline in the same loop, round after
round (the order rotated every round), after warm-up runs; a case's figure is the median of its rounds, and a
ratio is taken between medians of the same run.

Result files
------------
Each benchmark writes ``<out>/<name>.json`` atomically (:func:`xchannel.utils.io.atomic_write_json`)::

    {"benchmark": name, "title": ..., "mode": "full" | "short" | "smoke", "workload": {...},
     "figures": {...},                                  # every measured number (seconds, images/s, ratios)
     "checks": [{"name", "value", "op", "target", "unit", "baseline", "met", "note"}],  # a check that cannot
                                                        # be measured here: value and met null, note says why
     "notes": [...], "machine": {...}, "seconds": ..., "created": ...}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xchannel import runtime
from xchannel.utils.io import atomic_write_json

MODES = ("full", "short", "smoke")


@dataclass
class Settings:
    """How big a run is and where it writes.

    ``mode``: ``full`` (the figures of the README), ``short`` (``make bench``, a few minutes in all) or ``smoke``
    (tiny workloads that only prove every benchmark runs end to end: the test suite).
    """

    mode: str = "short"
    out: Path = Path("results/perf")
    work: Path = Path("runs/perf")  # the embedded data set and scratch files (git-ignored)
    progress: bool = True
    threads: int | None = None  # torch intra-op threads (None: torch's default, one per core)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.out, self.work = Path(self.out), Path(self.work)

    def pick(self, full: Any, short: Any, smoke: Any) -> Any:
        """The value for this run's mode."""
        return {"full": full, "short": short, "smoke": smoke}[self.mode]


# --------------------------------------------------------------------------------------------------------------
# Timing


def interleave(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of every case: ``warmup`` untimed runs each, then ``repeats`` rounds that run every case once,
    round r starting at case r mod n, so that a slow spell on a shared machine hits all cases alike."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def stats(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw values (seconds)."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "values": [round(t, 6) for t in times]}


def median(times: Sequence[float]) -> float:
    return float(statistics.median(times))


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Achieved GFLOP/s of an n x n @ n x n matmul in ``dtype`` (2 n^3 flops): median of ``repeats`` runs after a
    warm-up. This is the machine's practical peak for dense math in that precision (MKL for float32, oneDNN on AMX
    for bfloat16 on Sapphire Rapids)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run() -> None:
        torch.matmul(a, b)
        sync()

    t = median(interleave({"mm": run}, repeats, warmup=2)["mm"])
    return 2.0 * n**3 / t / 1e9


# --------------------------------------------------------------------------------------------------------------
# Machine facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    """The machine a result was measured on (CPU, cores, threads, accelerator, versions, load at the time)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    bf16 = runtime.bf16_support("cpu")
    return {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cpu_capability": runtime.cpu_capability(),
        "bf16_native": bf16.native, "bf16": bf16.reason, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def describe_machine(m: Mapping[str, Any]) -> str:
    """One line: CPU, cores, the capability torch uses (ATen kernels, bf16 native or emulated), threads,
    accelerator."""
    flags = ", ".join(f for f in m.get("cpu_flags", []) if f in ("avx512f", "avx512_bf16", "amx_bf16"))
    cap = m.get("cpu_capability", {})
    used = f"; torch uses {cap['aten']}" if cap else ""
    bf16 = "" if "bf16_native" not in m else f", bf16 {'native' if m['bf16_native'] else 'emulated'}"
    gpu = m.get("gpu") or "no GPU"
    return (f"{m['cpu']} ({m['usable_cpus']} cores{', ' + flags if flags else ''}{used}{bf16}), torch "
            f"{m['torch']} with {m['torch_threads']} threads, {gpu}")


# --------------------------------------------------------------------------------------------------------------
# Checks, results, the table


NOT_NATIVE = "not native here"


@dataclass
class Check:
    """One target: ``value op target`` (e.g. speed-up >= 20). ``value=None`` is a check that this machine cannot
    measure meaningfully (e.g. a bf16 ratio where bf16 is emulated); ``note`` says why and ``met`` is None."""

    name: str
    value: float | None
    op: str
    target: float
    unit: str = "x"
    baseline: str = ""
    note: str = ""
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"op must be '>=' or '<=', got {self.op!r}")
        if self.value is None:
            self.met = None
            return
        self.value = float(self.value)
        self.met = bool(self.value >= self.target if self.op == ">=" else self.value <= self.target)

    @classmethod
    def not_measured(cls, name: str, op: str, target: float, why: str, **kw: Any) -> "Check":
        return cls(name, None, op, target, note=why, **kw)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "op": self.op, "target": self.target, "unit": self.unit,
                "baseline": self.baseline, "met": self.met, "note": self.note}


def record(settings: Settings, name: str, title: str, workload: Mapping[str, Any], figures: Mapping[str, Any],
           checks: Sequence[Check], notes: Sequence[str], started: float) -> dict[str, Any]:
    """A benchmark's result (see the module docstring), written to ``<out>/<name>.json``; returns it."""
    rec = {"benchmark": name, "title": title, "mode": settings.mode, "workload": dict(workload),
           "figures": dict(figures), "checks": [c.as_dict() for c in checks], "notes": list(notes),
           "machine": machine(), "seconds": round(time.perf_counter() - started, 2),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(settings.out / f"{name}.json", rec)
    return rec


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "abs":
        return f"{value:.1e}"
    return f"{value:.3g} {unit}"


def check_lines(rec: Mapping[str, Any]) -> list[str]:
    """Human lines for a benchmark's checks (printed after each benchmark)."""
    lines = []
    for c in rec["checks"]:
        if c["met"] is None:
            lines.append(f"  {c['name']}: {c['note']}")
            continue
        mark = "met" if c["met"] else "MISSED"
        vs = f" (vs {c['baseline']})" if c["baseline"] else ""
        lines.append(f"  {c['name']}: {_fmt(c['value'], c['unit'])} {c['op']} {_fmt(c['target'], c['unit'])}"
                     f"{vs}: {mark}")
    return lines


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table of every check of every benchmark."""
    rows = ["| benchmark | check | baseline | measured | target | |", "|---|---|---|---|---|---|"]
    for rec in records:
        for c in rec["checks"]:
            measured = _fmt(c["value"], c["unit"]) if c["met"] is not None else c["note"]
            status = "-" if c["met"] is None else "met" if c["met"] else "**missed**"
            rows.append(f"| {rec['benchmark']} | {c['name']} | {c['baseline']} | {measured} | "
                        f"{c['op']} {_fmt(c['target'], c['unit'])} | {status} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------------------
# Workloads


def embedded_data(settings: Settings) -> Path:
    """The ImageFolder tree (``train/``, ``val/``) of the embedded data set, the ImageNet part of
    ``xchannel make-data`` (default spec; a tiny one in smoke mode), drawn once into ``<work>/data`` and reused
    while its spec is unchanged."""
    from xchannel.data.synthetic import SyntheticSpec, make_dataset
    from xchannel.utils.config import to_dict

    spec = SyntheticSpec(voc_trainval=0, voc_test=0, voc2012=False, sbd=False)
    if settings.mode == "smoke":
        spec = SyntheticSpec(classes=2, train_per_class=8, val_per_class=4, size=64, voc_trainval=0, voc_test=0,
                             voc2012=False, sbd=False)
    root = settings.work / ("data" if settings.mode != "smoke" else "data-smoke")
    manifest = root / "manifest.json"
    try:
        same = json.loads(manifest.read_text()).get("spec") == json.loads(json.dumps(to_dict(spec)))
    except (OSError, ValueError):
        same = False
    if not same:
        make_dataset(root, spec, overwrite=True, progress=settings.progress)
    return root / "imagenet"


def photo_crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops (uint8 RGB, n x 3 x size x size) of real photographs that ship with
    scikit-image (astronaut, coffee, chelsea, rocket, immunohistochemistry, hubble_deep_field), taken in turn."""
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(),
              skdata.immunohistochemistry(), skdata.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crops.append(p[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def bf16_native() -> bool:
    """Whether this CPU runs bfloat16 natively (:mod:`xchannel.runtime`); bf16 figures are measured only then."""
    return runtime.bf16_support("cpu").native


def set_threads(settings: Settings) -> None:
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
