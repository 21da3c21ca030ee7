"""Shared benchmark plumbing: timing, peak memory, environment description, phase records, JSON output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tamp.artifacts import git_commit  # noqa: F401  (re-exported for the bench modules)
from tamp.atomic_write import write_text_atomic

SCHEMA = "tamp-bench/1"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------------
# Phase records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured thing: a wall time (median of `times_s`), its peak memory and free-form details."""

    section: str
    name: str
    status: str = "ok"  # ok | skipped | error | partial
    wall_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    peak_cpu_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    ratio: float | None = None  # to this section's unit (dense forward, floor, reference ...)
    ratio_to: str | None = None
    target: float | None = None  # ratio the phase should stay under, when there is one
    met: bool | None = None
    reason: str | None = None  # why skipped / error / partial
    details: dict[str, Any] = field(default_factory=dict)

    def set_ratio(self, unit: float | None, unit_name: str, target: float | None = None) -> None:
        """ratio = wall_s / unit; `met` tells whether it is within `target`."""
        if self.wall_s is None or not unit:
            return
        self.ratio, self.ratio_to = self.wall_s / unit, unit_name
        if target is not None:
            self.target, self.met = target, self.ratio <= target

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------------


def reset_peak_memory(device: torch.device | None = None) -> bool:
    """Reset the CPU RSS high-water mark (Linux clear_refs 5) and CUDA's peak counter; True if the CPU reset worked."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_cpu_rss_mb() -> float:
    """Peak resident set size of this process since the last reset (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_vm_hwm_mb() -> float:
    """VmHWM of /proc/self/status (the mm's own high-water mark); falls back to ru_maxrss.

    A subprocess's ru_maxrss starts at its *parent's* RSS (Linux carries the pre-exec mm's peak into the new
    process's signal struct), so children measure with this instead.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_cpu_rss_mb()


def peak_gpu_mb(device: torch.device | None) -> float | None:
    if device is None or device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def measured(phase: Phase, device: torch.device | None = None, record_time: bool = True) -> Iterator[Phase]:
    """Time the body once (appended to phase.times_s, wall_s = median) and record its peak memory.

    With ``record_time=False`` the body sets the times itself (repeats inside) and only memory is recorded.
    An exception inside the body marks the phase as an error instead of propagating.
    """
    reset = reset_peak_memory(device)
    try:
        phase.details.setdefault("load_avg_1m_at_start", round(os.getloadavg()[0], 2))
    except OSError:
        pass
    sync(device)
    start = time.perf_counter()
    try:
        yield phase
    except Exception as exc:  # noqa: BLE001 - a broken phase must not end the whole run
        phase.status, phase.reason = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    finally:
        sync(device)
        if phase.status != "error" and record_time:
            phase.times_s.append(time.perf_counter() - start)
            phase.wall_s = statistics.median(phase.times_s)
        phase.peak_cpu_rss_mb = max(phase.peak_cpu_rss_mb or 0.0, peak_cpu_rss_mb())
        gpu = peak_gpu_mb(device)
        if gpu is not None:
            phase.peak_gpu_mb = max(phase.peak_gpu_mb or 0.0, gpu)
        phase.details.setdefault("rss_peak_reset", reset)


def repeat(fn: Callable[[], Any], repeats: int, device: torch.device | None = None, warmup: int = 0) -> tuple[list[float], Any]:
    """Run `fn` warmup + repeats times; returns the timed wall times and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device | None = None,
                warmup: int = 0) -> dict[str, list[float]]:
    """Time several functions round-robin (a, b, c, a, b, c ...): a slow spell of a shared machine then hits
    all of them alike instead of whichever happened to run during it, so their ratio stays steady."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


class TimeLimit(Exception):
    """Raised inside a time-limited call when its budget is spent."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimeLimit in the main thread after `seconds` (SIGALRM; no limit off the main thread or when None)."""
    usable = seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
    if usable:
        import threading

        usable = threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(_signum: int, _frame: Any) -> None:
        raise TimeLimit(f"time limit of {seconds:g} s reached")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["gpu_total_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    else:
        info["name"] = info["cpu"]
    return info


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for dist, key in (("transformers", "transformers"), ("tamp-harness", "tamp"), ("llmcompressor", "llmcompressor")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    return out


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON atomically through tamp.atomic_write (the one owner of the rule: umask, stale temps)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
