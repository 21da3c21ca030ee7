"""SparseGPT: OBS-style pruning with weight reconstruction from the inputs' Hessian X^T X (reference:
128-column lazy blocks, 1% dampening)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tamp.algorithms.sparsegpt import sparsegpt_prune
from tamp.engine.stats import InputStats
from tamp.methods.base import Needs, Param, Scoring, WeightMethod

if TYPE_CHECKING:
    from tamp.config import PruneConfig


def prune_matrix(weight: torch.Tensor, stats: InputStats | None, sparsity: float, cfg: PruneConfig) -> torch.Tensor:
    assert stats is not None and stats.hessian is not None
    n, m = cfg.nm if cfg.nm is not None else (0, 0)
    new_weight, _ = sparsegpt_prune(weight, stats.hessian, sparsity, n=n, m=m,
                                    blocksize=cfg.param("blocksize"), percdamp=cfg.param("percdamp"))
    return new_weight


def _block_fits_pattern(cfg: PruneConfig) -> str | None:
    blocksize = cfg.param("blocksize")
    if cfg.nm is not None and blocksize % cfg.nm[1]:
        return (f"--blocksize {blocksize} must be a multiple of {cfg.nm[1]} for the {cfg.pattern} pattern "
                "(SparseGPT must not split an N:M group between blocks)")
    return None


PARAMS = (
    Param("blocksize", int, 128, "columns per lazy-update block",
          check=lambda v: f"--blocksize must be at least 1, got {v}" if v < 1 else None),
    # 0 leaves the Hessian of any unused input column singular, and SparseGPT's Cholesky step fails
    Param("percdamp", float, 0.01, "dampening, as a fraction of the Hessian's mean diagonal",
          check=lambda v: f"--percdamp must be positive (the reference uses 0.01), got {v}" if v <= 0 else None),
)

METHOD = WeightMethod(
    name="sparsegpt", label="SparseGPT", order=2, summary="Hessian-based pruning with weight reconstruction",
    params=PARAMS, scoring="sparsegpt", score=Scoring(prune_matrix, Needs(calibration=True, hessian=True)),
    check=_block_fits_pattern,
)
