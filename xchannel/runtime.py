"""What the machine a run is on can do: numeric precision, threads and load, decided once per process.

**Precision.** Every command with a precision takes ``auto`` by default. :func:`resolve_precision` turns it into

* ``bf16`` where bfloat16 is native: a CUDA device that supports it without emulation, or a CPU with AVX512-BF16
  or AMX whose oneDNN may use them;
* ``fp32`` everywhere else. A CPU without native bfloat16 *emulates* it: a bf16 autocast training step of the demo
  AlexNet is ~20x slower than fp32 there (``benchmarks/perf`` and the README give the measured figures), so auto
  never chooses it.

The decision uses what torch reports (deterministic, no timing): the CPU's feature flags (cpuinfo's AVX512-BF16 /
AMX tile) and whether oneDNN will use a bfloat16 ISA (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which
honours ``ONEDNN_MAX_CPU_ISA``). So ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` imitates an AVX2-only CPU on
a bigger one, and a run started that way resolves ``auto`` to fp32. An explicit ``bf16`` is honoured everywhere,
with one warning per process where it is emulated. ``fp16`` is only ever explicit (the training engine scales its
loss); elsewhere it is refused.

Every run records :func:`precision_record` (requested, resolved, why) in its config or result JSON.

**Threads and load.** PyTorch takes one intra-op thread per core. That is the fastest choice on a quiet machine,
but when other processes keep the cores busy its threads wait on each other at every operation (measured here:
6-8x slower than one thread). :class:`LoadMonitor` measures the CPU time that *other* processes take between two
reads (``/proc/stat`` against this process's own CPU time), and the training progress line says when the machine
is oversubscribed, with the remedy (``OMP_NUM_THREADS=1``). :func:`choose_threads` makes that choice up front
from a one-second look at the load (``xchannel demo`` uses it): one thread per core that other processes leave
free. The thread count changes float rounding, so runs with different counts differ in their last digits.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Literal

import torch

from xchannel.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SlowPrecisionWarning(UserWarning):
    """An explicit precision that this hardware emulates (it runs, but many times slower than fp32)."""


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    reason: str  # one line a person can check


def _cpu_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


def cpu_capability() -> dict:
    """What torch reports of this CPU: ATen's kernel level and the bfloat16-relevant features."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    return {"aten": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": _cpu_flag("_is_avx512_bf16_supported"), "amx": _cpu_flag("_is_amx_tile_supported"),
            "onednn_bf16": onednn, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "threads": torch.get_num_threads()}


@functools.cache
def bf16_support(device_type: str, index: int | None = None) -> Bf16Support:
    """Whether bfloat16 is native on this device (computed once per process and device)."""
    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(index) if torch.cuda.is_available() else "no CUDA device"
        return Bf16Support(bool(ok), f"{name}: bf16 {'native' if ok else 'not native'}")
    if device_type != "cpu":
        return Bf16Support(False, f"{device_type}: bf16 support not known, fp32 chosen")
    cap = cpu_capability()
    hw = [n for n, k in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx")) if cap[k]]
    if not hw:
        return Bf16Support(False, f"CPU {cap['aten']} without AVX512-BF16 or AMX: bf16 is emulated")
    if not cap["onednn_bf16"]:
        return Bf16Support(False, f"CPU has {'/'.join(hw)} but oneDNN may not use it "
                                  f"(ONEDNN_MAX_CPU_ISA={cap['onednn_max_cpu_isa']}): bf16 is emulated")
    return Bf16Support(True, f"CPU {cap['aten']} with {'/'.join(hw)}: bf16 native")


@functools.cache
def _warn_emulated(device_type: str, reason: str) -> None:
    warnings.warn(f"precision bf16 on {device_type} runs, but slowly: {reason}; bf16 autocast is many times slower "
                  "than fp32 here (precision auto or fp32 is the fast choice)", SlowPrecisionWarning, stacklevel=3)


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for ``device``; an explicit value is returned as given (bf16 warns once
    per process where it is emulated)."""
    if requested not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    dev = _device(device)
    if requested == "auto":
        return "bf16" if bf16_support(dev.type, dev.index).native else "fp32"
    if requested == "bf16":
        support = bf16_support(dev.type, dev.index)
        if not support.native:
            _warn_emulated(dev.type, support.reason)
    return requested


def precision_record(requested: str, device: torch.device | str) -> dict:
    """What a run saves about its precision: what was asked, what ran, and why."""
    dev = _device(device)
    resolved = resolve_precision(requested, dev)
    return {"requested": requested, "resolved": resolved, "reason": bf16_support(dev.type, dev.index).reason}


def describe_precision(record: dict) -> str:
    """The start-of-run log line for a :func:`precision_record`."""
    how = "chosen" if record["requested"] == "auto" else "as configured"
    return f"precision {record['requested']} -> {record['resolved']} ({how}; {record['reason']})"


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """Autocast for a *resolved* precision (``fp32`` is a no-op)."""
    if precision == "auto":
        raise ValueError("resolve precision 'auto' with resolve_precision() before autocasting")
    if precision == "fp32":
        return nullcontext()
    if precision not in _DTYPES:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device_type=_device(device).type, dtype=_DTYPES[precision])


# ----------------------------------------------------------------------------------------------------------------
# Load


def _busy_jiffies() -> int | None:
    """Busy CPU time of the whole machine, in clock ticks (Linux ``/proc/stat``; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return sum(values[:8]) - idle - steal


def _live_children_seconds(tick: int) -> float:
    """CPU seconds of this process's running children (DataLoader workers), from ``/proc/<pid>/stat``."""
    me, total = os.getpid(), 0.0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def _own_seconds(tick: int) -> float:
    """CPU seconds of this process, its running children and its finished ones."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_seconds(tick)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class LoadMonitor:
    """Cores that other processes keep busy, measured between successive :meth:`others` calls (this process, its
    threads and its DataLoader workers are not "others")."""

    threshold: float = 0.5  # other processes using more than this many cores -> oversubscribed

    def __post_init__(self) -> None:
        self.cores = usable_cores()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()

    def _read(self) -> tuple[float, int | None, float]:
        return time.monotonic(), _busy_jiffies(), _own_seconds(self._tick)

    def others(self) -> float | None:
        """Cores' worth of CPU time used by other processes since the last call (None where unknown)."""
        now = self._read()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or t1 - t0 < 0.5:
            return None
        return max(0.0, ((busy1 - busy0) / self._tick - (own1 - own0)) / (t1 - t0))

    def warning(self) -> str | None:
        """A short progress-line note when this process's threads compete with other work, else None."""
        others = self.others()
        if others is None:
            return None
        threads = torch.get_num_threads()
        if others > self.threshold and threads > 1 and threads + others > self.cores + 0.25:
            return (f"busy: other processes use {others:.1f} of {self.cores} cores; "
                    "OMP_NUM_THREADS=1 is faster then")
        return None


def choose_threads(look_seconds: float = 1.0) -> tuple[int, str]:
    """Intra-op threads for a run that starts now: ``OMP_NUM_THREADS`` when set; otherwise one per core that
    other processes left free over the next ``look_seconds`` (at least one). Returns (threads, why)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS is set"
    monitor = LoadMonitor()
    time.sleep(look_seconds)
    others = monitor.others()
    if others is None:
        return torch.get_num_threads(), "load unknown on this platform: one thread per core"
    threads = max(1, min(monitor.cores, math.floor(monitor.cores - others + 0.5)))
    return threads, f"other processes kept {others:.1f} of {monitor.cores} cores busy"
