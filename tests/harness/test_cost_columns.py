"""`harness table --cost`: prefill FLOPs in a unit that fits the table, prefill latency, decode speed and the run's
peak memory, "–" with the reason where a record lacks a field; the leaderboard CSV carries every cost field of the
record, and older CSV layouts are read and rewritten with the new columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.cost_columns import cost_text, flop_unit, memory_unit, parse_parts
from harness.errors import HarnessError
from harness.leaderboard import COLUMNS, COST, COST_DETAIL, VISION_COST, export
from harness.records import SCHEMA, record_path, write_json
from tamp.inference.cost import summarize

MODEL = "tiny-llava-next"


def cost(tflops: float, latency_s: float, decode: float | None, peak_mb: float, how: str | None = "rss-high-water-reset",
         device: str = "cpu") -> dict[str, Any]:
    out = {"prefills": 4, "prefill_tflops": tflops, "prefill_tflops_nonzero": tflops / 2, "prefill_latency_s": latency_s,
           "prompt_tokens": 90.0, "visual_tokens_in": 64.0, "visual_tokens_kept": 16.0,
           "tokens_per_layer": [90.0, 90.0, 42.0, 42.0], "visual_tokens_per_layer": [64.0, 64.0, 16.0, 16.0],
           "decode_tokens_per_s": decode, "peak_memory_mb": peak_mb, "device": device, "processes": 1,
           "flops_counted": "language model"}
    return {**out, "peak_memory_how": how} if how is not None else out


def record(method: str, sparsity: float, task: str, acc: float, cost: dict[str, Any] | None,
           stored: int | None = None) -> dict[str, Any]:
    metric = "exact_match,none" if task == "textvqa_val" else "pope_accuracy,none"
    rec = {"schema": SCHEMA, "artifact_key": f"key-{method}", "model": {"name": MODEL}, "method": method,
           "sparsity": sparsity, "pattern": "unstructured", "task": task, "limit": None, "metrics": {metric: acc},
           "results": {task: {metric: acc}}, "versions": {"lmms-eval": "0.7.3", "tamp": "0.1.0"},
           "git_commit": "abc123", "date": "2026-12-07T00:00:00+00:00"}
    if stored is not None:  # the artifact's weight bytes, as pruning.json records them
        rec["pruning"] = {"weight_bytes": {"stored": stored, "loaded": 4 * stored}}
    return {**rec, "cost": cost} if cost is not None else rec


def put(runs: Path, rec: dict[str, Any]) -> None:
    write_json(record_path(runs, MODEL, rec["method"], rec["sparsity"], "unstructured", rec["task"], None), rec)


def table(runs: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[list[str], dict[str, list[str]], str]:
    """(headers, method -> cells, the whole output) of the one markdown table."""
    capsys.readouterr()
    assert main(["table", "--runs", str(runs), *flags]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    return headers, rows, out


@pytest.fixture()
def tiny_runs(tmp_path: Path) -> Path:
    """A tiny model's costs (MFLOPs, MiB): dense, a token method and a weight method that was never measured."""
    runs = tmp_path / "runs"
    put(runs, record("dense", 0.0, "textvqa_val", 0.5, cost(0.000123, 0.0125, 250.0, 900.0), stored=3 * 2**19))
    put(runs, record("dense", 0.0, "pope", 0.8, cost(0.000125, 0.0135, None, 920.0), stored=3 * 2**19))  # no decode
    put(runs, record("fastv", 0.0, "textvqa_val", 0.4, cost(0.0000615, 0.008, 300.0, 880.0)))
    put(runs, record("fastv", 0.0, "pope", 0.7, cost(0.0000625, 0.009, None, 870.0, how=None)))  # an old CPU peak
    put(runs, record("wanda", 0.5, "textvqa_val", 0.45, None))  # from before the cost axis
    put(runs, record("wanda", 0.5, "pope", 0.75, None))
    return runs


def test_flop_unit_keeps_tiny_and_large_values_readable() -> None:
    assert flop_unit(0.000123) == ("MFLOPs", 1e6) and flop_unit(1e-8) == ("kFLOPs", 1e9)
    assert flop_unit(0.02) == ("GFLOPs", 1e3) and flop_unit(3.2) == ("TFLOPs", 1.0) and flop_unit(1500.0)[0] == "TFLOPs"
    assert memory_unit(900.0) == ("MiB", 1.0) and memory_unit(17000.0) == ("GiB", 1 / 1024)
    assert [cost_text(v) for v in (123.0, 1234.4, 12.345, 0.000123, 0.0)] == ["123", "1234", "12.3", "0.000123", "0"]


