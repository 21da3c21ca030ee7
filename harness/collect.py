"""Run records (results/runs/**.json) and published numbers -> pandas frames for tables, plots and the CSV."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.benchmarks import benchmark, raw_value
from harness.errors import HarnessError
from harness.records import read_record, record_budget, record_build, record_problem, samples_path, with_budget
from harness.uncertainty import bootstrap_interval, paired_test
from tamp.schema import from_text

# one row per record: its headline number
HEADLINE_COLUMNS = ["model", "method", "sparsity", "pattern", "limit", "task", "metric", "raw", "value", "percent",
                    "source", "run_id", "git_commit", "lmms_eval_version", "date", "n_samples", "prefill_tflops",
                    "prefill_latency_s", "visual_tokens_kept", "decode_tokens_per_s", "peak_memory_mb",
                    "peak_memory_how", "device", "weight_mb_stored", "questions_per_s", "batch_size",
                    "prefill_s_per_batch", "decode_s_per_batch"]
# from the record's cost (tables' --cost columns, the TFLOPs plot)
COST_FIELDS = ["prefill_tflops", "prefill_latency_s", "visual_tokens_kept", "decode_tokens_per_s", "peak_memory_mb",
               "peak_memory_how", "device", "questions_per_s", "batch_size", "prefill_s_per_batch",
               "decode_s_per_batch", "prefill_tflops_encoder", "prefill_tflops_projector"]
VISION_COST = ["prefill_tflops_encoder", "prefill_tflops_projector"]  # cost fields after the headline's (`--cost`)
# the visual tokens each decoder layer ran on, averaged over the layers (a staged method's PDrop / SparseVLM budget)
LAYER_TOKENS = "visual_tokens_layer_mean"
# how sure each number is (harness/uncertainty.py): the calibration seed, the 95% bootstrap interval (display units),
# the documents it rests on, the paired p-value against the dense run and its test, or why there is no interval;
# `scores` holds the per-document scores ({doc id: score}) for the averages' intervals
UNCERTAINTY_COLUMNS = ["model_build", "seed", "ci_low", "ci_high", "n_docs", "p_vs_dense", "paired_test", "no_interval",
                       "scores"]
NO_SAMPLES = "no samples file (a record from before samples were kept)"
# results/reference/published.csv: published numbers in the benchmark's display units (see benchmarks.py)
PUBLISHED_COLUMNS = ["model", "method", "sparsity", "pattern", "task", "value", "source"]


@dataclass(frozen=True)
class PublishedRow:
    """The schema of a row of published numbers (its columns are PUBLISHED_COLUMNS)."""

    model: str
    method: str
    sparsity: float
    pattern: str
    task: str
    value: float
    source: str

DEFAULT_PUBLISHED = Path("results/reference/published.csv")


def iter_records(runs: Path) -> list[tuple[str, dict[str, Any]]]:
    """(run id, record) for every finished record under ``runs``; the run id is its path without .json.

    A .json that is not a usable record (truncated, edited, another file, a field of the wrong type: its schema is
    harness.records.RunRecord) is left out with a warning naming it and what is wrong on stderr, so a row missing
    from a table is never a silent surprise; a record whose headline score is there but is no number is kept (its
    row shows no score) with a warning saying so.
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise HarnessError(f"no run records: {runs} is not a directory (run `harness run` first, or pass --runs DIR)")
    out = []
    for path in sorted(runs.rglob("*.json")):
        rel = path.relative_to(runs)
        if any(part.startswith(".") for part in rel.parts):  # temp files, accelerate scratch dirs
            continue
        record, problem = read_record(path)
        wrong = record_problem(record) if record is not None else None  # its schema: harness.records.RunRecord
        if wrong is not None:
            record, problem = None, wrong
        if record is None:
            print(f"warning: skipping {path}: {problem}; run its task again with --force, or delete it",
                  file=sys.stderr)
            continue
        metric, raw = raw_value(record)
        given = (record.get("metrics") or {}).get(metric) if isinstance(record.get("metrics"), dict) else None
        if raw is None and given is not None:  # a score that is there but no number would show as a bare "–"
            print(f"warning: {path}: its {metric} is {given!r}, not a number; it shows as – (no score); run its task "
                  "again with --force, or delete it", file=sys.stderr)
        out.append((rel.with_suffix("").as_posix(), record))
    return out


