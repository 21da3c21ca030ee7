"""harness run: prune (or reuse a cached artifact), evaluate each task through lmms-eval, write run records.

Every bad input is rejected before any model is loaded. Each finished task is written at once, so an
interrupted run loses nothing already done and a re-run skips it (unless --force).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ArtifactRefused, EvaluationError, HarnessError, check_output, tamp_errors
from harness.evaluate import (
    default_batch_size,
    evaluate_in_process,
    evaluate_with_accelerate,
    load_wrapper,
    model_args,
    weight_bytes,
)
from harness.model_specs import ModelSpec, expand_calib, input_problems, resolve_model
from harness.records import (
    SCHEMA,
    empty_answers,
    headline,
    load_record,
    model_build,
    record_path,
    sample_rows,
    samples_path,
    write_json,
    write_jsonl,
)
from harness.tasks_catalog import dataset_problems, offline_reason, output_type, task_manager, validate_tasks
from tamp.artifacts import PER_MATRIX, git_commit, read_pruning_json
from tamp.errors import join_problems
from tamp.families.registry import depth
from tamp.models.sources import disk_config

if TYPE_CHECKING:
    from tamp.recipe import Recipe


@dataclass
class RunOptions:
    """What `harness run` was asked to do."""

    model: str
    sparsity: float | None
    method: str = "tamp"
    pattern: str = "unstructured"
    tasks: list[str] | None = None
    limit: int | None = None
    calib: str | None = None
    nsamples: int | None = None
    seqlen: int | None = None
    seed: int = 42
    overrides: list[str] = field(default_factory=list)
    output: Path = Path("results/runs")
    artifacts: Path = Path("results/artifacts")
    gpus: int = 1
    device: str = "auto"
    dtype: str = "auto"
    force: bool = False
    max_empty_fraction: float = 0.5
    batch_size: int | None = None  # questions per generate call; None: chosen from the model and device
    command: list[str] | None = None  # what the records name as their command (default: this process's argv)


@dataclass
class RunPlan:
    """The validated run: model, recipe, tasks, cache key and the record of each task."""

    spec: ModelSpec
    recipe: Recipe
    tasks: list[str]
    key: str
    key_inputs: dict[str, Any]
    records: dict[str, Path]
    pending: list[str]

    @property
    def method(self) -> str:
        """What the records are filed under."""
        return self.recipe.name


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for label, dist in (("tamp", "tamp-harness"), ("torch", "torch"), ("transformers", "transformers"),
                        ("lmms-eval", "lmms_eval"), ("datasets", "datasets"), ("accelerate", "accelerate")):
        try:
            out[label] = md.version(dist)
        except md.PackageNotFoundError:
            out[label] = "not installed"
    return out


def run_recipe(opts: RunOptions, spec: ModelSpec) -> Recipe:
    """The run's recipe, parsed by tamp's one parser (tamp owns the rules: method names, sparsity range, what the
    dense model takes) with the model's defaults filled in (calibration, samples, segment length). The calibration
    data itself is checked by `missing_data`, with everything else a run needs."""
    from tamp.recipe import build_recipe

    calib = opts.calib or expand_calib(spec.calib)
    with tamp_errors():
        recipe = build_recipe(opts.method, opts.sparsity, pattern=opts.pattern, overrides=opts.overrides,
                              calib=calib, nsamples=spec.nsamples if opts.nsamples is None else opts.nsamples,
                              seqlen=spec.seqlen if opts.seqlen is None else opts.seqlen, seed=opts.seed,
                              dtype=opts.dtype,
                              sparsity_required=True)
    if recipe.needs_calibration and calib is None:
        if not recipe.weight.prunes and recipe.token is not None:  # the token method's own prune-time choice
            raise HarnessError(f"model '{spec.name}' has no default calibration data, which {recipe.token.method} "
                               "needs at prune time; pass --calib")
        raise HarnessError(f"model '{spec.name}' has no default calibration data; pass --calib")
    return recipe


def missing_data(spec: ModelSpec, recipe: Recipe, tasks: list[str], tm: Any) -> list[str]:
    """Everything the run needs that is not here, all of it: calibration files and media, and offline the model's
    weights and each task's dataset. One line per missing piece; empty when the run can start."""
    from tamp.calibration.loader import calibration_problems
    from tamp.models.loading import hf_cache_problem

    cfg = recipe.weight
    problems = calibration_problems(cfg.calib, cfg.nsamples, cfg.seed) if recipe.needs_calibration else []
    why_offline = offline_reason()
    if why_offline is not None and not spec.source.startswith("tiny-") and not Path(spec.source).exists():
        problems.append(hf_cache_problem(spec.source, None, why_offline))
    return [p for p in problems if p] + dataset_problems(tasks, tm, why_offline)


