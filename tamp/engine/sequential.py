"""Layer-by-layer pruning: capture block 0's inputs once, then per block gather statistics, prune, re-run.

Each block runs twice over the calibration set (statistics, then the pruned block to produce the next
block's inputs), so the cost grows linearly with depth. Allocations that need dense-model statistics
(OWL, DAS) use `sweep` with an observer: one pass per block, no pruning. In offload mode only the current
block lives on the accelerator; captured activations stay there (they are what every block needs next).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from tamp.config import PruneConfig
from tamp.engine.attention import capture_last_row_attention
from tamp.engine.capture import Captured, capture_block_inputs, run_block
from tamp.engine.stats import StatsCollector, TokenSelector
from tamp.models.adapters import ModelAdapter, Stack, prunable_linears
from tamp.scoring import NEEDS_STATS, prune_weight


@dataclass
class EngineResult:
    """What the engine did: the sparsity it aimed at per matrix, phase timings and notes."""

    targets: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    warnings: list[str] = field(default_factory=list)
    token_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    details: dict[str, Any] = field(default_factory=dict)


class PhaseTimer:
    """Accumulates wall time per phase; synchronises CUDA so GPU work is charged to the right phase."""

    def __init__(self, timings: dict[str, float], device: torch.device) -> None:
        self.timings, self.device = timings, device

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.timings[phase] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class Context:
    """Everything an allocation or selector may need about the run in progress."""

    model: nn.Module
    adapter: ModelAdapter
    stacks: list[Stack]
    linears: dict[str, nn.Linear]  # full name -> module, every matrix to prune
    batches: list[dict[str, torch.Tensor]]
    cfg: PruneConfig
    device: torch.device
    offload: bool
    result: EngineResult
    timer: PhaseTimer


def matrices_to_prune(model: nn.Module, stacks: list[Stack]) -> dict[str, nn.Linear]:
    """Full module name -> linear, for every linear inside every block of the stacks."""
    out: dict[str, nn.Linear] = {}
    for stack in stacks:
        for i, layer in enumerate(stack.layers):
            for name, mod in prunable_linears(layer).items():
                out[f"{stack.name}.{i}.{name}"] = mod
    return out


def _place_for_capture(model: nn.Module, stack: Stack, device: torch.device, offload: bool) -> None:
    """Offload mode: everything but the stack's blocks goes to the device (embeddings, vision tower ...)."""
    if not offload:
        return
    blocks = {id(m) for m in stack.layers}
    for module in model.modules():
        if id(module) in blocks:
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(device)
        for b_name, b in module.named_buffers(recurse=False):
            module._buffers[b_name] = b.to(device)
    for layer in stack.layers:
        layer.to("cpu")


# (block index, block, captured items) -> None; must leave the block's outputs in item.hidden
BlockFn = Callable[[int, nn.Module, list[Captured]], None]


def sweep(ctx: Context, stack: Stack, on_block: BlockFn, desc: str) -> None:
    """Capture the stack's inputs, then call `on_block` for each block in order (the one sequential loop)."""
    with ctx.timer("capture"):
        _place_for_capture(ctx.model, stack, ctx.device, ctx.offload)
        masks_fn = (lambda b: ctx.adapter.token_masks(b["input_ids"])) if stack.is_language_model else None
        items = capture_block_inputs(ctx.adapter.runner(ctx.model), stack.layers[0], ctx.batches, ctx.device,
                                     ctx.device, masks_fn,
                                     desc=f"capture {stack.name}")
        if ctx.offload:
            ctx.model.to("cpu")
    for i, layer in enumerate(tqdm(stack.layers, desc=desc, unit="block")):
        if ctx.offload:
            layer.to(ctx.device)
        on_block(i, layer, items)
        if ctx.offload:
            layer.to("cpu")
    del items


def prune_model(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: list[dict[str, torch.Tensor]],
    cfg: PruneConfig,
    device: torch.device | str = "cpu",
    offload: bool = False,
) -> EngineResult:
    """Prune `model` in place with `cfg`; returns the per-matrix targets and timings."""
    from tamp.allocation import get_allocator
    from tamp.selection import make_selector

    device = torch.device(device)
    stacks = adapter.stacks(model, cfg.prune_vision)
    result = EngineResult()
    ctx = Context(model, adapter, stacks, matrices_to_prune(model, stacks), batches, cfg, device, offload,
                  result, PhaseTimer(result.timings, device))
    if cfg.sparsity == 0.0 and cfg.nm is None:
        result.targets = {name: 0.0 for name in ctx.linears}
        return result
    if not offload:
        model.to(device)
    if cfg.nm is not None:
        result.targets = {name: cfg.nm[0] / cfg.nm[1] for name in ctx.linears}
    else:
        with ctx.timer("allocation"):
            result.targets = get_allocator(cfg.allocation)(ctx)
    selector = make_selector(cfg, result)
    need_sq, need_hessian = NEEDS_STATS[cfg.scoring]
    if not (need_sq or need_hessian) and selector is None:
        # data-free scoring (magnitude): no activations needed at all
        with ctx.timer("masks"), torch.no_grad():
            for name, mod in tqdm(ctx.linears.items(), desc="prune (magnitude)", leave=False):
                w = mod.weight.data
                mod.weight.data = prune_weight(w.to(device), None, result.targets[name], cfg).to(w.device)
        return result
    for stack in stacks:
        use_selector = selector if stack.is_language_model else None
        if stack.is_language_model:
            _count_tokens(ctx, stack)
        sweep(ctx, stack, lambda i, layer, items, s=stack, sel=use_selector: _prune_block(ctx, s, i, layer, items, sel),
              desc=f"prune {stack.name}")
    if offload:
        model.to("cpu")
    return result


def _count_tokens(ctx: Context, stack: Stack) -> None:
    """Tokens per modality over the calibration set, and in how many samples each modality occurs (a modality
    with fewer than two tokens in a sample has no within-modality diversity term there)."""
    samples = ctx.result.details.setdefault("samples_with_modality", {})
    for batch in ctx.batches:
        if "input_ids" in batch:
            for modality, mask in ctx.adapter.token_masks(batch["input_ids"]).items():
                ctx.result.token_counts[modality] += int(mask.sum())
                samples[modality] = samples.get(modality, 0) + int(mask.any(dim=-1).sum())


def _prune_block(ctx: Context, stack: Stack, i: int, layer: nn.Module, items: list[Captured],
                 selector: TokenSelector | None) -> None:
    cfg, device, timer = ctx.cfg, ctx.device, ctx.timer
    need_sq, need_hessian = NEEDS_STATS[cfg.scoring]
    if selector is not None and not need_sq and not need_hessian:
        need_sq = True  # token selection feeds Wanda's statistic
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
            mod.weight.data = prune_weight(mod.weight.data, collector.result(name), ctx.result.targets[full], cfg)
    del collector
    with timer("rerun"), torch.inference_mode():
        for item in items:
            item.hidden = run_block(layer, item, device)
