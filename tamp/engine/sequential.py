"""Layer-by-layer pruning: capture block 0's inputs once, then per block gather statistics, prune, re-run.

A quantizer (QuantStep) rounds each matrix right after it is pruned, in the same pass and from the same
statistics, so the next block's inputs come from the pruned and quantized block (GPTQ's sequential order);
SparseGPT + GPTQ prune and round in SparseGPT's one pass (`Quantize.joint`).

Each block runs twice over the calibration set (statistics, then the pruned block to produce the next
block's inputs), so the cost grows linearly with depth. Allocations that need dense-model statistics run
their own observing pass (tamp.engine.block_pass) first. The method's parts arrive resolved, as hooks
(tamp.engine.parts): this package names no method and imports nothing from tamp.methods.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from tqdm.auto import tqdm

from tamp.algorithms.quantize import Quantized
from tamp.config import PruneConfig
from tamp.engine.attention import capture_last_row_attention
from tamp.engine.block_pass import run_blocks
from tamp.engine.capture import Captured, run_block
from tamp.engine.context import Context, EngineResult, PhaseTimer, matrices_to_prune
from tamp.engine.parts import Needs, Parts, QuantStep, Scoring
from tamp.engine.stats import StatsCollector, TokenSelector
from tamp.models.adapters import ModelAdapter, Stack, prunable_linears


def prune_model(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: list[dict[str, torch.Tensor]],
    cfg: PruneConfig,
    parts: Parts | None,
    device: torch.device | str = "cpu",
    offload: bool = False,
    quant: QuantStep | None = None,
) -> EngineResult:
    """Prune `model` in place with `cfg`'s composition, resolved to `parts` (None: nothing is pruned), and round
    every pruned matrix to `quant`'s grid (None: no quantization); returns the per-matrix targets and timings."""
    device = torch.device(device)
    stacks = adapter.stacks(model, cfg.prune_vision)
    result = EngineResult()
    ctx = Context(model, adapter, stacks, matrices_to_prune(model, stacks), batches, cfg, device, offload,
                  result, PhaseTimer(result.timings, device))
    if parts is not None and not cfg.prunes:
        parts = None
    if parts is None and quant is None:
        result.targets = {name: 0.0 for name in ctx.linears}
        return result
    if not offload:
        model.to(device)
    if parts is None:
        result.targets = {name: 0.0 for name in ctx.linears}
    elif cfg.nm is not None:
        result.targets = {name: cfg.nm[0] / cfg.nm[1] for name in ctx.linears}
    else:
        with ctx.timer("allocation"):
            result.targets = parts.allocation.fn(ctx) if parts.allocation is not None \
                else {name: cfg.sparsity for name in ctx.linears}
    selector = parts.selection.make(cfg) if parts is not None and parts.selection is not None else None
    needs = (parts.scoring.needs if parts is not None else Needs()) | (quant.hook.needs if quant else Needs())
    if not (needs.col_norms or needs.hessian) and selector is None:
        # data-free scoring (magnitude) and rounding (RTN): no activations needed at all
        with ctx.timer("masks"), torch.no_grad():
            for name, mod in tqdm(ctx.linears.items(), desc="prune" if parts else "quantize", leave=False):
                w = mod.weight.data
                mod.weight.data = _compress(ctx, name, parts.scoring if parts else None, quant, w.to(device), None,
                                            result.targets[name]).to(w.device)
        return result
    for stack in stacks:
        use_selector = selector if stack.is_language_model else None
        if stack.is_language_model:
            _count_tokens(ctx, stack)
        run_blocks(ctx, stack, lambda i, layer, items, s=stack, sel=use_selector:
              _prune_block(ctx, parts.scoring if parts else None, quant, needs, s, i, layer, items, sel),
              desc=f"{'prune' if parts else 'quantize'} {stack.name}")
    if offload:
        model.to("cpu")
    return result


