"""`harness sweep --token-budgets`: each token method that takes the common budget runs once per budget (a method
without one, and dense, once), the budget goes into the run's options, record path and record, and the table
has a row per budget with the visual tokens each kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.grid import Settings, cells, run_options, sweep_grid
from harness.records import record_budget, record_path, with_budget
from harness.tables import method_label, method_rank


def _grid(tmp_path: Path, methods: list[str], budgets: list[float] | None, overrides: list[str] | None = None):
    return sweep_grid("tiny-llava", methods, [0.5], ["tamp_smoke_mc"], "unstructured", tmp_path, tmp_path / "b.csv",
                      overrides=overrides or [], budgets=budgets)


def test_cells_run_each_budget(tmp_path: Path) -> None:
    grid = _grid(tmp_path, ["fastv", "aim", "tamp+dart", "random"], [0.333, 0.111])
    got = [(c.method, c.sparsity, c.budget) for c in cells(grid)]
    assert got == [("dense", 0.0, None), ("fastv", 0.0, 0.333), ("fastv", 0.0, 0.111), ("aim", 0.0, None),
                   ("tamp+dart", 0.5, 0.333), ("tamp+dart", 0.5, 0.111), ("random", 0.0, 0.333),
                   ("random", 0.0, 0.111)]
    options = {(c.method, c.budget): run_options(grid, c, Settings(output=tmp_path)) for c in cells(grid)}
    assert options[("fastv", 0.111)].overrides == ["token_budget=0.111"]
    assert options[("aim", None)].overrides == [] and options[("dense", None)].overrides == []
    paths = {record_path(tmp_path, "tiny-llava", "fastv", 0.0, "unstructured", "t", None, 42, b) for b in (0.333, 0.111)}
    assert {p.parent.name for p in paths} == {"fastv_s0.00_unstructured_b0.333", "fastv_s0.00_unstructured_b0.111"}
    assert record_path(tmp_path, "tiny-llava", "fastv", 0.0, "unstructured", "t", None, 42).parent.name == \
        "fastv_s0.00_unstructured"
    assert [c.method for c in cells(_grid(tmp_path, ["fastv"], None))] == ["dense", "fastv"]


def test_row_names_carry_the_budget() -> None:
    assert with_budget("fastv", 0.222) == "fastv@0.222" and with_budget("fastv", None) == "fastv"
    assert record_budget({"transform": {"method": "dart", "params": {}, "budget": 0.111}}) == 0.111
    assert record_budget({"transform": {"method": "dart", "params": {}}}) is None and record_budget({}) is None
    assert method_label("tamp+dart@0.111") == "TAMP + DART @ 0.111"
    assert method_rank("fastv@0.222")[0] == method_rank("fastv")[0]


@pytest.mark.parametrize(("budgets", "overrides", "says"), [
    ("0,0.5", [], "token_budget must be in (0, 1]"),
    ("0.5,1.5", [], "token_budget must be in (0, 1]"),
    ("0.5,0.5", [], "must differ"),
    ("0.5", ["--set", "token_budget=0.3"], "give one or the other"),
    ("half", [], "comma-separated numbers"),
])
def test_bad_budgets_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], budgets: str,
                                  overrides: list[str], says: str) -> None:
    assert main(["sweep", "--model", "tiny-llava", "--methods", "fastv", "--token-budgets", budgets, *overrides,
                 "--dry-run", "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_dry_run_lists_a_row_per_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--model", "tiny-llava", "--methods", "fastv,pool", "--token-budgets", "0.333,0.222",
                 "--tasks", "tamp_smoke_mc", "--dry-run", "--output", str(tmp_path / "runs"),
                 "--artifacts", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    for row in ("fastv@0.333", "fastv@0.222", "pool@0.333", "pool@0.222"):
        assert f"| {row} " in out
    assert "5 cells" in out


@pytest.mark.slow
def test_tiny_sweep_over_budgets(tmp_path: Path, tiny_root: Path) -> None:
    """A real sweep on the tiny LLaVA: records carry the budget and the visual tokens kept; the table a row per
    budget; a second run finds everything done."""
    args = ["sweep", "--model", "tiny-llava", "--methods", "fastv,random,pool,dart", "--sparsities", "0.5",
            "--token-budgets", "0.5,0.25", "--tasks", "tamp_smoke_mc", "--out-dir", str(tmp_path / "sweeps"),
            "--csv", str(tmp_path / "board.csv"), "--limit", "2", "--device", "cpu", "--output",
            str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts")]
    assert main(args) == 0
    kept: dict[tuple[str, float], int] = {}
    for path in (tmp_path / "runs" / "tiny-llava").glob("*_b*/tamp_smoke_mc_limit2.json"):
        record = json.loads(path.read_text())
        budget = record["transform"]["budget"]
        assert path.parent.name.endswith(f"_b{budget:g}")
        kept[(record["method"], budget)] = record["cost"]["visual_tokens_kept"]
    assert set(kept) == {(m, b) for m in ("fastv", "random", "pool", "dart") for b in (0.5, 0.25)}
    for method in ("fastv", "random", "pool", "dart"):
        assert kept[(method, 0.25)] < kept[(method, 0.5)]
    table = (tmp_path / "sweeps" / "tiny-llava_unstructured.md").read_text()
    for label in ("FastV @ 0.5", "FastV @ 0.25", "Random @ 0.5", "Pool @ 0.25", "DART @ 0.5", "Dense"):
        assert f"| {label} " in table
    board = (tmp_path / "board.csv").read_text()
    for method, budget in kept:  # the leaderboard keeps a row per budget, with the tokens it kept
        assert f",{method}@{budget:g}," in board
    assert main(args) == 0
