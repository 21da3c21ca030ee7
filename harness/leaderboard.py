"""`harness export --csv FILE`: the leaderboard, one row per (model, model_build, method, sparsity, pattern, limit,
task, metric).

Column order (stable):
  model, model_build (which weights carry the name: the first 12 hex digits of the shipped weights' sha256 of a
  trained tiny model, of a local directory's content hash or of an HF snapshot's commit; empty where the name
  alone fixes the weights, or for records that predate the column and cannot tell), method (with its token budget
  where one was set: `fastv@0.222`), sparsity, pattern,
  limit (0 = the whole task), task, metric ("<metric>,<filter>" as lmms-eval names it), value (as lmms-eval
  reports it), stderr, dense_value (the same model build, task and metric unpruned), relative_pct (value /
  dense_value * 100), headline (the metric our tables show),
  run_id (the record's path under the runs folder), artifact_key, git_commit, lmms_eval_version,
  tamp_version, date (UTC, when the task was evaluated), then the cost axis of the task's evaluation (empty
  when it was not measured, e.g. records from before the cost axis): prefill_tflops (per sample, dense
  weights; language model decoder + head + a token method's scoring), prefill_tflops_nonzero (non-zero
  weights only), prefill_latency_s (median),
  decode_tokens_per_s, visual_tokens_in, visual_tokens_kept (after the last drop), peak_memory_mb, device; then the
  rest of the record's cost: peak_memory_how (how the run's own peak was measured, tamp/inference/peak_memory.py),
  prefills, prompt_tokens, processes, tokens_per_layer and visual_tokens_per_layer (JSON lists), flops_counted.

A file written before a group of columns existed (model_build, the cost columns, the rest of the cost, the vision
side's) is read and rewritten with them (empty for its old rows).

Then how sure the headline row is (harness/uncertainty.py; empty on the other rows and where the samples give no
per-document scores): ci_low, ci_high (95% bootstrap interval, in the units of value), n_docs, p_vs_dense (paired
test against the same build's dense run on the documents both scored), seed (the calibration seed of the record's
artifact; part of a row's identity, so several seeds stay rows of their own). A file from before these columns is
read and rewritten with them; its rows, whose seed is unknown, are replaced by new rows of the same key.

Last, the vision side's parts of prefill_tflops (tamp/inference/vision_flops.py): prefill_tflops_encoder (the vision
encoder) and prefill_tflops_projector; empty for records made before they were counted.

Re-exporting merges into an existing file: a row whose key is already there is replaced by the newer
record, other old rows are kept, so the file accumulates without duplicates. model_build is part of the key, so
the rows of another build of the same model name (a refreshed trained tiny model, another HF revision) stay rows
of their own, and each row's dense_value / relative_pct come from the dense run of its own build.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.benchmarks import benchmark, raw_value
from harness.collect import document_scores, iter_records, pair_with_dense, record_seed
from harness.errors import HarnessError
from harness.records import record_budget, record_build, with_budget
from harness.tables import method_rank
from harness.uncertainty import bootstrap_interval
from tamp.atomic_write import write_text_atomic

KEY = ["model", "model_build", "method", "sparsity", "pattern", "limit", "task", "metric"]
COST = ["prefill_tflops", "prefill_tflops_nonzero", "prefill_latency_s", "decode_tokens_per_s", "visual_tokens_in",
        "visual_tokens_kept", "peak_memory_mb", "device"]
REST = ["value", "stderr", "dense_value", "relative_pct", "headline", "run_id", "artifact_key", "git_commit",
        "lmms_eval_version", "tamp_version", "date"]
COST_DETAIL = ["peak_memory_how", "prefills", "prompt_tokens", "processes", "tokens_per_layer", "visual_tokens_per_layer",
               "flops_counted"]  # the rest of the record's cost, appended after COST
# how sure the headline row is (harness/uncertainty.py), appended last
UNCERTAINTY = ["ci_low", "ci_high", "n_docs", "p_vs_dense", "seed"]
# the vision encoder's and the projector's parts of prefill_tflops, appended after the uncertainty columns
VISION_COST = ["prefill_tflops_encoder", "prefill_tflops_projector"]
COLUMNS = [*KEY, *REST, *COST, *COST_DETAIL, *UNCERTAINTY, *VISION_COST]
# the column groups added since the first layout: a file lacking whole groups of them, in order, is an older one,
# read and rewritten with the missing columns empty
ADDED = (("model_build",), tuple(COST), tuple(COST_DETAIL), tuple(UNCERTAINTY), tuple(VISION_COST))
# the layouts just before the build and the uncertainty columns (tests write files of those times)
BEFORE_BUILD = [c for c in COLUMNS if c != "model_build" and c not in COST_DETAIL and c not in UNCERTAINTY
                and c not in VISION_COST]
BEFORE_UNCERTAINTY = [c for c in COLUMNS if c not in UNCERTAINTY and c not in VISION_COST]
DENSE_KEY = ["model", "model_build", "limit", "task", "metric"]


def _cell(value: Any) -> Any:
    """A list (tokens per layer) as JSON text, anything else as it is."""
    return json.dumps(value) if isinstance(value, list) else value


def older_layout(columns: list[str]) -> bool:
    """COLUMNS, in order, without one or more whole groups of ADDED: a file from before they existed."""
    gone = set(COLUMNS) - set(columns)
    return (bool(gone) and columns == [c for c in COLUMNS if c in set(columns)]
            and gone == {c for group in ADDED if set(group) & gone for c in group})


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def record_rows(run_id: str, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every numeric metric of every task in one record (a group's subtasks too), plus derived headlines."""
    versions = rec.get("versions") or {}
    base = {"model": (rec.get("model") or {}).get("name"), "model_build": record_build(rec),
            "method": with_budget(rec["method"], record_budget(rec)),
            "sparsity": round(float(rec.get("sparsity", 0.0)), 4), "pattern": rec.get("pattern", "unstructured"),
            "limit": int(rec.get("limit") or 0), "run_id": run_id, "artifact_key": rec.get("artifact_key"),
            "git_commit": rec.get("git_commit"), "lmms_eval_version": versions.get("lmms-eval"),
            "tamp_version": versions.get("tamp"), "date": rec.get("date"),
            **{c: (rec.get("cost") or {}).get(c) for c in COST},
            **{c: _cell((rec.get("cost") or {}).get(c)) for c in COST_DETAIL},
            **{c: (rec.get("cost") or {}).get(c) for c in VISION_COST}}
    results = dict(rec.get("results") or {})
    results.setdefault(rec["task"], rec.get("metrics") or {})
    head_metric, head_value = raw_value(rec)
    rows = []
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not _numeric(value):
                continue
            name, _, filt = key.partition(",")
            stderr = metrics.get(f"{name}_stderr,{filt}")
            rows.append({**base, "task": task, "metric": key, "value": float(value),
                         "stderr": float(stderr) if _numeric(stderr) else None,
                         "headline": task == rec["task"] and key == head_metric})
    if head_value is not None and not any(r["headline"] for r in rows):  # e.g. MVBench's mean of subtasks
        rows.append({**base, "task": rec["task"], "metric": head_metric, "value": head_value, "stderr": None,
                     "headline": True})
    seed = record_seed(rec)
    return [{**r, "seed": seed} for r in rows]


