"""prune = load -> calibrate -> sequential engine -> artifact with pruning.json. Thin by design."""

from __future__ import annotations

import datetime as dt
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tamp import __version__
from tamp.artifacts import FORMAT_VERSION, git_commit, save_artifact, sparsity_report, versions, write_pruning_json
from tamp.calibration.loader import build_calibration, calibration_problems
from tamp.devices import pick_device
from tamp.engine.context import matrices_to_prune
from tamp.engine.sequential import prune_model
from tamp.errors import TampError, join_problems
from tamp.families.registry import depth, family_of
from tamp.methods.base import UNIFORM
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model, model_problem, resolve_dtype
from tamp.models.sources import disk_config
from tamp.paths import output_problem
from tamp.quant_export import QuantSpec, export_problem, load_dequantized, stored_weight_bytes, write_quantized
from tamp.quantization import SECTION as QUANT_SECTION
from tamp.recipe import Recipe, code_versions
from tamp.token_transform import SECTION as TRANSFORM_SECTION


def peak_memory(device: torch.device) -> dict[str, float]:
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _extra_files(loaded: Any, names: tuple[str, ...]) -> dict[str, Path]:
    """Resolve the adapter's extra files in the source checkpoint (local folder or Hub cache)."""
    from transformers.utils import cached_file

    found: dict[str, Path] = {}
    for name in names:
        path = cached_file(loaded.source, name, revision=loaded.revision, _raise_exceptions_for_missing_entries=False)
        if path is None:
            raise TampError(f"{loaded.source} lacks {name}, which loading the pruned model will need")
        found[name] = Path(path)
    return found


def preflight(model_name: str, recipe: Recipe, out: Path, overwrite: bool, revision: str | None = None) -> None:
    """Everything checkable before the model is loaded (output, model files, calibration data, the token method
    against the model's family and depth from its config.json), all reported at once."""

    out = Path(out)
    problems = []
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        problems.append(f"output directory {out} exists and is not empty; pass --overwrite or choose another --out")
    where = output_problem(out, directory=True)
    if where is not None:
        problems.append(f"--out {out}: {where}")
    problems.append(model_problem(model_name, revision))
    problems.append(_token_problem(model_name, recipe, revision))
    if recipe.needs_calibration:
        cfg = recipe.weight
        problems += calibration_problems(cfg.calib, cfg.nsamples, cfg.seed)
    problems = [p for p in problems if p]
    if problems:
        raise TampError(join_problems(problems))


def _token_problem(model_name: str, recipe: Recipe, revision: str | None) -> str | None:
    """The token method against the model, from its config.json when it is on disk (as `harness run` asks at plan
    time); a model not on disk yet is checked once loaded."""
    if recipe.token is None:
        return None
    config = disk_config(model_name, revision)
    family = family_of(config) if config is not None else None
    if config is None or family is None:
        return None
    return recipe.token.model_problem(family.name, depth(config), config)


