"""Layer-by-layer pruning: capture block 0's inputs once, then per block gather statistics, prune, re-run.

Each block runs twice over the calibration set (statistics, then the pruned block to produce the next
block's inputs), so the cost grows linearly with depth. In offload mode only the current block lives on
the accelerator; captured activations stay there (they are what every block needs next).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from tamp.allocation import ALLOCATORS
from tamp.config import PruneConfig
from tamp.engine.capture import Captured, capture_block_inputs, run_block
from tamp.engine.stats import StatsCollector, TokenSelector
from tamp.models.adapters import ModelAdapter, Stack, prunable_linears
from tamp.scoring import NEEDS_STATS, prune_weight


@dataclass
class EngineResult:
    """What the engine did: the sparsity it aimed at per matrix, phase timings and notes."""

    targets: dict[str, float]
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    warnings: list[str] = field(default_factory=list)
    token_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


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


def prune_model(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: list[dict[str, torch.Tensor]],
    cfg: PruneConfig,
    device: torch.device | str = "cpu",
    offload: bool = False,
    selector: TokenSelector | None = None,
) -> EngineResult:
    """Prune `model` in place with `cfg`; returns the per-matrix targets and timings."""
    device = torch.device(device)
    stacks = adapter.stacks(model, cfg.prune_vision)
    linears = matrices_to_prune(model, stacks)
    numels = {name: mod.weight.numel() for name, mod in linears.items()}
    targets = ALLOCATORS[cfg.allocation](cfg, numels)
    result = EngineResult(targets=targets)
    timer = PhaseTimer(result.timings, device)
    if cfg.sparsity == 0.0 and cfg.nm is None:
        return result
    need_sq, need_hessian = NEEDS_STATS[cfg.scoring]
    if not (need_sq or need_hessian) and selector is None:
        # data-free scoring (magnitude): no activations needed at all
        with timer("masks"):
            for name, mod in tqdm(linears.items(), desc="prune (magnitude)", leave=False):
                w = mod.weight.data
                mod.weight.data = prune_weight(w.to(device), None, targets[name], cfg).to(w.device)
        return result
    if not offload:
        model.to(device)
    for stack in stacks:
        _prune_stack(model, adapter, stack, batches, cfg, device, offload, selector, targets, result, timer)
    if offload:
        model.to("cpu")
    return result


def _prune_stack(
    model: nn.Module,
    adapter: ModelAdapter,
    stack: Stack,
    batches: list[dict[str, torch.Tensor]],
    cfg: PruneConfig,
    device: torch.device,
    offload: bool,
    selector: TokenSelector | None,
    targets: dict[str, float],
    result: EngineResult,
    timer: PhaseTimer,
) -> None:
    need_sq, need_hessian = NEEDS_STATS[cfg.scoring]
    with timer("capture"):
        _place_for_capture(model, stack, device, offload)
        masks_fn = (lambda b: adapter.token_masks(b["input_ids"])) if stack.is_language_model else None
        items = capture_block_inputs(model, stack.layers[0], batches, device, device, masks_fn,
                                     desc=f"capture {stack.name}")
        if offload:
            model.to("cpu")
    if stack.is_language_model:
        for item in items:
            for modality, mask in item.token_masks.items():
                result.token_counts[modality] += int(mask.sum())
    for i, layer in enumerate(tqdm(stack.layers, desc=f"prune {stack.name}", unit="block")):
        if offload:
            layer.to(device)
        linears = prunable_linears(layer)
        with timer("statistics"), torch.inference_mode():
            collector = StatsCollector(linears, need_sq, need_hessian, selector)
            try:
                for item in items:
                    collector.next_batch()
                    run_block(layer, item, device)
            finally:
                collector.remove()
        with timer("masks"), torch.no_grad():
            for name, mod in linears.items():
                full = f"{stack.name}.{i}.{name}"
                mod.weight.data = prune_weight(mod.weight.data, collector.result(name), targets[full], cfg)
        del collector
        with timer("rerun"), torch.inference_mode():
            for item in items:
                item.hidden = run_block(layer, item, device)
        if offload:
            layer.to("cpu")
    del items
