"""Smoke test of the bench's `batch` section on a few questions: every phase ran, batch 8 answered as batch 1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def test_cases_are_the_methods_that_run_on_the_model() -> None:
    """By default every token method that runs on the trained tiny LLaVA-NeXT (not HoliTom, which takes video);
    a method named that does not exist is refused in one line."""
    from bench import batch_bench
    from tamp.methods.base import TokenMethod
    from tamp.methods.registry import all_methods

    names = [name for name, _ in batch_bench.cases()]
    token = [n for n, m in all_methods().items() if isinstance(m, TokenMethod)]
    assert names[0] == "dense" and "holitom" not in names and set(names[1:]) == set(token) - {"holitom"}
    with pytest.raises(ValueError, match="unknown method"):
        batch_bench.cases(["no-such-method"])
