"""Tables, leaderboard CSV and plots from fixture run records (no model involved)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.collect import headline_frame, load_published
from harness.errors import HarnessError
from harness.leaderboard import BEFORE_BUILD, COLUMNS, export
from harness.records import SCHEMA, record_path, write_json
from harness.tables import build_tables, render

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MODEL = "llava-next"


def record(method: str, sparsity: float, task: str, metrics: dict[str, float], *, pattern: str = "unstructured",
           results: dict[str, Any] | None = None, date: str = "2026-11-21T00:00:00+00:00") -> dict[str, Any]:
    return {"schema": SCHEMA, "artifact_key": f"key-{method}-{sparsity}", "model": {"name": MODEL},
            "method": method, "sparsity": sparsity, "pattern": pattern, "task": task, "limit": None,
            "metrics": metrics, "results": results or {task: metrics}, "versions": {"lmms-eval": "0.7.3", "tamp": "0.1.0"},
            "git_commit": "abc123", "date": date, "n_samples": {task: {"original": 10, "effective": 10}}}


def pope(acc: float, f1: float) -> dict[str, float]:
    return {"alias": "pope", "pope_accuracy,none": acc, "pope_accuracy_stderr,none": 0.01, "pope_f1_score,none": f1}


def mme(perception: float) -> dict[str, float]:
    return {"mme_perception_score,none": perception, "mme_cognition_score,none": 300.0}


def mvbench(a: float, b: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """MVBench's group entry has no aggregate: only its subtasks carry mvbench_accuracy."""
    return {"alias": "mvbench"}, {"mvbench": {"alias": "mvbench"},
                                  "mvbench_action_antonym": {"mvbench_accuracy,none": a},
                                  "mvbench_action_count": {"mvbench_accuracy,none": b}}


def write_fixture(runs: Path) -> None:
    cells = {("dense", 0.0): (0.90, 1500.0, 60.0, 0.60), ("magnitude", 0.5): (0.50, 800.0, 30.0, 0.10),
             ("wanda", 0.5): (0.85, 1400.0, 50.0, 0.50), ("tamp", 0.5): (0.87, None, 54.0, 0.55),
             ("wanda", 0.3): (0.89, 1480.0, 58.0, 0.58)}
    for (method, s), (p, m, mv, tv) in cells.items():
        def put(task: str, rec: dict[str, Any], method: str = method, s: float = s) -> None:
            write_json(record_path(runs, MODEL, method, s, "unstructured", task, None), rec)

        put("pope", record(method, s, "pope", pope(p, p - 0.02)))
        if m is not None:  # TAMP's MME is missing: shown as missing, the average left out
            put("mme", record(method, s, "mme", mme(m)))
        group, results = mvbench(mv - 2, mv + 2)
        put("mvbench", record(method, s, "mvbench", group, results=results))
        put("textvqa_val", record(method, s, "textvqa_val", {"exact_match,none": tv}))
    write_json(record_path(runs, MODEL, "wanda", 0.5, "2:4", "pope", None),
               record("wanda", 0.5, "pope", pope(0.70, 0.69), pattern="2:4"))


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    write_fixture(tmp_path / "runs")
    return tmp_path / "runs"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"


def test_headline_values(runs: Path) -> None:
    df = headline_frame(runs)
    assert len(df) == 20
    def row(m, s, t):
        return df[(df.method == m) & (df.sparsity == s) & (df.task == t) & (df.pattern != "2:4")].iloc[0]
    assert row("dense", 0.0, "pope")["value"] == pytest.approx(90.0)  # accuracy in percent
    assert row("dense", 0.0, "mme")["value"] == 1500.0 and row("dense", 0.0, "mme")["percent"] == 75.0
    assert row("wanda", 0.5, "mvbench")["value"] == pytest.approx(50.0)  # mean of the two subtasks
    assert row("wanda", 0.5, "mvbench")["metric"] == "mvbench_accuracy,none"


