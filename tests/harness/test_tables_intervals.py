"""Intervals and dense-indistinguishable marks in the table, the leaderboard's interval columns and calibration seeds,
from records whose per-document scores are known (no model involved)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.collect import document_scores, headline_frame
from harness.grid import Grid, cells
from harness.leaderboard import BEFORE_UNCERTAINTY, COLUMNS, export
from harness.records import SCHEMA, record_path, samples_path, write_json, write_jsonl
from harness.tables import build_tables, render
from harness.uncertainty import bootstrap_interval, mcnemar_exact

MODEL = "tiny-trained-llava-next"
TASK = "tamp_heldout_vqa"
LIMIT = 20
DENSE = [1.0] * 17 + [0.0] * 3  # 85%
WANDA = [0.0, 0.0] + [1.0] * 15 + [1.0, 0.0, 0.0]  # 80%: docs 0, 1 lost, doc 17 gained -> McNemar (1, 2)
MAGNITUDE = [0.0] * 10 + [1.0] * 7 + [0.0] * 3  # 35%: ten documents lost, none gained -> McNemar (0, 10)
SEEDS = {0: [0.0] + [1.0] * 16 + [0.0] * 3, 1: DENSE, 2: [1.0] * 18 + [0.0] * 2}  # 80, 85, 90%


def put(runs: Path, method: str, sparsity: float, scores: list[float] | None, *, seed: int = 42,
        samples: list[dict[str, Any]] | None = None) -> Path:
    """A run record of TASK (as `harness run` writes it) and, unless scores is None, its samples JSONL."""
    path = record_path(runs, MODEL, method, sparsity, "unstructured", TASK, LIMIT, seed)
    mean = sum(scores) / len(scores) if scores else 0.5
    write_json(path, {"schema": SCHEMA, "artifact_key": f"k-{method}-{sparsity}-{seed}",
                      "model": {"name": MODEL, "build": "41c0932c03af"}, "method": method, "sparsity": sparsity,
                      "pattern": "unstructured", "task": TASK, "limit": LIMIT,
                      "metrics": {"exact_match,none": mean}, "results": {TASK: {"exact_match,none": mean}},
                      "artifact": {"cache_inputs": {"seed": seed}}, "samples_file": samples_path(path).name,
                      "versions": {"lmms-eval": "0.7.3"}, "date": "2026-12-07T00:00:00+00:00"})
    if samples is None and scores is not None:
        samples = [{"task": TASK, "doc_id": i, "exact_match": s} for i, s in enumerate(scores)]
    if samples is not None:
        write_jsonl(samples_path(path), samples)
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    put(runs, "dense", 0.0, DENSE)
    put(runs, "wanda", 0.5, WANDA)
    put(runs, "magnitude", 0.5, MAGNITUDE)
    put(runs, "sparsegpt", 0.5, None)  # a record from before samples were kept
    for seed, scores in SEEDS.items():
        put(runs, "wanda", 0.3, scores, seed=seed)
    return runs


def body(text: str, title: str) -> dict[str, list[str]]:
    """Row label -> cells of the markdown table under `title`."""
    block = text.split(title, 1)[1].split("\n### ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    return {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in rows}


def half(scores: list[float]) -> str:
    low, high = bootstrap_interval(scores)
    return f"{(high - low) / 2 * 100:.2f}"


def test_table_shows_intervals_and_marks(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", "--runs", str(runs), "--sparsity", "0.5"]) == 0
    text = capsys.readouterr().out
    rows = body(text, "50% sparsity (scores")
    assert rows["Dense"][0] == f"85.00 ± {half(DENSE)}"  # dense: its interval, never a mark
    assert rows["Wanda"][0] == f"80.00 ± {half(WANDA)} †"  # p = 1 (one gained, two lost)
    assert rows["Magnitude"][0] == f"35.00 ± {half(MAGNITUDE)}"  # p = 2/1024: told apart from dense
    assert rows["SparseGPT"][0] == "50.00"  # no samples: the bare score
    assert "no interval, the bare score (Held-out VQA): no samples file" in text
    assert "†: not distinguishable from dense (p >= 0.05" in text and "10,000 resamples, seed 0" in text


def test_frame_carries_the_interval_and_the_exact_p_value(runs: Path) -> None:
    df = headline_frame(runs).set_index(["method", "sparsity", "seed"])
    wanda = df.loc[("wanda", 0.5, 42)]
    low, high = bootstrap_interval(WANDA)
    assert (wanda["ci_low"], wanda["ci_high"]) == pytest.approx((low * 100, high * 100), abs=1e-9)
    assert wanda["n_docs"] == 20 and wanda["paired_test"] == "mcnemar"
    assert wanda["p_vs_dense"] == mcnemar_exact(1, 2) == 1.0
    assert df.loc[("magnitude", 0.5, 42)]["p_vs_dense"] == mcnemar_exact(0, 10) == 2 / 1024
    old = df.loc[("sparsegpt", 0.5, 42)]
    assert pd_missing(old["ci_low"]) and pd_missing(old["p_vs_dense"]) and "no samples" in old["no_interval"]


def pd_missing(value: Any) -> bool:
    return value is None or value != value


def test_seeds_show_mean_and_spread(runs: Path) -> None:
    [table] = build_tables(headline_frame(runs), sparsity=0.3)
    assert table.data.loc["Wanda", "Held-out VQA"] == pytest.approx(85.0)
    rows = body(render([table]), "30% sparsity (scores")
    assert rows["Wanda"][0] == "85.00 ± 5.00 (n=3) †"  # std of 80, 85, 90; every seed's p >= 0.05
    assert rows["Wanda"][1] == "85.00"  # the average over seeds carries no bootstrap interval
    assert "(n=k): the mean over k prunings with different calibration seeds" in render([table])


def test_scores_that_are_not_a_mean_of_documents_get_no_interval(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    rows = [{"task": TASK, "doc_id": i, "exact_match": {"pred": "x", "answer": "y"}} for i in range(4)]
    scores, why = document_scores(put(runs, "dense", 0.0, None, samples=rows), {**_rec(runs, "dense", 0.0)})
    assert scores is None and "aggregate-only" in why
    wrong = [{"task": TASK, "doc_id": i, "exact_match": 1.0} for i in range(4)]  # mean 1, record says 0.5
    scores, why = document_scores(put(runs, "wanda", 0.5, None, samples=wrong), _rec(runs, "wanda", 0.5))
    assert scores is None and "not the mean" in why
    [table] = build_tables(headline_frame(runs))
    assert all(cell.half is None for cell in table.spread.values())
    assert "aggregate-only" in render([table]) and "±" not in render([table]).split("\n\n")[1]


def _rec(runs: Path, method: str, sparsity: float) -> dict[str, Any]:
    from harness.records import load_record

    rec = load_record(record_path(runs, MODEL, method, sparsity, "unstructured", TASK, LIMIT))
    assert rec is not None
    return rec


def test_leaderboard_interval_columns(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board.csv"
    export(runs, out)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert COLUMNS[-7:] == ["ci_low", "ci_high", "n_docs", "p_vs_dense", "seed", "prefill_tflops_encoder",
                            "prefill_tflops_projector"] and list(rows[0]) == COLUMNS  # the vision side's cost last
    wanda = next(r for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.5")
    low, high = bootstrap_interval(WANDA)
    assert float(wanda["ci_low"]) == pytest.approx(low, abs=1e-12) and float(wanda["ci_high"]) == pytest.approx(high)
    assert wanda["n_docs"] == "20" and float(wanda["p_vs_dense"]) == 1.0 and wanda["seed"] == "42"
    assert sorted(r["seed"] for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.3") == ["0", "1", "2"]
    old = next(r for r in rows if r["method"] == "sparsegpt")
    assert old["ci_low"] == old["p_vs_dense"] == old["n_docs"] == ""
    # a file from before the interval columns: read, rewritten with them, its rows replaced by the new ones
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, BEFORE_UNCERTAINTY, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if r["seed"] in ("42", ""))
    total, _ = export(runs, out)
    with out.open() as fh:
        again = list(csv.DictReader(fh))
    assert list(again[0]) == COLUMNS and total == len(again) == len(rows)


def test_seeds_plan_a_pruning_per_seed() -> None:
    grid = Grid(name="g", models=[MODEL], methods=["dense", "wanda", "magnitude"], sparsities=[0.5], seeds=[0, 1, 2])
    got = cells(grid)
    assert [(c.method, c.seed) for c in got] == [("dense", None), ("wanda", 0), ("wanda", 1), ("wanda", 2),
                                                 ("magnitude", None)]  # magnitude draws no calibration data
    paths = {record_path(Path("r"), MODEL, "wanda", 0.5, "unstructured", TASK, None, s) for s in (0, 1, 2, 42)}
    assert len(paths) == 4 and record_path(Path("r"), MODEL, "wanda", 0.5, "unstructured", TASK, None, 42) == \
        record_path(Path("r"), MODEL, "wanda", 0.5, "unstructured", TASK, None)  # the default keeps its old path


@pytest.mark.slow
def test_sweep_dry_run_with_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--model", MODEL, "--methods", "wanda", "--sparsities", "0.5", "--seeds", "0,1,2",
                 "--tasks", TASK, "--limit", "4", "--dry-run", "--output", str(tmp_path / "runs"),
                 "--artifacts", str(tmp_path / "art"), "--out-dir", str(tmp_path), "--csv", str(tmp_path / "b.csv")]) == 0
    out = capsys.readouterr().out
    wanda = [line for line in out.splitlines() if line.startswith("| ") and " wanda " in line]
    assert len(wanda) == 3 and [line.split("|")[6].strip() for line in wanda] == ["0", "1", "2"]
    assert len({line.split("|")[7].strip() for line in wanda}) == 3  # three artifact keys: three prunings
    assert not (tmp_path / "runs").exists()
    capsys.readouterr()
    assert main(["sweep", "--model", MODEL, "--seeds", "0,zero", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds takes comma-separated integers, got '0,zero'"


def test_plot_error_bars_are_the_interval_or_the_spread_over_seeds(runs: Path, tmp_path: Path) -> None:
    from harness.plots import _points, plot_curves

    df = headline_frame(runs)
    wanda = df[df["method"] == "wanda"]
    xs, ys, (below, above) = _points(wanda)
    low, high = bootstrap_interval(WANDA)
    assert xs == [0.3, 0.5] and ys == pytest.approx([85.0, 80.0])
    assert below[0] == above[0] == pytest.approx(5.0)  # std of 80, 85, 90 over the three seeds
    assert (below[1], above[1]) == pytest.approx((80.0 - low * 100, high * 100 - 80.0))
    old = df[df["method"] == "sparsegpt"]
    assert _points(old)[2] == [[0.0], [0.0]]  # no samples: no bar
    assert [p.suffix for p in plot_curves(df, None, tmp_path / "c.png")] == [".png", ".svg"]