def plan_run(opts: RunOptions) -> RunPlan:
    """Validate everything and work out what is left to do; loads no model."""
    if opts.limit is not None and opts.limit < 1:
        raise HarnessError(f"--limit must be at least 1, got {opts.limit}")
    if opts.gpus < 1:
        raise HarnessError(f"--gpus must be at least 1, got {opts.gpus}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {opts.batch_size}; leave it out to choose one from "
                           "the model and device")
    if not 0.0 <= opts.max_empty_fraction <= 1.0:
        raise HarnessError(f"--max-empty-fraction must be in [0, 1], got {opts.max_empty_fraction}")
    if opts.gpus > 1:
        import torch

        if torch.cuda.device_count() < opts.gpus:
            raise HarnessError(f"--gpus {opts.gpus} needs {opts.gpus} CUDA devices; {torch.cuda.device_count()} visible")
    check_output(opts.output, "--output", directory=True)
    check_output(opts.artifacts, "--artifacts", directory=True)
    with tamp_errors():  # tamp's rules for what `tamp prune` will be given
        from tamp.devices import pick_device
        from tamp.models.loading import resolve_dtype

        resolve_dtype(opts.dtype)
        pick_device(opts.device)
    spec = resolve_model(opts.model)
    from harness.cache import check_caches  # torch (tamp.models.loading): a run's plan loads it anyway

    check_caches(spec.source)  # the caches the run writes into: a tiny model's build, the datasets lmms-eval loads
    recipe = run_recipe(opts, spec)

    tasks = list(dict.fromkeys(opts.tasks or spec.tasks))
    tm = task_manager(spec.wrapper)
    validate_tasks(tasks, tm)
    wrong_input = input_problems(spec, tasks)
    if recipe.token is not None:
        wrong_input.append(token_problem(spec, recipe))
        wrong_input = [p for p in wrong_input if p]
    if wrong_input:
        raise HarnessError(join_problems(wrong_input))
    missing = missing_data(spec, recipe, tasks, tm)
    if missing:
        raise HarnessError(join_problems(missing))
    key, inputs = _artifact_key(spec, recipe)
    records, pending = {}, []
    for task in tasks:
        path = record_path(opts.output, spec.name, recipe.name, recipe.sparsity, recipe.pattern, task, opts.limit,
                           recipe.weight.seed, token_budget(recipe))
        records[task] = path
        old = load_record(path)
        if old is None or opts.force:
            pending.append(task)
        elif old.get("artifact_key") != key:
            raise HarnessError(f"{path} exists but was made from a different artifact (model, method config, "
                               f"calibration or a method's version changed: key {old.get('artifact_key')} != {key}); "
                               "pass --force to replace it, or choose another --output")
    return RunPlan(spec, recipe, tasks, key, inputs, records, pending)


def token_budget(recipe: Recipe) -> float | None:
    """The common token budget the run's token method was set from (`--set token_budget`), or None."""
    return recipe.token.budget if recipe.token is not None else None


def token_problem(spec: ModelSpec, recipe: Recipe) -> str | None:
    """Why the recipe's token method cannot run on the model (its family, depth, or config: no [CLS] token, no
    video grid), from the config on disk, nothing loaded; None when it can, or when there is no token method."""
    if recipe.token is None:
        return None
    with tamp_errors():
        return recipe.token.model_problem(spec.family, model_depth(spec), disk_config(spec.source))


