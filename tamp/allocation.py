"""Allocations fill the per-matrix sparsity map that the engine consumes.

Each takes the engine Context and returns {full matrix name: sparsity}. Those that need statistics of
the dense model (OWL, DAS) run one observing sweep per stack before anything is pruned; ECoFLaP runs
zeroth-order loss differences on the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tamp.engine.sequential import Context

Allocation = Callable[["Context"], dict[str, float]]


def uniform(ctx: "Context") -> dict[str, float]:
    return {name: ctx.cfg.sparsity for name in ctx.linears}


def get_allocator(name: str) -> Allocation:
    """The allocation function for a config's `allocation` field (validated by PruneConfig)."""
    if name == "uniform":
        return uniform
    from tamp import allocators

    return {"owl": allocators.owl, "ecoflap": allocators.ecoflap, "das": allocators.das}[name]
