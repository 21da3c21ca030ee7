"""Grids: the table-1 grid file, dry-run plans, and an end-to-end tiny grid producing table, plot and CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.grid import Cell, Settings, cells, dry_run, load_grid

ROOT = Path(__file__).resolve().parents[2]
TABLE1_TASKS = ["vizwiz_vqa_val", "pope", "textvqa_val", "mme", "mmbench_en_dev_static", "scienceqa_img", "muirbench",
                "mvbench", "videomme", "nextqa_mc_test", "egoschema_subset"]


def test_table1_grid_is_the_papers_experiment() -> None:
    grid = load_grid(ROOT / "grids" / "table1.yaml")
    assert grid.models == ["llava-next"] and grid.sparsities == [0.5] and grid.pattern == "unstructured"
    assert grid.methods == ["dense", "magnitude", "sparsegpt", "wanda", "owl", "ecoflap", "tamp"]
    assert grid.nsamples == 128 and grid.seed == 42 and grid.calib is None  # the model's default: ShareGPT4V
    assert grid.tasks == TABLE1_TASKS
    assert set(grid.outputs) == {"table", "plot", "csv"}
    from harness.model_specs import MODELS

    assert MODELS["llava-next"].source == "llava-hf/llama3-llava-next-8b-hf"
    assert "sharegpt4v" in (MODELS["llava-next"].calib or "")


def test_cells_collapse_dense() -> None:
    grid = load_grid(ROOT / "grids" / "table1.yaml")
    grid.sparsities = [0.3, 0.5]
    got = cells(grid)
    assert got[0] == Cell("llava-next", "dense", 0.0) and len(got) == 1 + 6 * 2


def test_cells_keep_a_quantizer_at_sparsity_zero() -> None:
    """A quantizer alone keeps every weight (one cell, at sparsity 0); composed, it stays in the cell (it was once
    dropped: `gptq-w4g128` planned as the dense model)."""
    grid = load_grid(ROOT / "grids" / "table1.yaml")
    grid.methods = ["dense", "gptq-w4g128", "rtn-w8+fastv", "tamp+gptq-w4g128+aim"]
    grid.sparsities = [0.0, 0.5]
    assert cells(grid) == [Cell("llava-next", "dense", 0.0), Cell("llava-next", "gptq-w4g128", 0.0),
                           Cell("llava-next", "rtn-w8+fastv", 0.0), Cell("llava-next", "gptq-w4g128+aim", 0.0),
                           Cell("llava-next", "tamp+gptq-w4g128+aim", 0.5)]


def test_a_quantizers_parameter_reaches_its_cells() -> None:
    """`--set quant_bits` in a grid with a quantizer is the quantizer's (it was refused as used by no method)."""
    from tamp.recipe import build_recipe

    grid = load_grid(ROOT / "grids" / "table1.yaml")
    grid.methods, grid.sparsities, grid.overrides = ["dense", "tamp+gptq"], [0.5], ["quant_bits=8"]
    assert [c.method for c in cells(grid)] == ["dense", "tamp+gptq"]
    assert build_recipe("tamp+gptq", 0.5, overrides=["quant_bits=8"]).name == "tamp+gptq-w8g128"


def test_a_grid_file_sets_token_budgets(tmp_path: Path) -> None:
    """`token_budgets:` in a grid file, as `harness sweep --token-budgets`: each token method that maps the common
    budget once per share, a method with its own schedule (AIM) and dense once; a budget out of (0, 1], a repeat,
    or a token_budget override beside them is one line naming the file's key."""
    path = tmp_path / "g.yaml"
    path.write_text("models: [a]\nmethods: [dense, fastv, aim]\nsparsities: [0.5]\ntoken_budgets: [0.333, 0.111]\n")
    grid = load_grid(path)
    assert grid.budgets == [0.333, 0.111]
    assert cells(grid) == [Cell("a", "dense", 0.0), Cell("a", "fastv", 0.0, budget=0.333),
                           Cell("a", "fastv", 0.0, budget=0.111), Cell("a", "aim", 0.0)]
    path.write_text("models: [a]\nmethods: [fastv]\nsparsities: [0.5]\n")
    assert load_grid(path).budgets is None
    for text, match in (("token_budgets: [1.5]", "token_budgets: token_budget must be in"),
                        ("token_budgets: [0.5, 0.5]", "token_budgets lists 0.5 more than once"),
                        ("token_budgets: [0.5]\noverrides: [token_budget=0.2]", "token_budgets and token_budget in the"),
                        ("token_budgets: [half]", "token_budgets must be a non-empty list of numbers")):
        path.write_text(f"models: [a]\nmethods: [fastv]\nsparsities: [0.5]\n{text}\n")
        with pytest.raises(HarnessError, match=match):
            load_grid(path)