def model_depth(spec: ModelSpec) -> int | None:
    """The decoder layers of the model's language stack from its config.json, when one is on disk (a local folder,
    a tiny model built or shipped, the Hugging Face cache), where its family says (tamp.families.registry.depth);
    None otherwise: the loaded model is checked again before any pruning."""
    config = disk_config(spec.source)
    return None if config is None else depth(config)


def _artifact_key(spec: ModelSpec, recipe: Recipe) -> tuple[str, dict[str, Any]]:
    from harness.cache import artifact_key, calibration_fingerprint

    cfg = recipe.weight
    calib_fp = calibration_fingerprint(cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed) \
        if recipe.needs_calibration else None
    return artifact_key(spec, recipe, calib_fp)


def finished(opts: RunOptions) -> bool:
    """Every task already has its record, made from this run's artifact: nothing left to do.

    From the records alone (no device or data checks, which are the worker's: the driver of a cluster grid may
    have neither the GPUs nor the data of a compute node). In doubt (its calibration data unreadable here), False.
    """
    if opts.force:
        return False
    spec = resolve_model(opts.model)
    recipe = run_recipe(opts, spec)
    tasks = list(dict.fromkeys(opts.tasks or spec.tasks))
    records = [load_record(record_path(opts.output, spec.name, recipe.name, recipe.sparsity, recipe.pattern, task,
                                       opts.limit, recipe.weight.seed, token_budget(recipe))) for task in tasks]
    if any(r is None for r in records):
        return False
    try:
        with tamp_errors():
            key, _ = _artifact_key(spec, recipe)
    except HarnessError:
        return False
    return all(r.get("artifact_key") == key for r in records)


