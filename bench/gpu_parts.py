"""The four parts of `make gpu-check`, each a function `(dry, limit_s, log) -> dict` run in its own process by
bench/gpu_check.py: a status (ok | failed | error | timeout), a one-line headline, a summary, the raw records.

dry=True runs the same code at tiny sizes on the CPU (`make gpu-check DRY=1`, part of `make test`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT, TimeLimit

CUDA_TESTS = "tests/cuda"
ON_CPU_ENV = "TAMP_CUDA_TESTS_ON_CPU"  # read by tests/cuda/conftest.py


def device_for(dry: bool) -> torch.device:
    return torch.device("cpu" if dry else "cuda")


# ---- cuda-tests -------------------------------------------------------------------------------------------------


def cuda_tests(dry: bool, limit_s: float, log: Any = print) -> dict[str, Any]:
    """`pytest -m cuda tests/cuda` in a subprocess (killed at the limit), counted from its JUnit XML."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(ON_CPU_ENV, None)
    if dry:
        env[ON_CPU_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="gpu-check-tests-") as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", CUDA_TESTS, "-p", "no:cacheprovider",
               f"--junitxml={report}", "-o", "junit_family=xunit2"]
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, limit_s - 3))
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return {"status": "timeout", "reason": f"pytest ran past {limit_s:.0f} s",
                    "headline": "time limit reached", "summary": {"output_tail": out[-2000:]}}
        counts, failures = junit_counts(report) if report.exists() else ({}, [])
    summary = {**counts, "failures": failures, "returncode": proc.returncode, "output_tail": proc.stdout[-2000:]}
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("errors", 0)
    if proc.returncode != 0 or not ran:
        status = "failed"
        reason = (failures[0] if failures else
                  f"pytest exit {proc.returncode}" + (", no test ran" if not ran else ""))
    else:
        status, reason = "ok", None
    headline = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped")
                         if counts.get(k, 0) or k == "passed")
    return {"status": status, "reason": reason, "headline": headline, "summary": summary}


def junit_counts(path: Path) -> tuple[dict[str, int], list[str]]:
    """passed / failed / errors / skipped and the first line of each failure, from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                if child.tag != "skipped":
                    message = (child.get("message") or child.tag).splitlines()
                    failures.append(f"{name}: {message[0][:300] if message else child.tag}")
                break
        counts[outcome] += 1
    return counts, failures


# ---- bench-8b -----------------------------------------------------------------------------------------------------


def bench_8b(dry: bool, limit_s: float, log: Any = print) -> dict[str, Any]:
    """`bench --size 8b`: the TAMP preset on llama3-llava-next-8b's shape, offload mode (bench/synthetic_8b.py)."""
    from bench import synthetic_8b

    shape = synthetic_8b.DRY if dry else synthetic_8b.FULL
    log(f"  8b: {synthetic_8b.describe(shape)}")
    phases = synthetic_8b.run(device_for(dry), shape, "tamp", offload=True)
    records = [p.to_dict() for p in phases]
    build = phases[0]
    prune = phases[1] if len(phases) > 1 else None
    summary: dict[str, Any] = {"shape": shape.__dict__, "build_s": build.wall_s}
    if prune is None or prune.status != "ok":
        failed = prune or build
        timed_out = (failed.reason or "").startswith(TimeLimit.__name__)
        return {"status": "timeout" if timed_out else "error", "reason": failed.reason,
                "headline": ("prune not finished within the part's limit (so over the 180 s target)" if timed_out
                             else "failed"),
                "summary": summary, "phases": records}
    peak_gb = (prune.peak_gpu_mb or 0.0) / 1024 if prune.peak_gpu_mb is not None else None
    summary.update({"prune_s": prune.wall_s, "peak_gpu_gb": peak_gb, "sparsity": prune.details.get("sparsity"),
                    "engine_timings": prune.details.get("engine_timings")})
    targets = []
    if not dry:
        targets = [{"name": "TAMP prune, seconds", "value": prune.wall_s, "target": synthetic_8b.TARGET_TOTAL_S,
                    "met": prune.wall_s <= synthetic_8b.TARGET_TOTAL_S},
                   {"name": "peak GPU memory, GB", "value": peak_gb, "target": synthetic_8b.TARGET_GPU_GB,
                    "met": peak_gb is not None and peak_gb <= synthetic_8b.TARGET_GPU_GB}]
    headline = f"prune {prune.wall_s:.1f} s" + (f", peak GPU {peak_gb:.1f} GB" if peak_gb is not None else "")
    if targets:
        headline += " (targets <= 180 s: " + ("met" if targets[0]["met"] else "MISSED") + \
                    ", <= 20 GB: " + ("met" if targets[1]["met"] else "MISSED") + ")"
    return {"status": "ok", "headline": headline, "summary": summary, "targets": targets, "phases": records}


# ---- tokens-7b ----------------------------------------------------------------------------------------------------

