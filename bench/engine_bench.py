"""Sections 2 and 3: tamp's sequential engine against a naive O(L^2) capture, and whole prunes on SmolLM2-135M.

Section 2 (engine vs naive): tamp's `prune_model` (Wanda) against a straightforward implementation that, for
each decoder layer, runs the *whole* model over every calibration batch with hooks on that layer's linears,
then prunes the layer (so later layers see earlier layers pruned, like the sequential engine). Same scoring
and mask rule, so the masks should agree; the time differs by ~L/2 forwards.

Section 3 (whole prune vs one dense forward): the reference procedure of shared/docs/real-weights.md. The unit
is one dense forward pass (full model, lm_head included) over the 32 x 256 calibration tokens in batches of 8;
every prune is reported as a multiple of it, with its per-phase engine timings and the perplexity it leaves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import Phase, measured, repeat

LICENSES = Path("/usr/share/common-licenses")
CALIB_FILES = tuple(LICENSES / n for n in ("GPL-2", "LGPL-2.1", "MPL-2.0", "Apache-2.0"))
EVAL_FILES = tuple(LICENSES / n for n in ("GPL-3", "GFDL-1.3"))
CALIB_SPEC = "text:" + ",".join(str(p) for p in CALIB_FILES)
BATCH_SIZE = 8
# Whole prune / dense forward on the same machine: the brief's targets, and llm-compressor 0.14's figures
# from shared/docs/real-weights.md (dense 11.6 s, Wanda 28.4 s, SparseGPT 63.7 s on 2 cores).
TARGETS = {"wanda": 2.0, "sparsegpt": 4.0}
LLMCOMPRESSOR_REFERENCE = {"dense_forward_s": 11.6, "wanda_s": 28.4, "sparsegpt_s": 63.7,
                           "wanda_ratio": 28.4 / 11.6, "sparsegpt_ratio": 63.7 / 11.6,
                           "source": "shared/docs/real-weights.md (llm-compressor 0.14, median of 3, 2 cores)"}
REFERENCE_PPL = {"dense": 26.02, "wanda": 53.89, "sparsegpt": 39.99}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def text_batches(ids: torch.Tensor, batch_size: int = BATCH_SIZE) -> list[dict[str, torch.Tensor]]:
    """(N, L) token ids -> model-input batches of `batch_size` equal-length segments (as `tamp prune` does)."""
    return [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in ids.split(batch_size)]


def dense_forward(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device) -> None:
    """One full forward pass (lm_head included) over every batch; the unit every prune is compared with."""
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  use_cache=False)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pruned_masks(linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    return {name: (mod.weight.detach() == 0).cpu() for name, mod in linears.items()}


def compare_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Whether two pruning results zero the same weights, and the share of entries on which they agree."""
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    total = sum(a[n].numel() for n in a)
    differing = [n for n in a if not torch.equal(a[n], b[n])]
    return {"masks_identical": not differing, "mask_agreement": same / max(total, 1),
            "matrices_differing": len(differing), "first_differing": differing[:3]}


def sparsity_of(linears: dict[str, nn.Linear]) -> float:
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    return zeros / max(1, sum(m.weight.numel() for m in linears.values()))


def _scalars(details: dict[str, Any]) -> dict[str, Any]:
    """The engine's scalar details (token counts ...); bulky per-matrix dicts stay out of the JSON."""
    return {k: v for k, v in details.items() if isinstance(v, (int, float, str, bool))}


# ---------------------------------------------------------------------------------------------------------------------
# Section 2: the naive O(L^2) capture
# ---------------------------------------------------------------------------------------------------------------------


def naive_wanda(model: nn.Module, adapter: Any, batches: Sequence[dict[str, torch.Tensor]], sparsity: float,
                device: torch.device) -> None:
    """Wanda, layer by layer, with a full model forward over all batches per layer (O(L^2) block runs)."""
    from tamp.algorithms.masks import row_mask, wanda_scores
    from tamp.models.adapters import prunable_linears

    stack = adapter.language_stack(model)
    model.to(device)
    for layer in stack.layers:
        linears = prunable_linears(layer)
        col_sq: dict[str, torch.Tensor] = {}

        def hook(name: str, col_sq: dict[str, torch.Tensor] = col_sq):
            def fn(_mod: nn.Module, args: tuple, _out: torch.Tensor) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                sq = (x * x).sum(0)
                col_sq[name] = col_sq[name] + sq if name in col_sq else sq
            return fn

        handles = [mod.register_forward_hook(hook(name)) for name, mod in linears.items()]
        try:
            dense_forward(model, batches, device)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            for name, mod in linears.items():
                mask = row_mask(wanda_scores(mod.weight.data, col_sq[name]), sparsity)
                mod.weight.data = mod.weight.data.masked_fill(mask, 0)