def _prune(scoring: Scoring, weight: torch.Tensor, stats, sparsity: float, cfg: PruneConfig) -> torch.Tensor:
    """A matrix whose share of the sparsity is 0 (and no N:M pattern) is left as it is."""
    if cfg.nm is None and sparsity <= 0.0:
        return weight
    return scoring.prune(weight, stats, sparsity, cfg)


def _compress(ctx: Context, name: str, scoring: Scoring | None, quant: QuantStep | None, weight: torch.Tensor,
              stats, sparsity: float) -> torch.Tensor:
    """One matrix pruned (when a scoring is given) and rounded (when a quantizer is), in its dtype. The
    quantizer holds the pruned weights at zero; a joint quantizer prunes and rounds in the scoring's pass."""
    cfg = ctx.cfg
    prunes = scoring is not None and (cfg.nm is not None or sparsity > 0.0)
    if quant is None:
        return _prune(scoring, weight, stats, sparsity, cfg) if scoring is not None else weight
    joint = quant.hook.joint.get(cfg.scoring) if prunes else None
    if joint is not None:
        done, _ = joint(weight, stats, sparsity, cfg, quant.params)
        ctx.result.details["quantized_jointly"] = ctx.result.details.get("quantized_jointly", 0) + 1
    else:
        pruned = _prune(scoring, weight, stats, sparsity, cfg) if prunes else weight  # type: ignore[arg-type]
        done = quant.hook.fn(pruned, stats, pruned == 0 if prunes else None, quant.params)
    ctx.result.quantized[name] = Quantized(torch.empty(0), done.scale.cpu(), done.zero.cpu(), done.group.cpu(),
                                           done.codes.cpu(), done.bits)  # its fp32 weights not kept: codes say it
    return done.weight.to(weight.dtype)


def _count_tokens(ctx: Context, stack: Stack) -> None:
    """Tokens per modality over the calibration set, and in how many samples each modality occurs (a modality
    with fewer than two tokens in a sample has no within-modality diversity term there)."""
    samples = ctx.result.details.setdefault("samples_with_modality", {})
    for batch in ctx.batches:
        if "input_ids" in batch:
            for modality, mask in ctx.adapter.token_masks(batch["input_ids"]).items():
                ctx.result.token_counts[modality] += int(mask.sum())
                samples[modality] = samples.get(modality, 0) + int(mask.any(dim=-1).sum())


def _prune_block(ctx: Context, scoring: Scoring | None, quant: QuantStep | None, needs: Needs, stack: Stack, i: int,
                 layer: nn.Module, items: list[Captured], selector: TokenSelector | None) -> None:
    device, timer = ctx.device, ctx.timer
    need_sq, need_hessian = needs.col_norms, needs.hessian
    own = scoring.needs if scoring is not None else Needs()
    if selector is not None and not own.col_norms and not own.hessian:
        need_sq = True  # token selection feeds Wanda's statistic (a quantizer's Hessian comes from the same tokens)
    linears = prunable_linears(layer)
    with timer("statistics"), torch.inference_mode():
        collector = StatsCollector(linears, need_sq, need_hessian, selector)
        sink: list[torch.Tensor] = []
        attention = capture_last_row_attention(layer, sink) if selector is not None and selector.needs_attention \
            else nullcontext()
        try:
            with attention:
                for item in items:
                    collector.next_batch(item)
                    run_block(layer, item, device)
                    collector.end_batch(sink.pop() if sink else None)
        finally:
            collector.remove()
    if selector is not None:
        ctx.result.details.setdefault("selected_tokens", 0)
        ctx.result.details["selected_tokens"] += collector.selected_tokens
        ctx.result.details.setdefault("candidate_tokens", 0)
        ctx.result.details["candidate_tokens"] += collector.seen_tokens
    with timer("masks"), torch.no_grad():
        for name, mod in linears.items():
            full = f"{stack.name}.{i}.{name}"
            mod.weight.data = _compress(ctx, full, scoring, quant, mod.weight.data, collector.result(name),
                                        ctx.result.targets[full])
    del collector
    with timer("rerun"), torch.inference_mode():
        for item in items:
            item.hidden = run_block(layer, item, device)
