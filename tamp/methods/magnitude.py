"""Magnitude pruning: zero the smallest |W| of each matrix (layer-wise), or of each N:M group. Needs no data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tamp.algorithms.masks import magnitude_mask, nm_mask
from tamp.engine.stats import InputStats
from tamp.methods.base import Scoring, WeightMethod

if TYPE_CHECKING:
    from tamp.config import PruneConfig


def prune_matrix(weight: torch.Tensor, stats: InputStats | None, sparsity: float, cfg: PruneConfig) -> torch.Tensor:
    nm = cfg.nm
    scores = weight.abs().float()
    mask = nm_mask(scores, *nm) if nm is not None else magnitude_mask(weight, sparsity)
    return weight.masked_fill(mask, 0)


METHOD = WeightMethod(
    name="magnitude", label="Magnitude", order=1, summary="smallest |W| per matrix; data-free",
    scoring="magnitude", score=Scoring(prune_matrix),
)