def _with_uncertainty(rows: list[dict[str, Any]], scores: dict[int, dict[int, float] | None]) -> None:
    """The headline rows' interval (as lmms-eval reports the metric), documents and paired p-value vs dense."""
    heads = []
    for i, row in enumerate(rows):
        if i in scores and scores[i] is not None:
            low, high = bootstrap_interval(list(scores[i].values()))
            row.update(ci_low=low, ci_high=high, n_docs=len(scores[i]))
            heads.append({**row, "scores": scores[i], "p_vs_dense": None, "_i": i})
    pair_with_dense(heads)
    for head in heads:
        rows[head["_i"]]["p_vs_dense"] = head["p_vs_dense"]


def _with_dense(df: pd.DataFrame) -> pd.DataFrame:
    """Fill dense_value / relative_pct from the dense rows of the same frame."""
    dense = df[df["method"] == "dense"].set_index(DENSE_KEY)["value"]
    dense = dense[~dense.index.duplicated(keep="last")]
    idx = pd.MultiIndex.from_frame(df[DENSE_KEY])
    df = df.copy()
    df["dense_value"] = dense.reindex(idx).to_numpy()
    rel = df["value"] / df["dense_value"].where(df["dense_value"] != 0) * 100.0
    df["relative_pct"] = rel
    return df


