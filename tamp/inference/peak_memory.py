"""The peak memory of one run (one task's evaluation), not of the process's whole life.

A process that loaded, pruned or evaluated something big before this run has a lifetime peak that says nothing
about the run; what a run reports is measured from its own start, and says how (`how`):

- `cuda-max-allocated`: on a GPU, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` at the start;
- `rss-high-water-reset`: on the CPU under Linux, the RSS high-water mark (VmHWM in /proc/self/status) after
  writing "5" to /proc/self/clear_refs at the start, which resets it to the current RSS;
- where that reset is refused or there is no /proc (not Linux), the current RSS at the start is the floor and
  `rss-new-lifetime-high` is the process's lifetime peak when the run raised it (then it is the run's peak), else
  `rss-lower-bound`: the highest RSS sampled at the start, at every forward pass and at the end. A lifetime peak
  set before the run is never reported as the run's.

The reset is process-wide: a second run started in the same process resets the mark again, and an earlier run
still open then reports `rss-lower-bound` (the mark no longer covers its start).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

CUDA = "cuda-max-allocated"
HIGH_WATER = "rss-high-water-reset"
NEW_HIGH = "rss-new-lifetime-high"
LOWER_BOUND = "rss-lower-bound"

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
_resets = 0  # how many times this process has reset its high-water mark (a later reset hides an earlier start)


def vm_hwm_mb() -> float | None:
    """VmHWM of /proc/self/status in MiB (None without /proc): the high-water mark since the last reset."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_high_water() -> bool:
    """Reset this process's RSS high-water mark to its current RSS; False where the kernel does not let us."""
    global _resets
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    if vm_hwm_mb() is None:
        return False
    _resets += 1
    return True


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def lifetime_peak_mb() -> float:
    """The process's peak RSS since it started (or since the last reset, where a reset happened)."""
    hwm = vm_hwm_mb()
    if hwm is not None:  # ru_maxrss of a child can carry its parent's pre-exec peak; VmHWM is its own
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


@dataclass
class RunPeak:
    """Started at a run's start; `read()` gives (peak MiB, how it was measured) since then."""

    device: torch.device
    how: str
    floor_mb: float = 0.0  # the RSS at the start
    lifetime_at_start_mb: float = 0.0
    sampled_mb: float = 0.0
    epoch: int = 0

    @classmethod
    def start(cls, device: torch.device) -> RunPeak:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return cls(device, CUDA)
        rss = current_rss_mb()
        if reset_high_water():
            return cls(device, HIGH_WATER, floor_mb=rss, sampled_mb=rss, epoch=_resets)
        return cls(device, LOWER_BOUND, floor_mb=rss, lifetime_at_start_mb=lifetime_peak_mb(), sampled_mb=rss)

    @property
    def samples(self) -> bool:
        """Whether forward passes should call `sample()` (only where no high-water mark covers the run)."""
        return self.how == LOWER_BOUND

    def sample(self) -> None:
        self.sampled_mb = max(self.sampled_mb, current_rss_mb())

    def read(self) -> tuple[float, str]:
        if self.how == CUDA:
            return torch.cuda.max_memory_allocated(self.device) / 2**20, CUDA
        now = current_rss_mb()
        if self.how == HIGH_WATER:
            hwm = vm_hwm_mb()
            if hwm is not None and self.epoch == _resets:
                return max(hwm, now), HIGH_WATER
            # another run reset the mark after this one started: it covers only part of this run
            return max(self.sampled_mb, now, hwm or 0.0), LOWER_BOUND
        life = lifetime_peak_mb()
        if life > self.lifetime_at_start_mb:
            return life, NEW_HIGH
        return max(self.sampled_mb, now), LOWER_BOUND