def test_the_cost_columns_of_a_tiny_model(tiny_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    headers, rows, out = table(tiny_runs, capsys, "--cost")
    assert headers[-5:] == ["Prefill MFLOPs", "Prefill ms", "Decode tok/s", "Peak MiB", "Weights MiB"]
    assert rows["Dense"][-5:] == ["124", "13.0", "250", "920", "1.50"]  # mean MFLOPs and ms of both tasks; the
    # highest peak; the weights its artifact stores
    assert rows["FastV"][-5:] == ["62.0", "8.50", "300", "880", "–"]  # the old CPU peak (870, no how) is left out
    assert "Weights MiB: – for FastV: its artifact predates the weight bytes" in out
    assert rows["Wanda"][-5:] == ["–"] * 5
    assert "cost columns: – for Wanda: its records predate the cost axis" in out
    assert "0.000123" not in out and "e-0" not in out


def test_missing_fields_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    put(runs, record("dense", 0.0, "pope", 0.8, cost(0.000125, 0.0135, None, 920.0, how=None)))  # old CPU record
    put(runs, record("fastv", 0.0, "pope", 0.7, cost(0.0000625, 0.009, None, 2048.0, how=None, device="cuda:0")))
    put(runs, record("fastv", 0.0, "textvqa_val", 0.4, None))  # this task's record predates the cost axis
    headers, rows, out = table(runs, capsys, "--cost", "decode,memory")
    assert headers[-2:] == ["Decode tok/s", "Peak GiB"] and "Prefill ms" not in headers
    assert rows["Dense"][-2:] == ["–", "–"]
    assert "cost columns: FastV from some of its tasks only" in out
    assert rows["FastV"][-2:] == ["–", "2.00"]  # a GPU peak was always the run's own (reset per task)
    assert "Decode tok/s: – for Dense, FastV: none of its tasks generates text" in out
    assert "Peak GiB: – for Dense: its CPU records predate per-run peaks" in out


def test_a_large_model_reads_in_tflops_and_gib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    put(runs, record("dense", 0.0, "textvqa_val", 0.6, cost(12.5, 0.84, 21.3, 17000.0, how="cuda-max-allocated",
                                                          device="cuda:0")))
    put(runs, record("fastv", 0.0, "textvqa_val", 0.5, cost(0.85, 0.31, 22.0, 16500.0, how="rss-lower-bound")))
    headers, rows, out = table(runs, capsys, "--cost", "flops,memory,latency")
    assert headers[-3:] == ["Prefill TFLOPs", "Prefill ms", "Peak GiB"]  # the table's order, whatever was asked
    assert rows["Dense"][-3:] == ["12.5", "840", "16.6"] and rows["FastV"][-3:] == ["0.850", "310", "16.1"]
    assert "Peak GiB: a lower bound for FastV" in out and "measured on cpu, cuda:0" in out


def test_cost_parts_are_checked() -> None:
    assert parse_parts(None) == parse_parts("all") == ("flops", "latency", "decode", "memory", "weights")
    assert parse_parts("memory,flops") == ("flops", "memory")
    with pytest.raises(HarnessError, match="--cost takes some of flops,latency,decode,memory,weights"):
        parse_parts("flops,speed")


def test_the_vision_side_and_the_tokens_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--cost tokens,flops,encoder,projector`: the visual tokens kept and the vision encoder's and projector's parts
    of the prefill FLOPs, in the whole prefill's unit; a record from before the vision side's count has them empty,
    with the reason; `--cost` alone stays the five it was."""
    runs = tmp_path / "runs"
    vision = {"prefill_tflops_encoder": 0.000020, "prefill_tflops_projector": 0.000004}
    put(runs, record("dense", 0.0, "pope", 0.8, {**cost(0.000125, 0.0135, None, 920.0), **vision}))
    put(runs, record("fastv", 0.0, "pope", 0.7, cost(0.0000625, 0.009, None, 870.0)))  # before the vision count
    headers, rows, out = table(runs, capsys, "--cost", "projector,encoder,tokens,flops")
    assert headers[-4:] == ["Visual tokens", "Prefill MFLOPs", "Encoder MFLOPs", "Projector MFLOPs"]
    assert rows["Dense"][-4:] == ["16.0", "125", "20.0", "4.00"]
    assert rows["FastV"][-4:] == ["16.0", "62.5", "–", "–"]
    assert "Encoder MFLOPs: – for FastV: its records predate the vision side's count" in out
    assert parse_parts("tokens,encoder") == ("tokens", "encoder")
    headers, _, _ = table(runs, capsys, "--cost")
    assert "Visual tokens" not in headers and "Encoder MFLOPs" not in headers


def test_the_visual_tokens_per_layer_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--cost tokens,layers`: beside the tokens left after the last drop, the mean over the decoder layers of the
    visual tokens each ran on (a staged method's budget); a record with no per-layer list has it empty, with why."""
    runs = tmp_path / "runs"
    staged = {**cost(0.0001, 0.01, None, 900.0), "visual_tokens_kept": 4.0, "visual_tokens_per_layer": [36, 12, 8, 4]}
    put(runs, record("pdrop", 0.0, "pope", 0.7, staged))
    old = cost(0.0001, 0.01, None, 900.0)
    del old["visual_tokens_per_layer"]
    put(runs, record("fastv", 0.0, "pope", 0.6, old))
    headers, rows, out = table(runs, capsys, "--cost", "layers,tokens")
    assert headers[-2:] == ["Visual tokens", "Visual tokens / layer"]
    assert rows["PDrop"][-2:] == ["4.00", "15.0"]  # (36 + 12 + 8 + 4) / 4
    assert rows["FastV"][-2:] == ["16.0", "–"]
    assert "Visual tokens / layer: – for FastV: its records hold no visual tokens per layer" in out


def test_a_wrong_cost_part_is_one_line(tiny_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["table", "--runs", str(tiny_runs), "--cost", "speed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --cost takes some of")


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_the_csv_carries_every_cost_field(tiny_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board.csv"
    export(tiny_runs, out)
    rows = read(out)
    start = COLUMNS.index(COST[-1]) + 1  # appended right after the first cost columns
    assert list(rows[0]) == COLUMNS and COLUMNS[start:start + len(COST_DETAIL)] == COST_DETAIL
    part = {"prefills": [{"seconds": 1.0, "dense": 1e9, "nonzero": 1e9, "tokens": 4, "visual_in": 0, "visual_kept": 0,
                          "tokens_per_layer": [4], "visual_per_layer": [0]}], "decode_steps": 1, "decode_s": 1.0,
            "peak_memory_mb": 1.0, "peak_memory_how": "rss-high-water-reset", "device": "cpu", "layers": 1}
    assert set(summarize([part])) == set(COST) | set(COST_DETAIL) | set(VISION_COST)  # every field a run records has its column
    [dense] = [r for r in rows if r["method"] == "dense" and r["task"] == "textvqa_val"]
    assert dense["peak_memory_how"] == "rss-high-water-reset" and float(dense["peak_memory_mb"]) == 900.0
    assert json.loads(dense["tokens_per_layer"]) == [90.0, 90.0, 42.0, 42.0] and float(dense["prefills"]) == 4
    assert float(dense["decode_tokens_per_s"]) == 250.0 and float(dense["prefill_latency_s"]) == 0.0125
    [wanda] = [r for r in rows if r["method"] == "wanda" and r["task"] == "pope"]
    assert wanda["peak_memory_how"] == "" and wanda["prefill_tflops"] == ""


@pytest.mark.parametrize("without", [COST_DETAIL, [*COST, *COST_DETAIL], ["model_build", *COST_DETAIL]])
def test_an_older_csv_is_read_and_rewritten(tiny_runs: Path, tmp_path: Path, without: list[str]) -> None:
    out = tmp_path / "board.csv"
    export(tiny_runs, out)
    rows = read(out)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, [c for c in COLUMNS if c not in without], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    put(tiny_runs, record("dense", 0.0, "textvqa_val", 0.55, cost(0.000123, 0.0125, 250.0, 905.0)))
    total, _ = export(tiny_runs, out)
    again = read(out)
    assert list(again[0]) == COLUMNS and total == len(rows) == len(again)
    [dense] = [r for r in again if r["method"] == "dense" and r["task"] == "textvqa_val"]
    assert float(dense["peak_memory_mb"]) == 905.0 and dense["peak_memory_how"] == "rss-high-water-reset"


def test_a_csv_missing_part_of_a_group_is_refused(tiny_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board.csv"
    export(tiny_runs, out)
    rows = read(out)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, [c for c in COLUMNS if c != "prefills"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(HarnessError, match="not a leaderboard written by `harness export`"):
        export(tiny_runs, out)
