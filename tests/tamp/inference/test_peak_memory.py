"""A run's peak memory is its own: a big buffer freed before the run starts is not reported as the run's peak, one
allocated during the run is, and where the high-water mark cannot be reset the record says the value is a lower
bound (or the lifetime peak the run itself raised), never a silent lifetime peak."""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterator

import pytest
import torch

from tamp.inference import peak_memory as pm
from tamp.inference.cost import CostMeter, summarize

BIG = 384  # MiB: well above the noise of a Python process's RSS between two reads (a few MiB)
MARGIN = 64  # MiB of slack for allocator and interpreter noise; far below BIG / 2

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not pm.reset_high_water(),
                                reason="the RSS high-water reset (/proc/self/clear_refs) needs Linux and permission "
                                       "to write it")


def _touched(mib: int) -> mmap.mmap:
    """Fresh pages from the kernel, every one resident (an untouched mapping is not in the RSS). An anonymous
    mapping, not a heap buffer: in a long test process the heap may hand back pages that are already resident (and
    keep them after a free), which would move the RSS by nothing; `close()` returns these to the system."""
    buf = mmap.mmap(-1, mib * 2**20)
    for offset in range(0, len(buf), mmap.PAGESIZE):
        buf[offset] = 1
    return buf


@pytest.fixture
def fragmented_heap() -> Iterator[None]:
    """The heap of a long test process: ~400 MB freed behind small live objects, so the allocator keeps it resident
    (a heap buffer taken now would not move the RSS; the measurements above must hold anyway)."""
    chunks = [bytearray(100_000) for _ in range(4000)]
    pins = [bytearray(1000) for _ in range(100_000)]
    del chunks
    yield
    del pins


def _freed_big_buffer() -> float:
    """Map BIG MiB, touch it, unmap it; return the peak it set."""
    buf = _touched(BIG)
    peak = pm.lifetime_peak_mb()
    buf.close()
    return peak


@linux_only
def test_a_buffer_freed_before_the_run_is_not_the_runs_peak(fragmented_heap: None) -> None:
    pm.reset_high_water()
    before = _freed_big_buffer()
    floor = pm.current_rss_mb()
    assert before >= floor + BIG - MARGIN  # the buffer did raise the process's high-water mark
    run = pm.RunPeak.start(torch.device("cpu"))
    peak, how = run.read()
    assert how == pm.HIGH_WATER
    assert floor - MARGIN <= peak < floor + MARGIN
    buf = _touched(BIG // 2)  # memory the run itself takes is counted
    buf.close()
    peak, how = run.read()
    assert how == pm.HIGH_WATER and peak >= floor + BIG // 2 - MARGIN


@linux_only
def test_the_cost_meter_reports_the_runs_own_peak(loaded) -> None:
    model, inputs, _ = loaded("llava")
    meter = CostMeter(model)
    try:
        _freed_big_buffer()
        meter.take()  # a new run starts here, as `harness run` starts each task
        floor = pm.current_rss_mb()
        with torch.no_grad():
            model(**inputs)
        cost = meter.take()
    finally:
        meter.remove()
    assert cost["peak_memory_how"] == pm.HIGH_WATER
    assert cost["peak_memory_mb"] < floor + MARGIN  # a tiny model's forward: nowhere near the freed buffer


@linux_only
def test_without_the_reset_the_record_says_how_it_measured(monkeypatch: pytest.MonkeyPatch,
                                                           fragmented_heap: None) -> None:
    pm.reset_high_water()  # a low lifetime mark, so that a run can raise it below
    monkeypatch.setattr(pm, "reset_high_water", lambda: False)  # as where clear_refs is refused
    _freed_big_buffer()
    floor = pm.current_rss_mb()
    run = pm.RunPeak.start(torch.device("cpu"))
    assert run.samples
    small = _touched(BIG // 4)
    run.sample()
    small.close()
    peak, how = run.read()
    assert how == pm.LOWER_BOUND  # the lifetime peak (the freed buffer) is older than the run: not reported
    assert floor + BIG // 4 - MARGIN <= peak < floor + BIG // 2
    big = _touched(2 * BIG)  # now the run raises the lifetime peak: that peak is the run's
    big.close()
    peak, how = run.read()
    assert how == pm.NEW_HIGH and peak >= floor + 2 * BIG - MARGIN


@linux_only
def test_a_later_reset_turns_an_open_run_into_a_lower_bound() -> None:
    first = pm.RunPeak.start(torch.device("cpu"))
    second = pm.RunPeak.start(torch.device("cpu"))  # resets the process-wide mark again
    assert first.read()[1] == pm.LOWER_BOUND and second.read()[1] == pm.HIGH_WATER


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_run_reports_its_own_peak() -> None:
    device = torch.device("cuda")
    big = torch.ones(BIG * 2**20, dtype=torch.uint8, device=device)  # before the run: not its peak
    del big
    floor = torch.cuda.memory_allocated(device) / 2**20
    run = pm.RunPeak.start(device)
    peak, how = run.read()
    assert how == pm.CUDA and peak < floor + 1
    during = torch.ones(BIG // 4 * 2**20, dtype=torch.uint8, device=device)
    del during
    assert run.read()[0] >= floor + BIG // 4


def test_merged_processes_name_each_way_of_measuring() -> None:
    def part(peak: float, how: str | None) -> dict:
        out = {"prefills": [{"seconds": 1.0, "dense": 1e9, "nonzero": 1e9, "tokens": 4, "visual_in": 0,
                             "visual_kept": 0, "tokens_per_layer": [4], "visual_per_layer": [0]}],
               "decode_steps": 0, "decode_s": 0.0, "peak_memory_mb": peak, "device": "cpu", "layers": 1}
        return {**out, "peak_memory_how": how} if how else out

    assert summarize([part(10.0, pm.HIGH_WATER), part(20.0, pm.HIGH_WATER)])["peak_memory_how"] == pm.HIGH_WATER
    merged = summarize([part(10.0, pm.HIGH_WATER), part(30.0, pm.LOWER_BOUND)])
    assert merged["peak_memory_mb"] == 30.0 and merged["peak_memory_how"] == f"{pm.HIGH_WATER},{pm.LOWER_BOUND}"
    assert summarize([part(5.0, None)])["peak_memory_how"] is None  # an export from before the field