def run(opts: RunOptions, started: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Do the run; returns one summary row per task (finished now or skipped as already done). `started` is called
    once the plan holds and work is left (the cell's progress bar takes over the libraries' bars then)."""
    p = plan_run(opts)
    for task in p.tasks:
        if task not in p.pending:
            print(f"skip {task}: {p.records[task]} is done (--force reruns it)")
    if p.pending:
        if started is not None:
            started()
        _prune_and_evaluate(opts, p)
    return [summary_row(load_record(p.records[t]) or {}, t, t in p.pending) for t in p.tasks]


def _prune_and_evaluate(opts: RunOptions, p: RunPlan) -> None:
    from harness.cache import ensure_artifact
    from harness.wrappers.common import EmptyAnswers

    device = opts.device
    artifact, reused, prune_s = ensure_artifact(opts.artifacts, p.key, p.key_inputs, p.spec, p.recipe, device)
    artifact = artifact.resolve()
    print(f"{'reusing' if reused else 'wrote'} artifact {artifact}" + ("" if reused else f" ({prune_s:.1f}s)"))
    with tamp_errors():
        info = read_pruning_json(artifact, PER_MATRIX)
    if reused:
        prune_s = float(info.get("timings", {}).get("total_before_save", 0.0))
    args = model_args(artifact, p.key, opts.max_empty_fraction)
    batch = opts.batch_size or _auto_batch(artifact, device)
    print(f"batch size {batch}" + ("" if opts.batch_size else " (chosen from the model and device; --batch-size "
                                   "overrides)"), flush=True)
    tm = task_manager(p.spec.wrapper)
    lm, load_s = None, 0.0
    for task in p.pending:
        start = time.perf_counter()
        try:
            if opts.gpus > 1:

                result = evaluate_with_accelerate(opts.gpus, p.spec.wrapper, args, task, opts.limit,
                                                  p.records[task].parent / f".{task}.lmms-eval", batch)
            else:

                if lm is None:
                    lm = load_wrapper(p.spec.wrapper, args, device, batch)  # the wrapper resolves "auto"
                    load_s = time.perf_counter() - start
                    served = int(getattr(lm, "batch_size", batch) or batch)
                    if served != batch:  # a wrapper that answers one question at a time (SmolVLM's): say so, record it
                        print(f"batch size {served}: {p.spec.wrapper} answers {served} question(s) per call",
                              flush=True)
                        batch = served
                    start = time.perf_counter()
                lm.take_cost()  # start this task's cost axis afresh
                result = evaluate_in_process(lm, task, opts.limit, tm, batch)
        except ArtifactRefused as exc:  # damage the cache's file manifest could not see (or an uncached edit)
            raise HarnessError(f"{exc.reason}; delete {artifact} and run the same command again to prune it "
                               "afresh") from None
        except EmptyAnswers as exc:
            raise EvaluationError(str(exc)) from None
        eval_s = time.perf_counter() - start
        cost = result.get("cost") if opts.gpus > 1 else lm.take_cost() if lm is not None else None
        samples = result.get("samples") or {}
        speed = throughput(samples, eval_s, batch)
        if cost is not None:  # the table's cost columns read the throughput beside the measured cost
            cost = {**cost, "questions_per_s": speed["questions_per_s"]}
        types = {leaf: output_type(leaf, tm) for leaf in samples}
        empties = empty_answers(samples, types)
        if empties and empties["empty"] / empties["total"] > opts.max_empty_fraction:
            raise EvaluationError(f"{empties['empty']} of {empties['total']} answers to task '{task}' are empty; "
                                  "the model or its wrapper fails to generate (see the log above)")
        results = result.get("results", {})
        metrics = results.get(task) or (result.get("groups") or {}).get(task) or {}
        record = {
            "schema": SCHEMA,
            "artifact_key": p.key,
            "model": {"name": p.spec.name, "source": p.spec.source, "family": p.spec.family,
                      "wrapper": p.spec.wrapper, "build": model_build(p.key_inputs.get("model"))},
            "method": p.method, "sparsity": p.recipe.sparsity, "pattern": p.recipe.pattern, "task": task,
            "limit": opts.limit,
            "metrics": metrics,
            "results": results,
            "groups": result.get("groups"),
            "n_samples": result.get("n-samples"),
            "higher_is_better": result.get("higher_is_better"),
            "task_versions": result.get("versions"),
            "lmms_eval_config": result.get("config"),
            "samples_file": samples_path(p.records[task]).name,
            "empty_answers": empties,
            "artifact": {"path": str(artifact), "reused": reused, "cache_inputs": p.key_inputs, "model_args": args},
            "pruning": info,
            "timings": {"prune_s": prune_s, "prune_reused": reused, "model_load_s": load_s, "eval_s": eval_s},
            "batch_size": batch,
            "throughput": speed,
            "cost": cost,
            "transform": p.recipe.token.to_dict() if p.recipe.token is not None else None,
            "versions": versions(),
            "git_commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": opts.command or sys.argv,
            "gpus": opts.gpus,
        }
        write_jsonl(samples_path(p.records[task]), sample_rows(samples))
        write_json(p.records[task], record)
        metric, value = headline(metrics)
        print(f"done {task}: {metric} = {value} ({eval_s:.1f}s) -> {p.records[task]}", flush=True)


def _auto_batch(artifact: Path, device: str) -> int:
    """The batch size for this artifact on this run's device (harness.evaluate.default_batch_size)."""
    import json

    from tamp.devices import choose_device

    try:
        config = json.loads((artifact / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    with tamp_errors():
        return default_batch_size(config, choose_device(device, per_process=True), weight_bytes=weight_bytes(artifact))


def throughput(samples: dict[str, list[Any]], eval_s: float, batch: int) -> dict[str, Any]:
    """Evaluation questions answered per second of the task's evaluation (data loading and scoring included)."""
    questions = sum(len(rows) for rows in samples.values())
    return {"questions": questions, "eval_s": eval_s, "batch_size": batch,
            "questions_per_s": questions / eval_s if eval_s > 0 else None}


def summary_row(record: dict[str, Any], task: str, ran: bool) -> dict[str, Any]:
    metric, value = headline(record.get("metrics") or {})
    empties = record.get("empty_answers")
    return {"model": (record.get("model") or {}).get("name"), "method": record.get("method"),
            "sparsity": record.get("sparsity"), "pattern": record.get("pattern"), "task": task, "metric": metric,
            "value": value, "empty": f"{empties['empty']}/{empties['total']}" if empties else "-",
            "status": "ran" if ran else "cached"}
