"""Evaluate one task through lmms-eval: in this process (one GPU or CPU), or data-parallel via accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.errors import EvaluationError
from harness.tasks_catalog import tasks_dir

COST_DIR_ENV = "TAMP_COST_DIR"  # for data-parallel runs: where each process's wrapper writes its measured cost
KEY_ARG = "tamp_key"  # the model argument naming the artifact's cache key (the recipe it was made from)


def model_args(artifact: Path, key: str, max_empty_fraction: float) -> str:
    """lmms-eval's `model_args` for one of our artifacts. lmms-eval keys its response cache (`--use_cache`) by the
    model name and these arguments; the artifact key makes two configurations of one checkpoint path differ there
    (the wrappers refuse a key that is not the artifact's)."""
    return f"pretrained={artifact},{KEY_ARG}={key},max_empty_fraction={max_empty_fraction}"


def quiet_loguru() -> None:
    """lmms-eval logs through loguru at DEBUG by default (thousands of task-index lines): keep warnings, or the
    level in HARNESS_LOG_LEVEL (in the grid's driver and in every cell's worker)."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("HARNESS_LOG_LEVEL", "WARNING"))


def load_wrapper(wrapper: str, model_args: str, device: str | None) -> Any:
    """Build the registered wrapper by its lmms-eval id (so the entry point is what resolves it)."""
    from lmms_eval.models import get_model

    return get_model(wrapper).create_from_arg_string(model_args, {"batch_size": 1, "device": device})


def evaluate_in_process(lm: Any, task: str, limit: int | None, tm: Any) -> dict[str, Any]:
    """simple_evaluate with an already built wrapper (its clean() keeps the model for the next task)."""
    from lmms_eval import evaluator
    from lmms_eval.utils import get_datetime_str

    return evaluator.simple_evaluate(model=lm, tasks=[task], batch_size=1, limit=limit, task_manager=tm,
                                     log_samples=True, datetime_str=get_datetime_str(), verbosity="WARNING")


def accelerate_command(gpus: int, wrapper: str, model_args: str, task: str, limit: int | None,
                       output: Path) -> list[str]:
    """`accelerate launch --num_processes N -m lmms_eval ...` with our registered wrapper and tasks/."""
    exe = Path(sys.executable).with_name("accelerate")
    launcher = [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [*launcher, "--num_processes", str(gpus), "-m", "lmms_eval", "--model", wrapper,
           "--model_args", model_args, "--tasks", task, "--include_path", str(tasks_dir()),
           "--batch_size", "1", "--output_path", str(output), "--log_samples"]
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


def merged_cost(folder: Path) -> dict[str, Any] | None:
    """The cost summary of every process's share (None when no process measured any)."""
    from tamp.inference.cost import summarize

    parts = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]
    return summarize(parts) if parts else None


def evaluate_with_accelerate(gpus: int, wrapper: str, model_args: str, task: str, limit: int | None,
                             workdir: Path) -> dict[str, Any]:
    """Run the command, then read back what lmms-eval wrote (it exits 0 even when evaluation failed)."""
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = accelerate_command(gpus, wrapper, model_args, task, limit, workdir)
    print("+ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, env={**os.environ, COST_DIR_ENV: str(workdir / "cost")})  # each process's cost
    found = sorted(workdir.glob("*/*_results.json"))
    if code != 0 or not found:
        raise EvaluationError(f"lmms-eval wrote no results for task '{task}' (exit code {code}); see its log above")
    result = json.loads(found[-1].read_text())
    stamp = found[-1].name[: -len("_results.json")]
    result["samples"] = {}
    for path in found[-1].parent.glob(f"{stamp}_samples_*.jsonl"):
        leaf = path.stem[len(f"{stamp}_samples_"):]
        result["samples"][leaf] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    result["cost"] = merged_cost(workdir / "cost")
    shutil.rmtree(workdir, ignore_errors=True)  # everything lmms-eval wrote is now in our record and samples
    return result