VISUAL_COUNTS = (576, 2880)  # LLaVA-1.5's one image; LLaVA-NeXT's anyres grid (5 views)
DRY_VISUAL_COUNTS = (576, 1152)  # the dry run: one image and two, to stay within its minute


def token_shapes(dry: bool) -> list[Any]:
    """The 7B decoder (LLaVA-1.5-7B / Vicuna-7B: hidden 4096, 32 layers, 32 heads, intermediate 11008), bf16;
    dry: a 4-layer width-64 stand-in at 576 and 1,152."""
    from bench.token_bench import TokenShape

    if dry:
        base = TokenShape(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=4, visual=576, text=16,
                          dtype="float32")
    else:
        base = TokenShape(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32, visual=576, text=64,
                          dtype="bfloat16")
    return [replace(base, visual=v) for v in (DRY_VISUAL_COUNTS if dry else VISUAL_COUNTS)]


def tokens_7b(dry: bool, limit_s: float, log: Any = print) -> dict[str, Any]:
    """The bench `tokens` section (bench/token_bench.py) at the 7B shape, sdpa: prefill time against the FLOPs of
    every token method at the three budgets (AIM and YOPO at their own settings)."""
    from bench import token_bench

    device = device_for(dry)
    records: list[dict[str, Any]] = []
    rows = []
    for shape in token_shapes(dry):
        log(f"  tokens: {shape.layers} layers x hidden {shape.hidden}, {shape.visual} visual tokens, {shape.dtype}")
        phases = token_bench.run("8b", device, repeats=1 if dry else 3, shape=shape)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for p in phases:
            records.append({**p.to_dict(), "visual": shape.visual})
            rows.append({"visual": shape.visual, "case": p.name.split(" of ")[0].removeprefix("prefill, "),
                         "status": p.status, "prefill_s": p.wall_s, "time_ratio": p.ratio,
                         "flop_ratio": p.details.get("flop_ratio"), "peak_gpu_mb": p.peak_gpu_mb})
    bad = [r for r in records if r["status"] not in ("ok", "skipped")]  # skipped: a method for other models
    if bad:
        return {"status": "error", "reason": f"{bad[0]['name']}: {bad[0]['reason']}", "headline": "failed",
                "summary": {"rows": rows}, "phases": records}
    fastv: dict[int, dict[str, Any]] = {}  # each visual count's first FastV budget (the bench's largest)
    for r in rows:
        if r["case"].startswith("fastv @ "):
            fastv.setdefault(r["visual"], r)
    headline = "; ".join(f"{v} visual: dense {next(r['prefill_s'] for r in rows if r['visual'] == v):.3f} s, "
                         f"{r['case'].replace('fastv', 'FastV')} x{r['time_ratio']:.2f} time / "
                         f"x{r['flop_ratio']:.2f} FLOPs" for v, r in fastv.items())
    return {"status": "ok", "headline": headline, "summary": {"rows": rows}, "phases": records}


# ---- batch-throughput ----------------------------------------------------------------------------------------------


def batch_throughput(dry: bool, limit_s: float, log: Any = print) -> dict[str, Any]:
    """A 7B-shaped random LLaVA-NeXT generating at batch 1 / 8 / 32 (bench/gpu_batch.py)."""
    from bench import gpu_batch

    result = gpu_batch.run(device_for(dry), gpu_batch.DRY if dry else gpu_batch.FULL, log=log)
    rows = result["batches"]
    ok = [r for r in rows if r["status"] == "ok"]
    headline = ", ".join(f"batch {r['batch']}: {r['questions_per_s']:.2f} q/s" for r in ok)
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        headline += f"; batch {missing[0]['batch']}: {missing[0]['status']}"
    status = "ok" if len(ok) == len(result["shape"]["batches"]) else "error"
    reason = None if status == "ok" else (missing[0].get("reason") if missing else "not every batch size ran")
    return {"status": status, "reason": reason, "headline": headline, "summary": result}


PARTS = {"cuda-tests": cuda_tests, "bench-8b": bench_8b, "tokens-7b": tokens_7b, "batch-throughput": batch_throughput}


def run_part(name: str, dry: bool, limit_s: float, log: Any = print) -> dict[str, Any]:
    """One part under its time limit (SIGALRM in this process; the parent kills it a few seconds later if that does
    not end it): whatever it raises becomes its record."""
    from bench.common import time_limit

    start = time.perf_counter()
    try:
        with time_limit(limit_s):
            out = PARTS[name](dry, limit_s, log)
    except TimeLimit as exc:
        out = {"status": "timeout", "reason": str(exc), "headline": "time limit reached"}
    except Exception as exc:  # noqa: BLE001 - a broken part is recorded; the other parts still run
        out = {"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:500], "headline": "failed"}
    out["wall_s"] = time.perf_counter() - start
    if not dry and torch.cuda.is_available():
        out.setdefault("peak_gpu_mb", torch.cuda.max_memory_allocated() / 2**20)
    return out