def leaderboard(runs: Path) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    scores: dict[int, dict[int, float] | None] = {}
    for run_id, rec in iter_records(runs):
        found = record_rows(run_id, rec)
        head = next((i for i, r in enumerate(found) if r["headline"] and r["task"] == rec["task"]), None)
        if head is not None:
            scores[len(rows) + head] = document_scores(Path(runs) / f"{run_id}.json", rec)[0]
        rows += found
    _with_uncertainty(rows, scores)
    return pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("dense_value", "relative_pct")])


def read_leaderboard(path: Path) -> pd.DataFrame:
    try:
        # model_build as text: a hex prefix of digits only would otherwise be read as a number
        old = pd.read_csv(path, keep_default_na=True, dtype={"model_build": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read the existing leaderboard {path} ({str(exc).splitlines()[0]}); "
                           "move it away or choose another --csv") from None
    if older_layout(list(old.columns)):
        old = old.reindex(columns=COLUMNS)
    if list(old.columns) != COLUMNS:
        raise HarnessError(f"{path} is not a leaderboard written by `harness export` (its columns differ); "
                           "move it away or choose another --csv")
    return old


def export(runs: Path, csv: Path) -> tuple[int, int]:
    """Write/merge the leaderboard CSV atomically; returns (rows in the file, rows from these records)."""
    new = leaderboard(runs)
    csv = Path(csv)
    frames = [read_leaderboard(csv)] if csv.is_file() else []
    merged = pd.concat([*frames, new], ignore_index=True) if frames else new
    merged["sparsity"] = merged["sparsity"].astype(float).round(4)
    merged["limit"] = merged["limit"].astype(int)
    merged["model_build"] = merged["model_build"].fillna("").astype(str)
    for column in ("seed", "n_docs"):  # whole numbers, empty where unknown
        merged[column] = pd.to_numeric(merged[column], errors="coerce").astype("Int64")
    if frames:  # an old row without its seed (a file from before the column) is replaced by a new row of its key
        new_keys = pd.MultiIndex.from_frame(new[KEY].assign(sparsity=new["sparsity"].astype(float).round(4),
                                                            limit=new["limit"].astype(int),
                                                            model_build=new["model_build"].fillna("").astype(str)))
        old_part = merged.index < len(frames[0])
        unknown = old_part & merged["seed"].isna().to_numpy() & pd.MultiIndex.from_frame(merged[KEY]).isin(new_keys)
        merged = merged[~unknown]
    merged = merged.drop_duplicates(subset=[*KEY, "seed"], keep="last")
    merged = _with_dense(merged)
    ranks = merged["method"].map(lambda m: method_rank(m)[0])
    task_rank = merged["task"].map(lambda t: (benchmark(t).label, t))
    merged = merged.assign(_r=ranks, _t=task_rank).sort_values(
        ["model", "model_build", "limit", "sparsity", "pattern", "_r", "method", "_t", "metric"], kind="stable")
    merged = merged.drop(columns=["_r", "_t"])[COLUMNS]
    buf = io.StringIO()
    merged.to_csv(buf, index=False)
    write_text_atomic(csv, buf.getvalue())
    return len(merged), len(new)