def engine_vs_naive(model: nn.Module, adapter: Any, batches: list[dict[str, torch.Tensor]], label: str,
                    device: torch.device, sparsity: float = 0.5) -> list[Phase]:
    """Time tamp's Wanda and the naive capture on the same model and data; restores the dense weights after."""
    from tamp.engine.context import matrices_to_prune
    from tamp.engine.sequential import prune_model
    from tamp.recipe import resolve_parts, weight_config

    section = "engine-vs-naive"
    stacks = adapter.stacks(model, False)
    linears = matrices_to_prune(model, stacks)
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    common = {"model": label, "layers": len(stacks[0].layers), "tokens": tokens, "batches": len(batches)}
    state = clone_state(model)
    cfg = weight_config("wanda", sparsity=sparsity, calib="bench", nsamples=max(1, tokens), seqlen=2)

    engine = Phase(section, f"tamp Wanda       {label}", details=dict(common))
    with measured(engine, device):
        result = prune_model(model, adapter, batches, cfg, resolve_parts(cfg), device)
        engine.details["engine_timings"] = dict(result.timings)
    masks_engine = pruned_masks(linears) if engine.status == "ok" else None
    model.load_state_dict(state)

    naive = Phase(section, f"naive full-fwd/layer {label}", details=dict(common))
    with measured(naive, device):
        naive_wanda(model, adapter, batches, sparsity, device)
    masks_naive = pruned_masks(linears) if naive.status == "ok" else None
    model.load_state_dict(state)

    if masks_engine is not None and masks_naive is not None:
        cmp = compare_masks(masks_engine, masks_naive)
        engine.details.update(cmp)
        naive.details.update(cmp)
    naive.set_ratio(engine.wall_s, "tamp Wanda")
    return [engine, naive]


def tiny_model(family: str = "llama", root: Path | None = None) -> tuple[nn.Module, Any, int]:
    """A tiny random model from tamp.testing.tiny (built into `root` or a temporary folder); returns model, adapter, vocab."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from tamp.models.adapters import get_adapter
    from tamp.testing.tiny import build_tiny

    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="tamp-bench-"))
    path = build_tiny(family, root / f"tiny-{family}", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, get_adapter(model), int(model.config.vocab_size)


def random_batches(vocab: int, samples: int, seqlen: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return text_batches(torch.randint(3, vocab, (samples, seqlen), generator=g))


def run_tiny(device: torch.device, samples: int = 16, seqlen: int = 64, root: Path | None = None) -> list[Phase]:
    """Section 2 on tamp's tiny llama (4 layers): cheap enough for the smoke test."""
    model, adapter, vocab = tiny_model("llama", root)
    return engine_vs_naive(model, adapter, random_batches(vocab, samples, seqlen), "tiny-llama", device)


# ---------------------------------------------------------------------------------------------------------------------
# Section 3: SmolLM2-135M
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SmolLM2:
    """The loaded real model and everything the SmolLM2 phases (ours and the peers') share."""

    model: nn.Module
    tokenizer: Any
    adapter: Any
    ids: torch.Tensor  # (32, 256) calibration segments
    batches: list[dict[str, torch.Tensor]]
    dense_state: dict[str, torch.Tensor]
    device: torch.device
    dense_forward_s: float | None = None
    dense_ppl: float | None = None
    eval_ppl: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def restore(self) -> None:
        self.model.load_state_dict(self.dense_state)

    def perplexity(self, model: nn.Module | None = None) -> tuple[float, float]:
        """(perplexity on GPL-3 + GFDL-1.3, seconds it took)."""
        from tamp.eval.perplexity import perplexity

        start = time.perf_counter()
        ppl = perplexity(model if model is not None else self.model, self.tokenizer, EVAL_FILES, seqlen=256,
                         batch_size=BATCH_SIZE, device=self.device)
        return ppl, time.perf_counter() - start