def test_golden_markdown_tables(runs: Path) -> None:
    df = headline_frame(runs)
    text = render(build_tables(df, sparsity=0.5, pattern="unstructured"))
    check_golden("table_s50.md", text)
    # the reading a user relies on: dense first, paper's column order, missing != 0, avg only when complete
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "POPE", "TextVQA", "MME", "MVBench", "Avg"]
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| Method")]
    assert [line.split("|")[1].strip() for line in body] == ["Dense", "Magnitude", "Wanda", "TAMP"]
    tamp = next(line for line in body if "TAMP" in line)
    assert tamp.split("|")[4].strip() == "–" and tamp.split("|")[6].strip() == "–" and "0.00" not in tamp
    dense = next(line for line in body if "Dense" in line)
    # (90 + 60 + 1500/20 + 60) / 4 = 71.25
    assert dense.split("|")[6].strip() == "71.25"


def test_relative_table(runs: Path) -> None:
    df = headline_frame(runs)
    [table] = build_tables(df, sparsity=0.5, pattern="unstructured", relative=True)
    assert table.data.loc["Dense"].tolist() == pytest.approx([100.0] * 5)
    wanda = table.data.loc["Wanda"]
    assert wanda["POPE"] == pytest.approx(85 / 90 * 100) and wanda["MME"] == pytest.approx(1400 / 1500 * 100)
    assert wanda["Avg"] == pytest.approx((85 / 90 + 50 / 60 + 1400 / 1500 + 50 / 60) / 4 * 100)
    check_golden("table_s50_relative.md", render([table]))


def test_one_table_per_sparsity_and_pattern(runs: Path) -> None:
    tables = build_tables(headline_frame(runs))
    assert [(t.sparsity, t.pattern) for t in tables] == [(0.3, "unstructured"), (0.5, "2:4"), (0.5, "unstructured")]
    nm = tables[1]
    assert list(nm.data.index) == ["Dense", "Wanda"] and nm.data.loc["Wanda", "POPE"] == pytest.approx(70.0)
    assert nm.data["TextVQA"].isna().tolist() == [False, True]


def test_latex_and_csv_formats(runs: Path) -> None:
    tables = build_tables(headline_frame(runs), sparsity=0.5, pattern="unstructured")
    latex = render(tables, "latex")
    assert "\\toprule" in latex and "\\bottomrule" in latex and "Wanda" in latex and \
        "--" in next(line for line in latex.splitlines() if "TAMP" in line)
    text = render(tables, "csv")
    rows = list(csv.reader(line for line in text.splitlines() if not line.startswith("#")))
    assert rows[0] == ["method", "POPE", "TextVQA", "MME", "MVBench", "Avg"]
    tamp = next(r for r in rows if r[0] == "TAMP")
    assert tamp[3] == "" and tamp[5] == "" and float(tamp[1]) == pytest.approx(87.0)


def test_published_numbers_beside_ours(runs: Path, tmp_path: Path) -> None:
    pub = tmp_path / "published.csv"
    pub.write_text("# a comment line\nmodel,method,sparsity,pattern,task,value,source\n"
                   f"{MODEL},wanda,0.5,unstructured,pope,84.1,Some et al. 2025 Table 1\n"
                   f"{MODEL},dense,0,unstructured,pope,88.2,Some et al. 2025 Table 1\n")
    [table] = build_tables(headline_frame(runs), load_published(pub), sparsity=0.5, pattern="unstructured")
    assert list(table.data.index) == ["Dense", "Dense (published)", "Magnitude", "Wanda", "Wanda (published)", "TAMP"]
    assert table.data.loc["Wanda (published)", "POPE"] == pytest.approx(84.1)
    assert any("Some et al. 2025 Table 1" in n for n in table.notes)
    [rel] = build_tables(headline_frame(runs), load_published(pub), sparsity=0.5, pattern="unstructured",
                         relative=True)
    assert rel.data.loc["Wanda (published)", "POPE"] == pytest.approx(84.1 / 88.2 * 100)  # vs the published dense
    pub.write_text("model,method,sparsity,pattern,task,value,source\nx,wanda,0.5,unstructured,pope,84.1,\n")
    with pytest.raises(HarnessError, match="needs its source"):
        load_published(pub)
    pub.write_text("model,method,value\nx,wanda,1\n")
    with pytest.raises(HarnessError, match="lacks the column"):
        load_published(pub)


