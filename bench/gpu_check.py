"""`make gpu-check` (`python -m bench.gpu_check`): what a short GPU window must measure, in one run of at most 8 minutes
on one H100, written to one JSON under results/bench/ and printed as a table.

Parts (bench/gpu_parts.py), in order, each in its own process under its own time limit, so a part that fails, runs
out of memory or hangs is recorded as such and the next starts on a clean GPU:
  cuda-tests        the `cuda`-marked tests (tests/cuda/: engine, token methods, a wrapper, against the CPU)
  bench-8b          `bench --size 8b`: TAMP on llama3-llava-next-8b's shape, offload (targets <= 180 s, <= 20 GB)
  tokens-7b         the bench `tokens` section at 7B shapes (32 layers, hidden 4096), 576 and 2,880 visual tokens
  batch-throughput  a 7B-shaped random LLaVA-NeXT generating at batch 1 / 8 / 32: questions/s, prefill, decode

`--dry` (`make gpu-check DRY=1`) runs the same code at tiny sizes on the CPU and writes under out/gpu-check/.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SCHEMA = "tamp-gpu-check/1"
PART_NAMES = ("cuda-tests", "bench-8b", "tokens-7b", "batch-throughput")
# seconds per part on one H100, each part's process start and imports included; 80 + 230 + 60 + 90 = 460 s of the
# 480 s (8 min) the check may take. bench-8b has 50 s above its 180 s target for the model's build and the imports.
LIMITS_S = {"cuda-tests": 80.0, "bench-8b": 230.0, "tokens-7b": 60.0, "batch-throughput": 90.0}
BUDGET_S = 470.0
# the dry run (~75 s of CPU time) on a CPU that may be shared ten times over: the limits only stop a part that hangs
DRY_LIMITS_S = {"cuda-tests": 900.0, "bench-8b": 600.0, "tokens-7b": 600.0, "batch-throughput": 600.0}
DRY_BUDGET_S = 2700.0
GRACE_S = 5.0  # after a part's own limit (SIGALRM inside it), the parent kills its process
MIN_PART_S = 15.0  # a part is not started with less than this left of the budget
NO_CUDA = "gpu-check: no CUDA device is visible; run it on a GPU machine, or `make gpu-check DRY=1` for the CPU dry run"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="the same code at tiny sizes on the CPU")
    p.add_argument("--out", type=Path, help="folder of the JSON (default results/bench/, dry: out/gpu-check/)")
    p.add_argument("--parts", help=f"comma-separated subset of {','.join(PART_NAMES)} (default: all, in that order)")
    p.add_argument("--budget", type=float, help=f"seconds for the whole check (default {BUDGET_S:g}, dry "
                                                f"{DRY_BUDGET_S:g}); each part gets its own limit within it")
    return p.parse_args(argv)


def _child(name: str, dry: bool, limit_s: float, result_path: str, started_at: float) -> None:
    from bench.common import write_json_atomic
    from bench.gpu_parts import run_part

    # the limit counts from the process's start: its imports (spawned, on the GPU) are inside it, so the part's own
    # alarm comes before the parent's kill and its record is kept
    left = max(1.0, limit_s - (time.time() - started_at))
    out = run_part(name, dry, left, log=lambda line: print(line, flush=True))
    write_json_atomic(Path(result_path), out)


def _context(dry: bool) -> Any:
    """On the GPU each part starts afresh (spawn: a few seconds of imports, and no CUDA state shared with this
    process however the driver was asked about the device); the CPU dry run forks, so the parent's imports (torch,
    transformers) are not paid again by each part."""
    fork = dry and "fork" in multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if fork else "spawn")


def run_isolated(name: str, dry: bool, limit_s: float, folder: Path) -> dict[str, Any]:
    """One part in its own process; killed GRACE_S after its limit if its own alarm did not end it."""
    result_path = folder / f"{name}.json"
    proc = _context(dry).Process(target=_child, args=(name, dry, limit_s, str(result_path), time.time()),
                                 name=f"gpu-check {name}")
    start = time.perf_counter()
    proc.start()
    proc.join(limit_s + GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"status": "timeout", "reason": f"killed {GRACE_S:g} s after its {limit_s:.0f} s limit",
                "headline": "time limit reached", "wall_s": time.perf_counter() - start}
    if not result_path.exists():
        return {"status": "error", "reason": f"its process ended with exit code {proc.exitcode} and no result",
                "headline": "failed", "wall_s": time.perf_counter() - start}
    return json.loads(result_path.read_text())


def cuda_visible() -> bool:
    """Whether CUDA is there, asked through NVML where it can be, which leaves CUDA uninitialised in this process
    (the parts run in processes of their own)."""
    import torch

    key, old = "PYTORCH_NVML_BASED_CUDA_CHECK", os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ[key] = "1"
    try:
        return torch.cuda.is_available()
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def device_record(dry: bool) -> dict[str, Any]:
    """What ran the check, read after every part (so this process holds no CUDA context while they run)."""
    import torch

    from bench.common import cpu_model

    info: dict[str, Any] = {"type": "cpu" if dry else "cuda", "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if not dry:
        props = torch.cuda.get_device_properties(0)
        info.update({"name": torch.cuda.get_device_name(0), "gpu_total_mb": props.total_memory / 2**20,
                     "capability": f"{props.major}.{props.minor}", "device_count": torch.cuda.device_count()})
    else:
        info["name"] = info["cpu"]
    return info


def table(parts: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    rows = [[p["name"], p["status"], "" if p.get("wall_s") is None else f"{p['wall_s']:.1f}", f"{p['limit_s']:.0f}",
             p.get("headline") or "", p.get("reason") or ""] for p in parts]
    return tabulate(rows, headers=["part", "status", "time s", "limit s", "result", "reason"], tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = tuple(s.strip() for s in args.parts.split(",") if s.strip()) if args.parts else PART_NAMES
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown:
        print(f"gpu-check: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PART_NAMES)}", file=sys.stderr)
        return 2
    import torch  # noqa: F401 - imported once here, shared by every forked part (the dry run)
    import transformers  # noqa: F401

    from bench.common import git_commit, utc_stamp, versions, write_json_atomic

    if not args.dry and not cuda_visible():
        print(NO_CUDA, file=sys.stderr)
        return 2
    limits = DRY_LIMITS_S if args.dry else LIMITS_S
    budget = args.budget or (DRY_BUDGET_S if args.dry else BUDGET_S)
    out_dir = args.out or Path("out/gpu-check" if args.dry else "results/bench")
    start = time.perf_counter()
    print(f"gpu-check{' (dry, CPU)' if args.dry else ''}: {', '.join(names)}; budget {budget:.0f} s", flush=True)
    parts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in names:
            left = budget - (time.perf_counter() - start) - GRACE_S
            limit = min(limits[name], left)
            if limit < MIN_PART_S:
                parts.append({"name": name, "status": "skipped", "limit_s": max(0.0, limit),
                              "reason": f"{max(0.0, left):.0f} s left of the {budget:.0f} s budget"})
                continue
            print(f"[{name}] limit {limit:.0f} s", flush=True)
            record = run_isolated(name, args.dry, limit, Path(tmp))
            parts.append({"name": name, "limit_s": limit, **record})
            print(f"[{name}] {record['status']} in {record.get('wall_s') or 0:.1f} s: {record.get('headline') or ''}",
                  flush=True)
    total = time.perf_counter() - start
    status = "ok" if all(p["status"] == "ok" for p in parts) else "failed"
    targets = [{"part": p["name"], **t} for p in parts for t in p.get("targets", [])]
    record = {"schema": SCHEMA, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "dry": args.dry, "device": device_record(args.dry), "versions": versions(), "git_commit": git_commit(),
              "budget_s": budget, "limits_s": {p["name"]: p["limit_s"] for p in parts}, "status": status,
              "total_wall_s": total, "targets": targets, "parts": parts}
    path = write_json_atomic(out_dir / f"{utc_stamp()}-gpu-check{'-dry' if args.dry else ''}.json", record)
    print()
    print(table(parts))
    print()
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.1f}"
        print(f"target {'met   ' if t['met'] else 'MISSED'}  {t['part']}: {t['name']} {value} (target <= {t['target']:g})")
    print(f"{status}: {sum(p['status'] == 'ok' for p in parts)}/{len(parts)} parts ok on {record['device']['name']}, "
          f"{total:.0f} s; wrote {path}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