def load_smollm2(device: torch.device, nsamples: int = 32, seqlen: int = 256) -> tuple[SmolLM2 | None, Phase]:
    """Load SmolLM2 and cut the calibration segments; (None, skipped phase) when the weights are not installed."""
    from tamp.calibration.text import text_segments
    from tamp.models.adapters import get_adapter
    from tamp.models.loading import load_model

    phase = Phase("smollm2", "load SmolLM2-135M (GGUF -> fp32)")
    ctx = None
    with measured(phase, device):
        loaded = load_model("smollm2", dtype="float32")
        model = loaded.model.to(device).eval()
        ids = text_segments(loaded.tokenizer, CALIB_FILES, nsamples, seqlen)
        ctx = SmolLM2(model, loaded.tokenizer, get_adapter(model), ids, text_batches(ids), clone_state(model), device)
        phase.details.update({"calibration": f"{nsamples} x {seqlen} tokens of " + ", ".join(p.name for p in CALIB_FILES),
                              "params": sum(p.numel() for p in model.parameters())})
    if phase.status == "error":
        phase.status = "skipped"
        phase.reason = f"SmolLM2 not available ({phase.reason}); install it with `make install`"
        return None, phase
    return ctx, phase


def run_dense(ctx: SmolLM2, repeats: int) -> list[Phase]:
    """Dense perplexity (also the warm-up) and the unit: median dense forward over the calibration tokens."""
    phases = []
    if ctx.eval_ppl:
        ppl_phase = Phase("smollm2", "dense perplexity (GPL-3 + GFDL-1.3)")
        with measured(ppl_phase, ctx.device):
            ctx.dense_ppl, _ = ctx.perplexity()
            ppl_phase.details.update({"ppl": ctx.dense_ppl, "reference_ppl": REFERENCE_PPL["dense"]})
        phases.append(ppl_phase)
    unit = Phase("smollm2", "UNIT dense forward 32x256 (bs 8)",
                 details={"what": "model(x) incl. lm_head over the calibration tokens, batches of 8"})
    with measured(unit, ctx.device, record_time=False):
        times, _ = repeat(lambda: dense_forward(ctx.model, ctx.batches, ctx.device), repeats, ctx.device,
                          warmup=0 if ctx.eval_ppl else 1)
        unit.times_s, unit.wall_s = times, statistics.median(times)
        ctx.dense_forward_s = unit.wall_s
    unit.ratio, unit.ratio_to = 1.0, "dense forward"
    phases.append(unit)
    return phases