@pytest.mark.parametrize("text,match", [
    ("models: [a]\nmethods: [wanda]\n", "'sparsities' is required"),
    ("models: [a]\nmethods: [wanda]\nsparsities: [0.5]\nsparsity: 0.5\n", "unknown key"),
    ("models: [a]\nmethods: []\nsparsities: [0.5]\n", "non-empty list"),
    ("models: [a]\nmethods: [wanda]\nsparsities: [half]\n", "numbers"),
    ("- a\n- b\n", "YAML mapping"),
    ("models: [a\n", "not valid YAML"),
    ("models: [a]\nmethods: [w]\nsparsities: [0.5]\noutputs: {pdf: x.pdf}\n", "outputs"),
])
def test_grid_file_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=match):
        load_grid(path)
    with pytest.raises(HarnessError, match="not found"):
        load_grid(tmp_path / "missing.yaml")


def test_table2_grid_is_the_audio_visual_experiment() -> None:
    grid = load_grid(ROOT / "grids" / "table2.yaml")
    assert grid.models == ["qwen2.5-omni"] and grid.sparsities == [0.5] and grid.seed == 42 and grid.nsamples == 128
    assert grid.methods == ["dense", "magnitude", "sparsegpt", "wanda", "owl", "ecoflap", "tamp"]
    assert grid.tasks == ["clotho_aqa_test", "vocalsound_test", "mvbench", "videomme", "nextqa_mc_test",
                          "egoschema_subset"]
    from harness.model_specs import MODELS

    assert MODELS["qwen2.5-omni"].source == "Qwen/Qwen2.5-Omni-7B"
    assert "avinstruct_avqa_music.json" in (MODELS["qwen2.5-omni"].calib or "")


