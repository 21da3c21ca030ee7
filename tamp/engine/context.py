"""The state of one pruning run that the engine hands to every hook: model, stacks, data, config, results."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tamp.algorithms.quantize import Quantized
from tamp.models.adapters import ModelAdapter, Stack, prunable_linears

if TYPE_CHECKING:
    from tamp.config import PruneConfig


@dataclass
class EngineResult:
    """What the engine did: the sparsity it aimed at per matrix, phase timings and notes."""

    targets: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    warnings: list[str] = field(default_factory=list)
    token_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    details: dict[str, Any] = field(default_factory=dict)
    # per quantized matrix: its codes and grid (on the CPU; one byte per weight), what an export packs: the
    # weights the model holds are those rounded to its dtype, from which the codes cannot always be recovered
    # (bf16 holds no integer above 256 exactly)
    quantized: dict[str, Quantized] = field(default_factory=dict)


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


def block_names(stack: Stack, i: int, layer: nn.Module) -> list[str]:
    """Full names of the matrices to prune in block `i` of a stack."""
    return [f"{stack.name}.{i}.{name}" for name in prunable_linears(layer)]


def block_of(name: str, stacks: list[Stack]) -> str:
    """`model.layers.3.self_attn.q_proj` -> `model.layers.3` (the decoder block a matrix belongs to)."""
    for stack in stacks:
        prefix = stack.name + "."
        if name.startswith(prefix):
            return prefix + name[len(prefix):].split(".", 1)[0]
    raise KeyError(name)