def _layer_mean(per_layer: object) -> float | None:
    """The mean of a record's visual tokens per decoder layer (None when it holds no such list)."""
    if not isinstance(per_layer, list) or not per_layer:
        return None
    try:
        return sum(float(v) for v in per_layer) / len(per_layer)
    except (TypeError, ValueError):
        return None


def _limit(value: Any) -> int:
    """0 = the whole task; pandas keeps ints in a groupby key where it would turn None into NaN."""
    return int(value) if value else 0


def record_seed(rec: dict[str, Any]) -> int | None:
    """The seed a record's artifact was made with (its calibration draw), from the key inputs it keeps."""
    inputs = ((rec.get("artifact") or {}).get("cache_inputs") or {}) if isinstance(rec.get("artifact"), dict) else {}
    seed = inputs.get("seed") if isinstance(inputs, dict) else None
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


def document_scores(record: Path, rec: dict[str, Any]) -> tuple[dict[int, float] | None, str]:
    """{doc id: score} of the headline metric from the samples JSONL beside a record, or (None, why not).

    Only where the headline is the plain mean of per-document numbers: a metric whose samples hold a dict for an
    aggregation to combine (MME's sums, POPE's F1, GPT-judged scores) or whose mean over the samples is not the
    reported number gets no interval, and a table says why, rather than a fake one.
    """
    task = rec["task"]
    metric, raw = raw_value(rec)
    if raw is None:
        return None, "no headline score"
    if benchmark(task, rec.get("metrics")).subtask_mean:
        return None, "a mean of subtask means (no per-document mean)"
    path = record.with_name(rec["samples_file"]) if isinstance(rec.get("samples_file"), str) else samples_path(record)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, NO_SAMPLES
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"samples file unreadable ({exc})"
    name = metric.partition(",")[0]
    scores: dict[int, float] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None, "samples file is not valid JSONL"
        if not isinstance(row, dict) or row.get("task", task) != task:
            continue  # a group's subtasks
        value, doc = row.get(name), row.get("doc_id")
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)) or not isinstance(doc, int) or math.isnan(value):
            return None, f"the samples hold no per-document number for {name} (an aggregate-only metric)"
        if doc in scores:
            return None, "a document scored twice in the samples (several filters)"
        scores[doc] = float(value)
    if not scores:
        return None, "no per-document samples of the task"
    mean = sum(scores.values()) / len(scores)
    if not math.isclose(mean, raw, rel_tol=1e-9, abs_tol=1e-12):
        return None, f"{name} is not the mean of its per-document scores"
    return scores, ""