@pytest.mark.parametrize("target,expect", [
    ("reproduce-table1", ["7 cells, 77 task evaluations, 0 already cached", "hf download llava-hf/llama3-llava-next-8b-hf",
                          "hf download --repo-type dataset lmms-lab-encoder/POPE", "llava_next_sharegpt4v.json"]),
    ("reproduce-table2", ["7 cells, 42 task evaluations, 0 already cached", "hf download Qwen/Qwen2.5-Omni-7B",
                          "hf download --repo-type dataset lmms-lab-audio/ClothoAQA", "avinstruct_avqa_music.json"]),
])
def test_make_reproduce_dry_run(tmp_path: Path, target: str, expect: list[str]) -> None:
    """The Makefile target prints the plan and writes nothing (here nothing is cached and no data is present)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "TAMP_DATA": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(["make", "-s", "-C", str(ROOT), target, "DRY_RUN=1"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for method in ("dense", "magnitude", "sparsegpt", "wanda", "owl", "ecoflap", "tamp"):
        assert f"| {method} " in text
    for line in expect:
        assert line in text
    assert str(tmp_path / "data") in text and "missing before it can run" in text  # $TAMP_DATA honoured
    assert not (ROOT / "results" / f"table{target[-1]}.md").exists()


def test_calibration_fingerprint_covers_video_and_audio(tmp_path: Path) -> None:
    """Replacing a clip used for calibration must change the artifact key, as replacing an image does."""
    import json

    from harness.cache import calibration_fingerprint

    (tmp_path / "a.mp4").write_bytes(b"video-1")
    (tmp_path / "a.wav").write_bytes(b"audio-1")
    (tmp_path / "cal.json").write_text(json.dumps([{"id": "0", "video": "a.mp4", "audio": "a.wav", "conversations": [
        {"from": "human", "value": "<video>\n<audio>\nWhat plays?"}, {"from": "gpt", "value": "A piano."}]}]))
    spec = f"{tmp_path / 'cal.json'}:{tmp_path}"
    first = calibration_fingerprint(spec, 1, 64, 0)
    (tmp_path / "a.wav").write_bytes(b"audio-2")
    second = calibration_fingerprint(spec, 1, 64, 0)
    (tmp_path / "a.mp4").write_bytes(b"video-2")
    third = calibration_fingerprint(spec, 1, 64, 0)
    assert len({first["images"], second["images"], third["images"]}) == 3


GRID = """
name: tiny grid
models: [tiny-llava]
methods: [dense, magnitude, wanda]
sparsities: [0.3, 0.5]
nsamples: 4
tasks: [tamp_smoke_vqa, tamp_smoke_mc]
outputs: {{table: {out}/table.md, plot: {out}/curves.png, csv: {out}/leaderboard.csv}}
"""


def grid_args(root: Path) -> list[str]:
    return ["--limit", "3", "--device", "cpu", "--output", str(root / "runs"), "--artifacts", str(root / "artifacts")]


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID.format(out=out))
    grid = load_grid(grid_file)
    settings = Settings(output=tmp_path / "runs", artifacts=tmp_path / "artifacts", limit=3, device="cpu")
    before = dry_run(grid, settings)
    assert len(before.cells) == 5 and before.evaluations == 10 and before.cached == 0 and not before.missing
    assert all(c["results"] == "to evaluate: all 2" for c in before.cells)
    assert all(c["artifact"].startswith(("to prune", "to save")) for c in before.cells)

    assert main(["grid", str(grid_file), *grid_args(tmp_path)]) == 0
    table = (out / "table.md").read_text()
    for title in ("tiny-llava: unstructured, 30% sparsity (scores, first 3 documents per task)",
                  "tiny-llava: unstructured, 50% sparsity (scores, first 3 documents per task)",
                  "50% sparsity (% of dense"):
        assert title in table
    for row in ("| Dense", "| Magnitude", "| Wanda"):
        assert table.count(row) == 4
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "curves.svg").is_file()
    with (out / "leaderboard.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    heads = [r for r in rows if r["headline"] == "True"]
    assert len(heads) == 10 and {(r["method"], r["sparsity"]) for r in heads} == {
        ("dense", "0.0"), ("magnitude", "0.3"), ("magnitude", "0.5"), ("wanda", "0.3"), ("wanda", "0.5")}
    assert all(r["limit"] == "3" and r["lmms_eval_version"] == "0.7.3" for r in rows)

    after = dry_run(grid, settings)
    assert after.cached == 10 and all(c["artifact"].startswith("cached") for c in after.cells)
    # resumable: a second run evaluates nothing; a lost record is the only thing redone
    capsys.readouterr()
    lost = tmp_path / "runs" / "tiny-llava" / "wanda_s0.30_unstructured" / "tamp_smoke_mc_limit3.json"
    lost.unlink()
    assert main(["grid", str(grid_file), *grid_args(tmp_path)]) == 0
    log = capsys.readouterr().out
    done = [line for line in log.splitlines() if line.startswith("done ")]
    assert len(done) == 1 and done[0].startswith("done tamp_smoke_mc") and "wrote artifact" not in log and lost.is_file()
    assert log.count("skip ") == 9


@pytest.mark.slow
def test_sweep_keeps_going_past_a_failing_cell(tmp_path: Path, tiny_root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Wanda needs calibration text that is missing: its cells fail, magnitude and dense still run and report."""
    args = ["sweep", "--model", "tiny-llava", "--methods", "magnitude,wanda", "--sparsities", "0.4",
            "--tasks", "tamp_smoke_mc", "--calib", f"text:{tmp_path / 'missing.txt'}", "--out-dir",
            str(tmp_path / "sweeps"), "--csv", str(tmp_path / "board.csv"), *grid_args(tmp_path)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "1 cell(s) failed" in captured.err and "tiny-llava wanda 40%" in captured.err
    assert "calibration text file not found" in captured.err
    table = (tmp_path / "sweeps" / "tiny-llava_unstructured.md").read_text()
    assert "| Magnitude" in table and "| Wanda" not in table
    assert (tmp_path / "sweeps" / "tiny-llava_unstructured.png").is_file() and (tmp_path / "board.csv").is_file()


def test_grid_typos_fail_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("models: [tiny-llava]\nmethods: [wandaa]\nsparsities: [0.5]\ntasks: [tamp_smoke_mc]\n")
    assert main(["grid", str(grid_file), *grid_args(tmp_path)]) == 2
    assert "unknown method 'wandaa'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    grid_file.write_text("models: [tiny-llava]\nmethods: [wanda]\nsparsities: [0.5]\ntasks: [no_such_task]\n")
    assert main(["grid", str(grid_file), *grid_args(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_harness_help_lists_report_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, timeout=120)
    for command in ("table", "plot", "export", "grid", "sweep"):
        assert command in out.stdout
