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

CPU_BATCH = 8  # questions per generate call on a CPU: enough to amortise the per-call overhead, little memory
MAX_BATCH = 32  # the most the automatic choice picks on a GPU (lmms-eval users evaluate 7B models at 8-32)
COST_DIR_ENV = "TAMP_COST_DIR"  # for data-parallel runs: where each process's wrapper writes its measured cost
KEY_ARG = "tamp_key"  # the model argument naming the artifact's cache key (the recipe it was made from)


def model_args(artifact: Path, key: str, max_empty_fraction: float) -> str:
    """lmms-eval's `model_args` for one of our artifacts. lmms-eval keys its response cache (`--use_cache`) by the
    model name and these arguments; the artifact key makes two configurations of one checkpoint path differ there
    (the wrappers refuse a key that is not the artifact's)."""
    return f"pretrained={artifact},{KEY_ARG}={key},max_empty_fraction={max_empty_fraction}"


def default_batch_size(config: dict[str, Any], device: str, free_bytes: int | None = None,
                       weight_bytes: int = 0) -> int:
    """The batch size `harness run` uses when --batch-size is not given: CPU_BATCH on a CPU; on a GPU, as many
    samples as fit in half the memory the weights leave free, each charged a KV cache of 4,096 tokens plus as much
    again for activations (bf16), between 1 and MAX_BATCH. `config` is the checkpoint's config.json; `free_bytes`
    the device's free memory now (asked of the device when None) and `weight_bytes` what its weights will take
    there: the choice is made before the model is loaded, so the weights still have to come out of what is free."""
    if not str(device).startswith("cuda"):
        return CPU_BATCH
    text = config.get("text_config") or config.get("thinker_config", {}).get("text_config") or config
    hidden, layers = int(text.get("hidden_size", 4096)), int(text.get("num_hidden_layers", 32))
    heads, kv_heads = int(text.get("num_attention_heads", 32)), int(text.get("num_key_value_heads") or 0)
    kv_width = hidden * (kv_heads or heads) // max(heads, 1)
    per_sample = 2 * (2 * layers * kv_width * 4096 * 2)  # K and V, bf16, 4,096 tokens; doubled for activations
    if free_bytes is None:
        import torch

        free_bytes = int(torch.cuda.mem_get_info(torch.device(device))[0])
    left = max(0, free_bytes - weight_bytes)
    return max(1, min(MAX_BATCH, int(left * 0.5) // max(per_sample, 1)))


def weight_bytes(checkpoint: Path) -> int:
    """Bytes of a checkpoint's weight files (safetensors, else PyTorch .bin): what loading puts on the device at the
    dtype it was saved in (our artifacts are loaded at their saved dtype)."""
    files = sorted(checkpoint.glob("*.safetensors")) or sorted(checkpoint.glob("*.bin"))
    return sum(f.stat().st_size for f in files if f.is_file())


def quiet_loguru() -> None:
    """lmms-eval logs through loguru at DEBUG by default (thousands of task-index lines): keep warnings, or the
    level in HARNESS_LOG_LEVEL (in the grid's driver and in every cell's worker)."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("HARNESS_LOG_LEVEL", "WARNING"))


def load_wrapper(wrapper: str, model_args: str, device: str | None, batch_size: int = 1) -> Any:
    """Build the registered wrapper by its lmms-eval id (so the entry point is what resolves it)."""
    from lmms_eval.models import get_model

    return get_model(wrapper).create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})


def evaluate_in_process(lm: Any, task: str, limit: int | None, tm: Any, batch_size: int = 1) -> dict[str, Any]:
    """simple_evaluate with an already built wrapper (its clean() keeps the model for the next task)."""
    from lmms_eval import evaluator
    from lmms_eval.utils import get_datetime_str

    return evaluator.simple_evaluate(model=lm, tasks=[task], batch_size=batch_size, limit=limit, task_manager=tm,
                                     log_samples=True, datetime_str=get_datetime_str(), verbosity="WARNING")


def accelerate_command(gpus: int, wrapper: str, model_args: str, task: str, limit: int | None,
                       output: Path, batch_size: int = 1) -> list[str]:
    """`accelerate launch --num_processes N -m lmms_eval ...` with our registered wrapper and tasks/."""
    exe = Path(sys.executable).with_name("accelerate")
    launcher = [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [*launcher, "--num_processes", str(gpus), "-m", "lmms_eval", "--model", wrapper,
           "--model_args", model_args, "--tasks", task, "--include_path", str(tasks_dir()),
           "--batch_size", str(batch_size), "--output_path", str(output), "--log_samples"]
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


def batch_cost(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per generate call (one batch of questions), from cost meters' exports: the mean batch size, the median wall
    time of a call's prefill, and the decoding time per call ({} when nothing ran)."""
    import statistics

    prefills = [x for part in parts for x in part["prefills"]]
    if not prefills:
        return {}
    return {"batch_size": statistics.fmean(x.get("batch", 1) for x in prefills),
            "prefill_s_per_batch": statistics.median(x.get("batch_seconds", x["seconds"]) for x in prefills),
            "decode_s_per_batch": sum(part["decode_s"] for part in parts) / len(prefills)}


def merged_cost(folder: Path) -> dict[str, Any] | None:
    """The cost summary of every process's share (None when no process measured any)."""
    from tamp.inference.cost import summarize

    parts = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]
    summary = summarize(parts) if parts else None
    return {**summary, **batch_cost(parts)} if summary is not None else None


def evaluate_with_accelerate(gpus: int, wrapper: str, model_args: str, task: str, limit: int | None,
                             workdir: Path, batch_size: int = 1) -> dict[str, Any]:
    """Run the command, then read back what lmms-eval wrote (it exits 0 even when evaluation failed)."""
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = accelerate_command(gpus, wrapper, model_args, task, limit, workdir, batch_size)
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