def test_shipped_published_file_parses() -> None:
    shipped = Path(__file__).resolve().parents[2] / "results" / "reference" / "published.csv"
    assert list(load_published(shipped).columns)[:7] == ["model", "method", "sparsity", "pattern", "task", "value",
                                                         "source"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_leaderboard_schema_and_values(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board.csv"
    total, new = export(runs, out)
    rows = read_csv(out)
    assert list(rows[0]) == COLUMNS and len(rows) == total == new
    def key(r):
        return (r["model"], r["model_build"], r["method"], r["sparsity"], r["pattern"], r["limit"], r["task"],
                r["metric"])
    assert len({key(r) for r in rows}) == len(rows)
    assert {r["model_build"] for r in rows} == {""}  # records without a build (nor key inputs to tell it)
    wanda_pope = next(r for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.5" and r["task"] == "pope"
                      and r["metric"] == "pope_f1_score,none" and r["pattern"] == "unstructured")
    assert float(wanda_pope["value"]) == pytest.approx(0.83) and float(wanda_pope["dense_value"]) == pytest.approx(0.88)
    assert float(wanda_pope["relative_pct"]) == pytest.approx(0.83 / 0.88 * 100)
    assert wanda_pope["headline"] == "False" and wanda_pope["lmms_eval_version"] == "0.7.3"
    acc = next(r for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.5" and r["task"] == "pope"
               and r["metric"] == "pope_accuracy,none" and r["pattern"] == "unstructured")
    assert acc["headline"] == "True" and float(acc["stderr"]) == pytest.approx(0.01)
    assert acc["run_id"] == "llava-next/wanda_s0.50_unstructured/pope"
    # MVBench: each subtask, plus the derived mean as the group's headline
    mv = [r for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.5" and "mvbench" in r["task"]]
    assert {r["task"] for r in mv} == {"mvbench", "mvbench_action_antonym", "mvbench_action_count"}
    assert float(next(r for r in mv if r["task"] == "mvbench")["value"]) == pytest.approx(50.0)
    # dense rows come first within a model
    assert rows[0]["method"] == "dense"


def test_reexport_updates_without_duplicates(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board.csv"
    total, _ = export(runs, out)
    assert export(runs, out)[0] == total  # same records: same file
    first = out.read_text()
    assert export(runs, out)[0] == total and out.read_text() == first
    # a re-run of one task replaces its rows; a new run adds rows
    write_json(record_path(runs, MODEL, "wanda", 0.5, "unstructured", "pope", None),
               record("wanda", 0.5, "pope", pope(0.86, 0.84), date="2026-11-22T00:00:00+00:00"))
    write_json(record_path(runs, MODEL, "owl", 0.5, "unstructured", "pope", None), record("owl", 0.5, "pope", pope(0.8, 0.8)))
    total2, _ = export(runs, out)
    rows = read_csv(out)
    assert total2 == total + 2 == len(rows)  # owl: accuracy and F1 (a stderr is a column, not a row)
    acc = [r for r in rows if r["method"] == "wanda" and r["sparsity"] == "0.5" and r["task"] == "pope"
           and r["metric"] == "pope_accuracy,none" and r["pattern"] == "unstructured"]
    assert len(acc) == 1 and float(acc[0]["value"]) == pytest.approx(0.86) and acc[0]["date"].startswith("2026-11-22")
    # rows whose records are gone are kept (the leaderboard accumulates)
    other = tmp_path / "other_runs"
    write_json(record_path(other, "other-model", "dense", 0.0, "unstructured", "pope", None),
               {**record("dense", 0.0, "pope", pope(0.5, 0.5)), "model": {"name": "other-model"}})
    export(other, out)
    models = {r["model"] for r in read_csv(out)}
    assert models == {MODEL, "other-model"}


def build_record(build: str, method: str, sparsity: float, acc: float, **kw: Any) -> dict[str, Any]:
    rec = record(method, sparsity, "pope", pope(acc, acc), **kw)
    return {**rec, "model": {"name": "tiny-trained-llava-next", "build": build}}


def test_leaderboard_keeps_builds_of_one_model_apart(tmp_path: Path) -> None:
    """Two builds of one model name (e.g. the shipped trained tiny model before and after a refresh) are two sets of
    rows, each against its own dense run; re-exporting a build replaces its rows."""
    out = tmp_path / "board.csv"
    for build, dense, wanda in (("0123456789ab", 0.95, 0.90), ("fedcba987654", 0.80, 0.40)):
        runs = tmp_path / f"runs-{build}"
        write_json(record_path(runs, "tiny-trained-llava-next", "dense", 0.0, "unstructured", "pope", None),
                   build_record(build, "dense", 0.0, dense))
        write_json(record_path(runs, "tiny-trained-llava-next", "wanda", 0.5, "unstructured", "pope", None),
                   build_record(build, "wanda", 0.5, wanda))
        export(runs, out)
    rows = [r for r in read_csv(out) if r["metric"] == "pope_accuracy,none"]
    assert len(rows) == 4 and {r["model_build"] for r in rows} == {"0123456789ab", "fedcba987654"}
    def find(build: str, method: str) -> dict[str, str]:
        [row] = [r for r in rows if r["model_build"] == build and r["method"] == method]
        return row
    assert float(find("0123456789ab", "wanda")["relative_pct"]) == pytest.approx(0.90 / 0.95 * 100)
    assert float(find("fedcba987654", "wanda")["relative_pct"]) == pytest.approx(0.40 / 0.80 * 100)
    total = len(read_csv(out))
    # the same build again: its rows are replaced, the other build's kept
    runs = tmp_path / "runs-0123456789ab"
    write_json(record_path(runs, "tiny-trained-llava-next", "wanda", 0.5, "unstructured", "pope", None),
               build_record("0123456789ab", "wanda", 0.5, 0.85, date="2026-11-22T00:00:00+00:00"))
    assert export(runs, out)[0] == total
    rows = [r for r in read_csv(out) if r["metric"] == "pope_accuracy,none"]
    assert float(find("0123456789ab", "wanda")["value"]) == pytest.approx(0.85)
    assert float(find("fedcba987654", "wanda")["value"]) == pytest.approx(0.40)


def test_record_build_from_the_key_inputs_of_older_records() -> None:
    from harness.records import record_build

    base = record("dense", 0.0, "pope", pope(0.9, 0.9))
    assert record_build({**base, "model": {"name": "m", "build": "abc"}}) == "abc"
    assert record_build({**base, "artifact": {"cache_inputs": {"model": {"dir_sha256": "9" * 64}}}}) == "9" * 12
    assert record_build({**base, "artifact": {"cache_inputs": {"model": {"hf_id": "a/b", "commit": "c" * 40}}}}) == \
        "c" * 12
    # a trained tiny model's record from before shipped weights: trained where it ran, its weights unknown
    old = {"tiny": "tiny-trained-llava-next", "build": "trained-llava-next-seed0-0123456789ab"}
    assert record_build({**base, "artifact": {"cache_inputs": {"model": old}}}) == ""
    assert record_build(base) == ""


def test_an_older_leaderboard_without_model_build_is_read(runs: Path, tmp_path: Path) -> None:
    """A file written before model_build existed: read, rewritten with the column (empty for its rows), and a
    record of a known build added beside its rows, not over them."""
    out = tmp_path / "board.csv"
    export(runs, out)
    rows = read_csv(out)
    old_columns = BEFORE_BUILD  # the layout of a file from then
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fresh = tmp_path / "fresh"
    rec = {**record("wanda", 0.5, "pope", pope(0.5, 0.5)), "model": {"name": MODEL, "build": "000000000123"}}
    write_json(record_path(fresh, MODEL, "wanda", 0.5, "unstructured", "pope", None), rec)
    total, new = export(fresh, out)
    merged = read_csv(out)
    assert list(merged[0]) == COLUMNS and total == len(rows) + new == len(merged)
    assert {r["model_build"] for r in merged} == {"", "000000000123"}  # a build of digits stays text
    assert export(fresh, out)[0] == total and read_csv(out) == merged


def test_export_refuses_a_foreign_csv(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "foreign.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(HarnessError, match="not a leaderboard"):
        export(runs, out)
    assert out.read_text() == "a,b\n1,2\n"


def test_plots_png_and_svg(runs: Path, tmp_path: Path) -> None:
    assert main(["plot", "--runs", str(runs), "--out", str(tmp_path / "curves.png"), "--pattern", "unstructured"]) == 0
    png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()[:500] and "MVBench" in svg.read_text()
    # published numbers: drawn as hollow markers, named in the legend
    pub = tmp_path / "published.csv"
    pub.write_text("model,method,sparsity,pattern,task,value,source\n"
                   f"{MODEL},wanda,0.5,unstructured,pope,84.1,Some et al. 2025 Table 1\n")
    assert main(["plot", "--runs", str(runs), "--published", str(pub), "--out", str(tmp_path / "pub.svg"),
                 "--pattern", "unstructured"]) == 0
    assert "Wanda (published)" in (tmp_path / "pub.svg").read_text()
    # both patterns: one figure each, told apart by a suffix
    assert main(["plot", "--runs", str(runs), "--out", str(tmp_path / "all.png")]) == 0
    assert {p.name for p in tmp_path.glob("all_*")} == {f"all_llava-next_{p}.{ext}" for p in ("2-4", "unstructured")
                                                          for ext in ("png", "svg")}


def test_allocation_plot(tmp_path: Path) -> None:
    per_matrix = {}
    for block in range(4):
        for name, numel in (("self_attn.q_proj", 64), ("self_attn.k_proj", 16), ("mlp.down_proj", 128)):
            per_matrix[f"model.language_model.layers.{block}.{name}"] = {
                "numel": numel, "sparsity": 0.4 + 0.05 * block, "target": 0.4 + 0.05 * block, "zeros": 0, "shape": [1]}
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "pruning.json").write_text(json.dumps({"per_matrix": per_matrix, "config": {"method": "owl",
                                      "allocation": "owl", "sparsity": 0.5}, "sparsity": {"sparsity": 0.5}}))
    from harness.plots import allocation_frame

    frame = allocation_frame(json.loads((art / "pruning.json").read_text()))
    assert sorted(set(frame["matrix"])) == ["down_proj", "k_proj", "q_proj"] and frame["block"].max() == 3
    assert main(["plot", "--allocation", str(art), "--allocation", str(art / "pruning.json"),
                 "--out", str(tmp_path / "alloc.svg")]) == 0
    assert (tmp_path / "alloc.png").stat().st_size > 10_000 and "<svg" in (tmp_path / "alloc.svg").read_text()[:500]


def test_report_commands_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", "--runs", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["table", "--runs", str(tmp_path / "empty")]) == 2
    assert "no finished run records" in capsys.readouterr().err
    assert main(["plot", "--allocation", str(tmp_path / "missing"), "--out", str(tmp_path / "a.png")]) == 2
    assert "not found" in capsys.readouterr().err
    write_fixture(tmp_path / "runs")
    assert main(["plot", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "a.pdf")]) == 2
    assert "give a .png or .svg" in capsys.readouterr().err


def test_table_command_prints_and_writes(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.md"
    assert main(["table", "--runs", str(runs), "--sparsity", "0.5", "--pattern", "unstructured", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() in printed and "| Wanda" in printed
    assert main(["table", "--runs", str(runs), "--model", "nope"]) == 2
    assert "no run records match" in capsys.readouterr().err
