"""Smoke test of the bench's `batch` section on a few questions: every phase ran, batch 8 answered as batch 1."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import run as bench_run  # noqa: E402
from tests.bench.test_bench_smoke import _check_schema, _only_json  # noqa: E402


def test_batch_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert bench_run.main(["--size", "cpu", "--device", "cpu", "--sections", "batch", "--batch-limit", "8",
                           "--batch-methods", "dense,fastv", "--batch-repeats", "1", "--out", str(out)]) == 0
    record = _only_json(out)
    _check_schema(record, "cpu")
    phases = record["phases"]
    assert [p["details"]["batch_size"] for p in phases] == [1, 8, 1, 8]
    assert all(p["status"] == "ok" and p["details"]["questions"] == 8 for p in phases)
    for p in phases[1::2]:  # the answers do not depend on the batch size (the speed on a shared CPU may)
        assert p["details"]["same_score"] and p["details"]["same_answers"]
        assert p["ratio_to"].endswith("batch 1")