class LayerProgress:
    """Forward pre-hooks on the decoder layers: when each engine sweep first reaches each layer."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.n = len(layers)
        self.sweep_starts: list[float] = []
        self.reached: list[dict[int, float]] = []  # per sweep: layer index -> first time it ran
        self._last: int | None = None
        self._handles = [layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def fn(_mod: nn.Module, _args: tuple) -> None:
            now = time.perf_counter()
            if self._last is None or i < self._last:
                self.sweep_starts.append(now)
                self.reached.append({})
            self.reached[-1].setdefault(i, now)
            self._last = i
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def estimate_total(self, start: float, sweeps_expected: int) -> dict[str, Any]:
        """Where the engine was, and the whole prune's time extrapolated from the last sweep's per-layer rate."""
        out: dict[str, Any] = {"sweeps_started": len(self.sweep_starts), "sweeps_expected": sweeps_expected,
                               "layers": self.n}
        if not self.reached:
            return out
        last = self.reached[-1]
        done = max(last) if last else 0  # layers completed in the current sweep (the highest one is running)
        out["layers_done_in_current_sweep"] = done
        out["current_sweep_started_s"] = self.sweep_starts[-1] - start
        if done >= 1:
            sweep_start = self.sweep_starts[-1]
            per_layer = (last[done] - sweep_start) / done
            out["per_layer_s"] = per_layer
            out["current_sweep_estimated_s"] = per_layer * self.n
            if len(self.sweep_starts) == sweeps_expected:
                out["estimated_total_s"] = (sweep_start - start) + per_layer * self.n
        return out


def _recording_result_class() -> type:
    """An EngineResult subclass that remembers its instances, so a time-limited prune keeps its phase timings."""
    from tamp.engine.context import EngineResult

    class Recording(EngineResult):
        instances: list[EngineResult] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            Recording.instances.append(self)

    return Recording


def run_method(ctx: SmolLM2, method: str, repeats: int = 1, limit_s: float | None = None,
               adjacent_unit: bool = False) -> Phase:
    """Prune a fresh copy of the dense weights with a tamp preset at 50%; time, per-phase timings, perplexity.

    With `limit_s`, a prune still running after that many seconds is stopped: the phase is `partial`, with the
    engine timings so far and the total extrapolated from the per-layer rate of the last sweep. With
    `adjacent_unit`, one more dense forward right before the prune gives `ratio_adjacent` (robust to load drift).
    """
    from unittest import mock

    from bench.common import TimeLimit, time_limit
    from tamp.engine import sequential
    from tamp.engine.context import matrices_to_prune
    from tamp.engine.sequential import prune_model
    from tamp.recipe import build_recipe, compose

    weight, _, quantizer = compose(method)
    sparsity = 0.0 if weight == "dense" else 0.5  # a quantizer alone rounds the dense model
    recipe = build_recipe(method, sparsity, calib=CALIB_SPEC, nsamples=int(ctx.ids.shape[0]),
                          seqlen=int(ctx.ids.shape[1]), seed=0)
    cfg, quant = recipe.weight, recipe.quant.step() if recipe.quant is not None else None
    sweeps_expected = 1 + int(cfg.allocation in ("owl", "das"))
    phase = Phase("smollm2", f"tamp {method}" + (" 50%" if sparsity else ""), details={"preset": method})
    linears = matrices_to_prune(ctx.model, ctx.adapter.stacks(ctx.model, False))
    result = None
    recording = _recording_result_class()
    if adjacent_unit:
        ctx.restore()
        start = time.perf_counter()
        dense_forward(ctx.model, ctx.batches, ctx.device)
        phase.details["dense_forward_adjacent_s"] = time.perf_counter() - start
    for _ in range(max(1, repeats)):
        ctx.restore()
        progress = LayerProgress(ctx.adapter.language_stack(ctx.model).layers)
        start = time.perf_counter()
        try:
            with measured(phase, ctx.device), mock.patch.object(sequential, "EngineResult", recording):
                try:
                    with time_limit(limit_s):
                        result = prune_model(ctx.model, ctx.adapter, ctx.batches, cfg, recipe.parts, ctx.device,
                                             quant=quant)
                except TimeLimit as exc:
                    phase.status, phase.reason = "partial", f"stopped at the {limit_s:g} s limit ({exc})"
                    result = recording.instances[-1] if recording.instances else None
                    phase.details.update(progress.estimate_total(start, sweeps_expected))
                    phase.details["elapsed_s"] = time.perf_counter() - start
        finally:
            progress.remove()
        if phase.status != "ok":
            break
    if phase.status == "partial":
        phase.times_s, phase.wall_s = [], None
    if phase.status in ("ok", "partial") and result is not None:
        timings = {k: round(v, 4) for k, v in result.timings.items()}
        phase.details["engine_timings"] = timings
        if phase.wall_s:
            phase.details["unattributed_s"] = phase.wall_s - sum(result.timings.values())
        if ctx.dense_forward_s:
            phase.details["engine_timings_x_forward"] = {k: v / ctx.dense_forward_s for k, v in timings.items()}
        phase.details.update(_scalars(result.details))
    if phase.status == "ok":
        phase.details["sparsity"] = sparsity_of(linears)
        phase.set_ratio(ctx.dense_forward_s, "dense forward", TARGETS.get(method))
        if phase.details.get("dense_forward_adjacent_s") and phase.wall_s:
            phase.details["ratio_adjacent"] = phase.wall_s / phase.details["dense_forward_adjacent_s"]
        if ctx.eval_ppl:
            ppl, secs = ctx.perplexity()
            phase.details.update({"ppl": ppl, "ppl_s": secs})
            if method in REFERENCE_PPL:
                phase.details["reference_ppl"] = REFERENCE_PPL[method]
    elif phase.status == "partial" and ctx.dense_forward_s and phase.details.get("estimated_total_s"):
        phase.ratio = phase.details["estimated_total_s"] / ctx.dense_forward_s
        phase.ratio_to = "dense forward (estimated)"
    ctx.restore()
    return phase


def run_smollm2_naive(ctx: SmolLM2, samples: int = 2, seqlen: int = 64) -> list[Phase]:
    """Section 2 on the real SmolLM2 (30 layers) with a reduced calibration so the O(L^2) side stays cheap."""
    ids = ctx.ids[:samples, :seqlen].clone()
    phases = engine_vs_naive(ctx.model, ctx.adapter, text_batches(ids), f"SmolLM2 {samples}x{seqlen}", ctx.device)
    ctx.restore()
    return phases
