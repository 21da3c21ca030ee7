"""Turn one linear's weight + its input statistics into pruned weights, for each scoring x pattern."""

from __future__ import annotations

import torch

from tamp.algorithms.masks import magnitude_mask, nm_mask, row_mask, wanda_scores
from tamp.algorithms.sparsegpt import sparsegpt_prune
from tamp.config import PruneConfig
from tamp.engine.stats import InputStats

NEEDS_STATS = {"magnitude": (False, False), "wanda": (True, False), "sparsegpt": (False, True)}


def prune_weight(weight: torch.Tensor, stats: InputStats | None, sparsity: float, cfg: PruneConfig) -> torch.Tensor:
    """Return the pruned weight (same dtype/device). `sparsity` is this matrix's share from the allocation."""
    nm = cfg.nm
    if nm is None and sparsity <= 0.0:
        return weight
    if cfg.scoring == "sparsegpt":
        assert stats is not None and stats.hessian is not None
        n, m = nm if nm is not None else (0, 0)
        new_weight, _ = sparsegpt_prune(weight, stats.hessian, sparsity, n=n, m=m,
                                        blocksize=cfg.blocksize, percdamp=cfg.percdamp)
        return new_weight
    if cfg.scoring == "magnitude":
        scores = weight.abs().float()
        mask = nm_mask(scores, *nm) if nm is not None else magnitude_mask(weight, sparsity)
    elif cfg.scoring == "wanda":
        assert stats is not None and stats.col_sq is not None
        scores = wanda_scores(weight, stats.col_sq)
        mask = nm_mask(scores, *nm) if nm is not None else row_mask(scores, sparsity)
    else:
        raise ValueError(f"unknown scoring {cfg.scoring}")
    return weight.masked_fill(mask, 0)
