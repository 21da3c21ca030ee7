"""`harness run --dry-run`: the run's plan (wrapper, calibration, tasks, artifact, records) with nothing loaded or
written, for issue 26's families from their real ids, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from tamp.families.registry import families

NEW = ("qwen3-vl", "internvl3", "gemma3", "smolvlm")


@pytest.mark.parametrize("family", NEW)
def test_a_new_family_plans_from_its_real_id(family: str, tmp_path: Path, capsys) -> None:
    row = families()[family]
    code = main(["run", "--model", row.registry_name, "--method", "tamp+aim", "--sparsity", "0.5",
                 "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    tasks = row.evaluation.tasks
    assert f"1 cells, {len(tasks)} task evaluations, 0 already cached" in out
    plan = next(line for line in out.splitlines() if line.startswith(f"| {row.registry_name} "))
    cells = [c.strip() for c in plan.strip("|").split("|")]
    assert cells[:5] == [row.registry_name, row.evaluation.wrapper, "tamp+aim", "0.5", "unstructured"]
    assert cells[-1] == f"to evaluate: all {len(tasks)}"
    assert row.hf_id in out  # the real weights (a dry run fetches nothing)
    assert "llava_next_sharegpt4v.json" in row.evaluation.calib and "llava_next_sharegpt4v.json" in out  # its calib
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_weight_method_without_sparsity_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["run", "--model", "internvl3-8b", "--method", "tamp", "--output", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --sparsity is required (0 evaluates the dense model)"]
