"""The trained tiny LLaVA-NeXT through the harness: its scores show what pruning does to a model.

One build per session (the `trained_llava_next` fixture, kept in the user's cache across sessions) and one
sweep (`harness sweep` of five methods at 30/50/70%, on the first LIMIT held-out questions) shared by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tamp.calibration.pictures import heldout_rows
from tamp.testing.tiny_training import weights_sha256

MODEL = "tiny-trained-llava-next"
METHODS = ("magnitude", "wanda", "sparsegpt", "owl", "tamp")
SPARSITIES = (0.3, 0.5, 0.7)
EXTRA_AT_HALF = ("ecoflap", "das", "amia")
# exact-match chance: guessing the likeliest answer of the question's kind (1 / options, averaged over the rows)
HELDOUT_CHANCE = sum(1 / len(r["choices"]) for r in heldout_rows()) / len(heldout_rows())
LIMIT = 80  # held-out questions per cell (the kinds cycle, so 20 of each): about 2 s of evaluation per cell
TASK = "tamp_heldout_vqa"

pytestmark = [pytest.mark.slow, pytest.mark.trained]


@pytest.fixture(scope="module")
def dirs(trained_llava_next: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained-runs")
    return {"runs": root / "runs", "artifacts": root / "artifacts", "reports": root / "reports"}


def _harness(*args: str) -> None:
    from harness.cli import main

    assert main(list(args)) == 0


def _scores(runs: Path) -> dict[tuple[str, float, str], float]:
    from harness.collect import headline_frame

    df = headline_frame(runs)
    return {(m, s, t): r for m, s, t, r in zip(df["method"], df["sparsity"], df["task"], df["raw"])}


def _where(dirs: dict[str, Path]) -> list[str]:
    return ["--output", str(dirs["runs"]), "--artifacts", str(dirs["artifacts"]), "--device", "cpu",
            "--limit", str(LIMIT)]


def test_the_registry_name_loads_the_cached_build(trained_llava_next: Path) -> None:
    from tamp.models.loading import load_model

    info = json.loads((trained_llava_next / "training.json").read_text())
    loaded = load_model(MODEL)
    assert Path(loaded.source) == trained_llava_next  # found in the cache, not trained again
    assert weights_sha256(loaded.model) == info["weights_sha256"]
    assert 500_000 < info["parameters"] < 10_000_000


def test_dense_model_answers_held_out_questions(dirs: dict[str, Path]) -> None:
    _harness("run", "--model", MODEL, "--sparsity", "0", "--tasks", f"{TASK},tamp_heldout_mc", *_where(dirs))
    scores = _scores(dirs["runs"])
    assert scores[("dense", 0.0, TASK)] >= 0.9
    assert scores[("dense", 0.0, "tamp_heldout_mc")] >= 0.9


@pytest.fixture(scope="module")
def sweep(dirs: dict[str, Path]) -> dict[tuple[str, float, str], float]:
    _harness("sweep", "--model", MODEL, "--methods", ",".join(METHODS), "--sparsities", ",".join(map(str, SPARSITIES)),
             "--tasks", TASK, "--out-dir", str(dirs["reports"]), "--csv", str(dirs["reports"] / "leaderboard.csv"),
             *_where(dirs))
    for method in EXTRA_AT_HALF:
        _harness("run", "--model", MODEL, "--method", method, "--sparsity", "0.5", "--tasks", TASK, *_where(dirs))
    return {k: v for k, v in _scores(dirs["runs"]).items() if k[2] == TASK}


def test_sweep_writes_table_plot_and_leaderboard(sweep, dirs: dict[str, Path]) -> None:
    reports = dirs["reports"]
    table = next(reports.glob(f"{MODEL}*.md")).read_text()
    assert "Held-out VQA" in table and "Dense" in table and "TAMP" in table
    assert next(reports.glob(f"{MODEL}*.png")).stat().st_size > 10_000
    rows = (reports / "leaderboard.csv").read_text().splitlines()
    assert len(rows) > 1 + len(METHODS) * len(SPARSITIES)


def test_dense_is_on_top(sweep) -> None:
    dense = sweep[("dense", 0.0, TASK)]
    assert dense >= 0.9
    for method in METHODS:
        for sparsity in SPARSITIES:
            assert sweep[(method, sparsity, TASK)] <= dense, (method, sparsity)


def test_magnitude_at_70_is_clearly_below_dense(sweep) -> None:
    assert sweep[("magnitude", 0.7, TASK)] <= sweep[("dense", 0.0, TASK)] - 0.2


def test_every_method_at_half_sparsity_beats_chance(sweep) -> None:
    for method in (*METHODS, *EXTRA_AT_HALF):
        assert sweep[(method, 0.5, TASK)] >= HELDOUT_CHANCE + 0.15, method
