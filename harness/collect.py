"""Run records (results/runs/**.json) and published numbers -> pandas frames for tables, plots and the CSV."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.benchmarks import benchmark, raw_value
from harness.errors import HarnessError
from harness.records import read_record

# one row per record: its headline number
HEADLINE_COLUMNS = ["model", "method", "sparsity", "pattern", "limit", "task", "metric", "raw", "value", "percent",
                    "source", "run_id", "git_commit", "lmms_eval_version", "date", "n_samples", "prefill_tflops",
                    "prefill_latency_s", "visual_tokens_kept", "decode_tokens_per_s", "peak_memory_mb",
                    "peak_memory_how", "device"]
COST_FIELDS = ["prefill_tflops", "prefill_latency_s", "visual_tokens_kept", "decode_tokens_per_s", "peak_memory_mb",
               "peak_memory_how", "device"]  # from the record's cost (tables' --cost columns, the TFLOPs plot)
# results/reference/published.csv: published numbers in the benchmark's display units (see benchmarks.py)
PUBLISHED_COLUMNS = ["model", "method", "sparsity", "pattern", "task", "value", "source"]
DEFAULT_PUBLISHED = Path("results/reference/published.csv")


def iter_records(runs: Path) -> list[tuple[str, dict[str, Any]]]:
    """(run id, record) for every finished record under ``runs``; the run id is its path without .json.

    A .json that is not a usable record (truncated, edited, another file) is left out with a warning naming it on
    stderr, so a row missing from a table is never a silent surprise.
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
        if record is not None and not (isinstance(record.get("task"), str) and isinstance(record.get("method"), str)):
            record, problem = None, "a run record without its task or method"
        if record is None:
            print(f"warning: skipping {path}: {problem}; run its task again with --force, or delete it",
                  file=sys.stderr)
            continue
        out.append((rel.with_suffix("").as_posix(), record))
    return out


def _limit(value: Any) -> int:
    """0 = the whole task; pandas keeps ints in a groupby key where it would turn None into NaN."""
    return int(value) if value else 0


def headline_frame(runs: Path) -> pd.DataFrame:
    """One row per run record: the benchmark's headline number raw, as displayed, and on a 0-100 scale."""
    rows = []
    for run_id, rec in iter_records(runs):
        metric, raw = raw_value(rec)
        bench = benchmark(rec["task"], rec.get("metrics"))
        n = rec.get("n_samples") or {}
        rows.append({
            "model": (rec.get("model") or {}).get("name"), "method": rec["method"],
            "sparsity": round(float(rec.get("sparsity", 0.0)), 4), "pattern": rec.get("pattern", "unstructured"),
            "limit": _limit(rec.get("limit")), "task": rec["task"], "metric": metric, "raw": raw,
            "value": None if raw is None else raw * bench.display_scale,
            "percent": None if raw is None or math.isnan(bench.percent_scale) else raw * bench.percent_scale,
            "source": "ours", "run_id": run_id, "git_commit": rec.get("git_commit"),
            "lmms_eval_version": (rec.get("versions") or {}).get("lmms-eval"), "date": rec.get("date"),
            "n_samples": (n.get(rec["task"]) or {}).get("effective") if isinstance(n, dict) else None,
            **{c: (rec.get("cost") or {}).get(c) for c in COST_FIELDS},
        })
    df = pd.DataFrame(rows, columns=HEADLINE_COLUMNS)
    for column in ("raw", "value", "percent", "sparsity", "prefill_tflops", "prefill_latency_s", "visual_tokens_kept",
                   "decode_tokens_per_s", "peak_memory_mb"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["limit"] = df["limit"].astype(int)
    return df


def load_published(path: Path | None) -> pd.DataFrame:
    """Published numbers (display units) with their source; an absent default file means none."""
    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if not path.is_file():
        return pd.DataFrame(columns=PUBLISHED_COLUMNS + ["percent", "limit"])
    try:
        df = pd.read_csv(path, comment="#", skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read published numbers {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise HarnessError(f"{path} lacks the column(s) {', '.join(missing)}; its header must be "
                           f"{','.join(PUBLISHED_COLUMNS)}")
    df = df[PUBLISHED_COLUMNS].copy()
    if df["source"].isna().any() or (df["source"].astype(str).str.strip() == "").any():
        raise HarnessError(f"{path}: every published number needs its source (paper, table, page)")
    df["sparsity"] = df["sparsity"].astype(float).round(4)
    df["value"] = pd.to_numeric(df["value"], errors="raise")
    df["percent"] = [v * benchmark(t).percent_scale / benchmark(t).display_scale
                     for t, v in zip(df["task"], df["value"])]
    df["limit"] = 0
    return df
