"""Run records: one JSON per (model, method, sparsity, pattern, task) plus its samples JSONL, written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import EvaluationError
from tamp.atomic_write import DiskFull, write_text_atomic
from tamp.config import PruneConfig
from tamp.schema import problem

SCHEMA = 1


@dataclass(frozen=True)
class RecordModel:
    name: str
    build: str | None = None


@dataclass(frozen=True)
class RecordCost:
    """The cost fields the tables, plots and leaderboard read (tamp.inference.cost.summarize writes more)."""

    prefill_tflops: float | None = None
    prefill_tflops_nonzero: float | None = None
    prefill_latency_s: float | None = None
    visual_tokens_in: float | None = None
    visual_tokens_kept: float | None = None
    decode_tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_how: str | None = None
    device: str | None = None
    prefills: int | None = None
    processes: int | None = None
    tokens_per_layer: list[float] | None = None
    visual_tokens_per_layer: list[float] | None = None
    # batched evaluation: questions per second of the task's evaluation, mean questions per generate call, one
    # call's prefill (median) and decoding wall time
    questions_per_s: float | None = None
    batch_size: float | None = None
    prefill_s_per_batch: float | None = None
    decode_s_per_batch: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """The schema of a run record (`harness run` writes it; `harness table` / `export` / `plot`, the leaderboard
    and the run's resume read it through `read_record`): the fields they read, with their types. A headline score
    that is there but no number is the tables' to name (harness.collect), not a schema error."""

    schema: int
    task: str
    method: str
    model: RecordModel
    sparsity: float = 0.0
    pattern: str = "unstructured"
    limit: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] | None = None
    n_samples: dict[str, dict[str, int]] | None = None
    samples_file: str | None = None
    artifact_key: str | None = None
    artifact: dict[str, Any] | None = None
    cost: RecordCost | None = None
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    date: str | None = None


def model_build(fingerprint: dict[str, Any] | None) -> str:
    """What tells two builds of one model name apart, from the model part of an artifact key's inputs, short (12
    hex digits): the shipped weights' hash of a trained tiny model, a local directory's content hash, an HF
    snapshot's commit; "" where the name alone fixes the weights (tiny random models, built deterministically by
    the tamp code the key hashes) or where nothing is known."""
    for name in ("weights_sha256", "dir_sha256", "commit"):
        value = (fingerprint or {}).get(name)
        if isinstance(value, str) and value:
            return value[:12]
    return ""


def record_build(rec: dict[str, Any]) -> str:
    """A run record's model build: written by `harness run` since builds are told apart, else worked out from the
    key inputs the record keeps ("" for records of trained tiny models from before shipped weights: their
    weights were trained on the machine that ran them, and are not known)."""
    model = rec.get("model") if isinstance(rec.get("model"), dict) else {}
    if isinstance(model.get("build"), str):
        return model["build"]
    artifact = rec.get("artifact") if isinstance(rec.get("artifact"), dict) else {}
    inputs = artifact.get("cache_inputs") if isinstance(artifact.get("cache_inputs"), dict) else {}
    return model_build(inputs.get("model") if isinstance(inputs.get("model"), dict) else None)


def _default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _write(path: Path, text: str) -> None:
    """Atomically; a full disk is one line and a failed run (exit 1), its temp gone (tamp.atomic_write)."""
    try:
        write_text_atomic(path, text)
    except DiskFull as exc:
        raise EvaluationError(str(exc)) from None


def write_json(path: Path, data: Any) -> None:
    _write(path, json.dumps(data, indent=2, default=_default) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    _write(path, "".join(json.dumps(r, default=_default) + "\n" for r in rows))


DEFAULT_SEED: int = PruneConfig.seed  # tamp's default seed: its records keep the paths they always had


def record_path(output: Path, model: str, method: str, sparsity: float, pattern: str, task: str,
                limit: int | None, seed: int | None = None, budget: float | None = None) -> Path:
    """<output>/<model>/<method>_s<sparsity>_<pattern>[_seedN][_bSHARE]/<task>[_limitN].json; the seed (of the
    calibration draw, part of the artifact key) only where it is not the default, so prunings with other seeds
    (`harness sweep --seeds`) do not overwrite each other; the token budget (`token_budget`) where one was set, so
    the budgets of `harness sweep --token-budgets` do not either."""
    run = f"{method}_s{sparsity:.2f}_{pattern.replace(':', 'of')}"
    run += f"_seed{seed}" if seed is not None and seed != DEFAULT_SEED else ""
    run += f"_b{budget:g}" if budget is not None else ""
    name = task + (f"_limit{limit}" if limit else "")
    return Path(output) / model.replace("/", "__") / run / f"{name}.json"


BUDGET_MARK = "@"  # a budgeted token run's row: `fastv@0.222`


def with_budget(method: str, budget: float | None) -> str:
    """The name a run's rows carry in tables and the leaderboard: the method, and its token budget when one was set
    (`fastv@0.222`), so the budgets of one method are rows of their own."""
    return method if budget is None else f"{method}{BUDGET_MARK}{budget:g}"


def record_budget(rec: dict[str, Any]) -> float | None:
    """The token budget a run record's transform was set from (`token_budget`), or None."""
    budget = (rec.get("transform") or {}).get("budget")
    return float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) else None


def samples_path(record: Path) -> Path:
    return record.with_name(record.stem + ".samples.jsonl")


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a finished run record, else (None, why it cannot be used)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "not found"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({exc})"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None, f"not a run record of schema {SCHEMA}"
    return data, None


def record_problem(record: dict[str, Any]) -> str | None:
    """What in a finished record does not fit RunRecord (the field, its value, the type it must have), or None."""
    wrong = problem(RunRecord, record)
    return None if wrong is None else f"a run record whose {wrong}"


def load_record(path: Path) -> dict[str, Any] | None:
    """A finished record, or None (missing or unreadable: then the run is simply done again)."""
    return read_record(path)[0]


def sample_rows(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """lmms-eval's logged samples (docs come without media), the prompt as "input" as lmms-eval writes it."""
    rows = []
    for task, items in samples.items():
        for s in items:
            row = {"task": task, **{k: v for k, v in s.items() if k != "arguments"}}
            args = s.get("arguments")
            if "input" not in row and isinstance(args, list) and args and isinstance(args[0], str):
                row["input"] = args[0]
            rows.append(row)
    return rows


def _strings(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _strings(v)]
    return [value]


def empty_answers(samples: dict[str, list[dict[str, Any]]], output_types: dict[str, str | None]) -> dict[str, int] | None:
    """Empty answers among generation samples: {"empty", "total"}; None for a task without generation."""
    empty = total = 0
    for task, items in samples.items():
        if output_types.get(task) not in ("generate_until", "generate_until_multi_round"):
            continue
        for s in items:
            answers = _strings(s.get("resps", s.get("filtered_resps")))
            total += 1
            empty += int(all(not isinstance(a, str) or not a.strip() for a in answers))
    return {"empty": empty, "total": total} if total else None


def headline(metrics: dict[str, Any]) -> tuple[str, Any]:
    """The first real metric of a task's results ("metric,filter" -> value), for summaries."""
    for key, value in metrics.items():
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
            return key, value
    return "-", None
