"""`make gpu-check`: its CPU dry run end to end (every part's code at tiny sizes, one JSON), and the time limits that
keep a slow, hung or crashing part from eating the others' time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench import gpu_check, gpu_parts, token_bench  # noqa: E402


def test_dry_run_writes_one_json_with_every_part_ok(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != gpu_parts.ON_CPU_ENV}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("*-gpu-check-dry.json"))
    assert len(files) == 1 and not list(out.glob(".*"))
    record = json.loads(files[0].read_text())
    assert record["schema"] == gpu_check.SCHEMA and record["dry"] is True and record["status"] == "ok"
    assert record["device"]["type"] == "cpu" and record["device"]["name"]
    assert record["versions"]["torch"] and record["versions"]["transformers"]
    parts = {p["name"]: p for p in record["parts"]}
    assert list(parts) == list(gpu_check.PART_NAMES)
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part.get("reason"))
        assert 0 < part["wall_s"] <= part["limit_s"] + gpu_check.GRACE_S and part["headline"]
    assert record["targets"] == []  # the 180 s / 20 GB targets apply to the full shape on a GPU only

    tests = parts["cuda-tests"]["summary"]  # the cuda-marked tests ran (on the CPU), none skipped
    assert tests["passed"] == 8 and tests["failed"] == tests["errors"] == tests["skipped"] == 0

    prune = parts["bench-8b"]["summary"]
    assert prune["prune_s"] > 0 and abs(prune["sparsity"] - 0.5) < 0.01
    assert {"allocation", "capture", "statistics", "masks", "rerun"} <= set(prune["engine_timings"])

    rows = parts["tokens-7b"]["summary"]["rows"]
    assert sorted({r["visual"] for r in rows}) == list(gpu_parts.DRY_VISUAL_COUNTS)
    for visual in gpu_parts.DRY_VISUAL_COUNTS:
        mine = [r for r in rows if r["visual"] == visual]
        assert len(mine) == len(token_bench.cases(visual))
        # every case timed, but a method for other models (HoliTom takes video), named as skipped
        assert all(r["status"] == "ok" and r["prefill_s"] > 0 for r in mine if not r["case"].startswith("holitom"))
        assert all(r["status"] == "skipped" for r in mine if r["case"].startswith("holitom"))
        assert mine[0]["case"] == f"dense, {visual} visual" and mine[0]["flop_ratio"] == 1.0
        fastv = [r["flop_ratio"] for r in mine if r["case"].startswith("fastv @ ")]  # the budgets, largest first
        assert len(fastv) == 3 and fastv == sorted(fastv, reverse=True) and fastv[0] < 1.0

    batches = parts["batch-throughput"]["summary"]["batches"]
    assert [b["batch"] for b in batches] == [1, 2, 4]
    for b in batches:
        assert b["status"] == "ok" and b["questions_per_s"] > 0 and b["new_tokens"] == 4
        assert b["prefill_s"] > 0 and b["decode_s"] > 0 and b["image_tokens"] > 0
    assert batches[0]["speedup_vs_batch_1"] == 1.0
    assert "| cuda-tests" in proc.stdout and "wrote" in proc.stdout


# ---- the time limits, on stand-in parts (the forked part inherits the monkeypatched table) -------------------------


def _sleeps(dry: bool, limit_s: float, log) -> dict:
    time.sleep(30)
    return {"status": "ok"}


def _ignores_the_alarm(dry: bool, limit_s: float, log) -> dict:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # as a part stuck in a GPU call would
    time.sleep(30)
    return {"status": "ok"}


def _raises(dry: bool, limit_s: float, log) -> dict:
    raise RuntimeError("CUDA out of memory.\nmore lines")


def _dies(dry: bool, limit_s: float, log) -> dict:
    os._exit(3)


def _quick(dry: bool, limit_s: float, log) -> dict:
    return {"status": "ok", "headline": "fine"}


def _two_seconds(dry: bool, limit_s: float, log) -> dict:
    time.sleep(2)
    return {"status": "ok", "headline": "fine"}


@pytest.mark.parametrize(("part", "status", "reason"), [
    (_sleeps, "timeout", "time limit of 1 s reached"),
    (_ignores_the_alarm, "timeout", "killed 5 s after its 1 s limit"),
    (_raises, "error", "RuntimeError: CUDA out of memory."),
    (_dies, "error", "its process ended with exit code 3 and no result"),
    (_quick, "ok", None),
], ids=["soft-limit", "hard-kill", "raises", "dies", "ok"])
def test_a_part_is_recorded_and_ends_in_its_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part, status: str,
                                                  reason: str | None) -> None:
    monkeypatch.setitem(gpu_parts.PARTS, "tokens-7b", part)
    start = time.perf_counter()
    record = gpu_check.run_isolated("tokens-7b", True, 1.0, tmp_path)
    assert time.perf_counter() - start < 1.0 + gpu_check.GRACE_S + 10
    assert record["status"] == status and record.get("reason") == reason


def test_a_part_past_the_budget_is_skipped_and_unknown_parts_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(gpu_parts.PARTS, "tokens-7b", _two_seconds)  # leaves < 15 s of the 22 for the next part
    rc = gpu_check.main(["--dry", "--parts", "tokens-7b,batch-throughput", "--budget", "22", "--out", str(tmp_path)])
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rc == 1 and record["status"] == "failed"
    first, second = record["parts"]
    assert first["status"] == "ok" and first["limit_s"] == pytest.approx(17, abs=1)
    assert second["status"] == "skipped" and "left of the 22 s budget" in second["reason"]
    capsys.readouterr()
    assert gpu_check.main(["--dry", "--parts", "tokens,bench-8b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gpu-check: unknown part(s) tokens; choose from cuda-tests, bench-8b, tokens-7b, batch-throughput"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_the_full_check_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == gpu_check.NO_CUDA
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs a GPU part where none is, to see it fail cleanly")
def test_a_gpu_part_starts_in_a_fresh_process_and_its_failure_is_recorded(tmp_path: Path) -> None:
    """On the GPU path each part is spawned (no CUDA state shared with the parent); here, without CUDA, the 7B token
    part fails at its first CUDA call and says so, in time."""
    record = gpu_check.run_isolated("tokens-7b", False, 120.0, tmp_path)
    assert record["status"] == "error" and "CUDA" in record["reason"] and record["wall_s"] < 120