def prune(model_name: str, recipe: Recipe, out: Path, device: str = "cpu", offload: bool = False,
          revision: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Prune `model_name` as `recipe` says and write the artifact to `out`; returns the pruning.json content.

    A token part changes no weight: it is recorded (pruning.json's `transform` section) for the loader."""
    cfg, transform, dtype = recipe.weight, recipe.token, recipe.dtype
    dev = pick_device(device)
    out = Path(out)

    resolve_dtype(dtype)
    preflight(model_name, recipe, out, overwrite, revision)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.backends.cuda.matmul.allow_tf32 = False  # SparseGPT reference numerics
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_model(model_name, dtype=dtype, revision=revision)
    timings["load"] = time.perf_counter() - start
    adapter = get_adapter(loaded.model)
    if transform is not None:  # a model whose config was not on disk before loading: checked now, before calibrating
        problem = transform.model_problem(adapter.family, len(adapter.language_stack(loaded.model).layers),
                                         loaded.model.config)
        if problem is not None:
            raise TampError(problem)
    if transform is not None and not transform.wants_fit():
        transform.install(loaded.model).remove()  # refused now (one line) if this model cannot run it
    calib = None
    warnings: list[str] = []
    if recipe.needs_calibration:
        t = time.perf_counter()
        calib = build_calibration(cfg.calib, loaded, cfg.nsamples, cfg.seqlen, cfg.seed)
        timings["calibration"] = time.perf_counter() - t
        warnings += calib.warnings
    if cfg.nm is not None and cfg.allocation != UNIFORM:
        warnings.append(f"pattern {cfg.pattern}: the '{cfg.allocation}' allocation cannot apply under N:M; "
                        "every matrix is pruned with the uniform N:M pattern")
    for w in warnings:
        print(f"warning: {w}")
    result = prune_model(loaded.model, adapter, calib.batches if calib else [], cfg, recipe.parts, dev, offload,
                         recipe.quant.step() if recipe.quant is not None else None)
    timings.update(result.timings)
    if transform is not None and transform.wants_fit():  # on the weights as they will be evaluated
        t = time.perf_counter()
        assert calib is not None
        transform = transform.fit(loaded.model.to(dev), calib.batches, dev)
        if offload:
            loaded.model.to("cpu")
        transform.install(loaded.model).remove()
        timings["token_fit"] = time.perf_counter() - t
    stacks = adapter.stacks(loaded.model, cfg.prune_vision)
    report = sparsity_report(matrices_to_prune(loaded.model, stacks), result.targets)
    all_params = sum(p.numel() for p in loaded.model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in loaded.model.parameters())
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "tamp_version": __version__,
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "id": loaded.model_id, "revision": revision, "family": adapter.family,
                  "from_gguf": loaded.from_gguf, "dtype": str(next(loaded.model.parameters()).dtype)},
        "config": cfg.to_dict(),
        "code_versions": code_versions(recipe),
        "calibration": None if calib is None else {
            "spec": calib.spec, "fingerprint": calib.fingerprint, "samples": calib.samples,
            "batches": len(calib.batches), "token_counts": dict(result.token_counts), **calib.details},
        "device": str(dev),
        "offload": offload,
        "sparsity": {"target": cfg.sparsity, "pattern": cfg.pattern, **report["totals"],
                     "model_params": all_params, "model_zeros": all_zeros},
        "per_matrix": report["per_matrix"],
        "engine": result.details,
        "warnings": warnings + result.warnings,
        **({TRANSFORM_SECTION: transform.to_dict()} if transform is not None else {}),
        **({QUANT_SECTION: {**recipe.quant.to_dict(), "matrices": len(result.quantized)}} if recipe.quant else {}),
        "versions": versions(),
    }
    t = time.perf_counter()
    info["timings"] = {**timings, "total_before_save": time.perf_counter() - start}
    info["peak_memory"] = peak_memory(dev)
    writer = _quantized_writer(loaded.model, recipe, result.quantized, info) if recipe.quant is not None else None
    save_artifact(loaded.model, loaded.processor, info, out, overwrite, _extra_files(loaded, adapter.extra_files),
                  writer)
    info["timings"]["save"] = time.perf_counter() - t
    # the memory axis: the weights' bytes as the artifact stores them (packed, for a quantized one) and as a model
    # loaded from it holds them (decompressed: what evaluation here runs)
    info["weight_bytes"] = {"stored": stored_weight_bytes(out),
                            "loaded": sum(p.numel() * p.element_size() for p in loaded.model.parameters())}
    write_pruning_json(out, info)
    return info


def _quantized_writer(model: torch.nn.Module, recipe: Recipe, quantized: dict[str, Any],
                      info: dict[str, Any]) -> Callable[[Path], None] | None:
    """How a quantized artifact's weights are written: a compressed-tensors checkpoint (what vLLM serves) where
    the evaluation loads one as it is; else the rounded weights in the model's dtype, with the reason recorded and
    warned (None)."""
    assert recipe.quant is not None
    params = recipe.quant.params
    spec = QuantSpec(int(params["quant_bits"]), int(params["quant_group"]), bool(params["quant_sym"]),
                     bool(params.get("gptq_act_order", False)))
    section = info[QUANT_SECTION]
    problem = export_problem(model, quantized, spec)
    if problem is not None:
        section["format"] = "dense"
        warning = f"the quantized weights are saved dense, in the model's dtype, not as compressed-tensors: {problem}"
        section["format_note"] = warning
        info["warnings"].append(warning)
        print(f"warning: {warning}")
        return None
    section["format"] = "compressed-tensors pack-quantized"

    def write(folder: Path) -> None:
        write_quantized(model, quantized, spec, folder)
        load_dequantized(folder)

    return write