def headline_frame(runs: Path) -> pd.DataFrame:
    """One row per run record: the benchmark's headline number raw, as displayed, and on a 0-100 scale, with its
    bootstrap interval and its paired p-value against the dense run of the same model build, limit and task
    (the first such run by run id where there are several)."""
    rows = []
    for run_id, rec in iter_records(runs):
        metric, raw = raw_value(rec)
        bench = benchmark(rec["task"], rec.get("metrics"))
        n = rec.get("n_samples") or {}
        scores, why = document_scores(Path(runs) / f"{run_id}.json", rec)
        low = high = None
        if scores is not None:
            low, high = (v * bench.display_scale for v in bootstrap_interval(list(scores.values())))
        rows.append({
            "model": (rec.get("model") or {}).get("name"), "method": with_budget(rec["method"], record_budget(rec)),
            "sparsity": round(float(rec.get("sparsity", 0.0)), 4), "pattern": rec.get("pattern", "unstructured"),
            "limit": _limit(rec.get("limit")), "task": rec["task"], "metric": metric, "raw": raw,
            "value": None if raw is None else raw * bench.display_scale,
            "percent": None if raw is None or math.isnan(bench.percent_scale) else raw * bench.percent_scale,
            "source": "ours", "run_id": run_id, "git_commit": rec.get("git_commit"),
            "lmms_eval_version": (rec.get("versions") or {}).get("lmms-eval"), "date": rec.get("date"),
            "n_samples": (n.get(rec["task"]) or {}).get("effective") if isinstance(n, dict) else None,
            **{c: (rec.get("cost") or {}).get(c) for c in COST_FIELDS},
            "weight_mb_stored": _stored_mb(rec),
            LAYER_TOKENS: _layer_mean((rec.get("cost") or {}).get("visual_tokens_per_layer")),
            "model_build": record_build(rec), "seed": record_seed(rec), "ci_low": low, "ci_high": high,
            "n_docs": len(scores) if scores is not None else None, "p_vs_dense": None, "paired_test": None,
            "no_interval": why or None, "scores": scores,
        })
    pair_with_dense(rows)
    df = pd.DataFrame(rows, columns=[*HEADLINE_COLUMNS, *UNCERTAINTY_COLUMNS, *VISION_COST, LAYER_TOKENS])
    for column in ("raw", "value", "percent", "sparsity", "prefill_tflops", "prefill_latency_s", "visual_tokens_kept",
                   "decode_tokens_per_s", "peak_memory_mb", "weight_mb_stored", "ci_low", "ci_high", "p_vs_dense",
                   *VISION_COST, LAYER_TOKENS):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["limit"] = df["limit"].astype(int)
    df["n_docs"] = df["n_docs"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    return df


def _stored_mb(rec: dict[str, Any]) -> float | None:
    """MiB of weights the run's artifact stores (pruning.json's weight_bytes; None for artifacts from before)."""
    stored = ((rec.get("pruning") or {}).get("weight_bytes") or {}).get("stored")
    return stored / 2**20 if isinstance(stored, (int, float)) and not isinstance(stored, bool) else None


def pair_with_dense(rows: list[dict[str, Any]]) -> None:
    """Fill p_vs_dense / paired_test of rows (model, model_build, limit, task, method, scores): each run with
    per-document scores against its dense run's (the first of a key), documents matched by id."""
    dense: dict[tuple[Any, ...], dict[int, float]] = {}
    for row in rows:
        key = (row["model"], row["model_build"], row["limit"], row["task"])
        if row["method"] == "dense" and row["scores"] is not None:
            dense.setdefault(key, row["scores"])
    for row in rows:
        ref = dense.get((row["model"], row["model_build"], row["limit"], row["task"]))
        if row["method"] == "dense" or row["scores"] is None or ref is None:
            continue
        paired = paired_test(row["scores"], ref)
        if paired is not None:
            row["p_vs_dense"], row["paired_test"] = paired.p_value, paired.test


def load_published(path: Path | None) -> pd.DataFrame:
    """Published numbers (display units) with their source; an absent default file means none."""
    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if not path.is_file():
        return pd.DataFrame(columns=PUBLISHED_COLUMNS + ["percent", "limit"])
    try:
        df = pd.read_csv(path, comment="#", skip_blank_lines=True, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read published numbers {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise HarnessError(f"{path} lacks the column(s) {', '.join(missing)}; its header must be "
                           f"{','.join(PUBLISHED_COLUMNS)}")
    rows = []
    for i, cells in enumerate(df[PUBLISHED_COLUMNS].to_dict("records")):
        row, wrong = from_text(PublishedRow, cells)
        if wrong is not None:
            raise HarnessError(f"{path}: its row {i + 1} ({cells['model']}, {cells['method']}, {cells['task']}): "
                               f"{wrong}; correct it or remove the row")
        rows.append(row)
    df = pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)
    if (df["source"].str.strip() == "").any():
        raise HarnessError(f"{path}: every published number needs its source (paper, table, page)")
    df["sparsity"] = df["sparsity"].astype(float).round(4)
    df["value"] = df["value"].astype(float)
    df["percent"] = [v * benchmark(t).percent_scale / benchmark(t).display_scale
                     for t, v in zip(df["task"], df["value"])]
    df["limit"] = 0
    return df
