"""Allocations fill the per-matrix sparsity map that the engine consumes.

`uniform` gives every pruned matrix the target; later allocations (OWL, ECoFLaP, DAS) register here.
"""

from __future__ import annotations

from typing import Callable

from tamp.config import PruneConfig

# allocation name -> (config, {matrix name: numel}) -> {matrix name: sparsity}
Allocation = Callable[[PruneConfig, dict[str, int]], dict[str, float]]


def uniform(cfg: PruneConfig, numels: dict[str, int]) -> dict[str, float]:
    return {name: cfg.sparsity for name in numels}


ALLOCATORS: dict[str, Allocation] = {"uniform": uniform}
