"""Wanda: score |W_ij| * ||X_j|| from the calibration inputs' column norms, prune per output row (or N:M)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tamp.algorithms.masks import nm_mask, row_mask, wanda_scores
from tamp.engine.stats import InputStats
from tamp.methods.base import Needs, Scoring, WeightMethod

if TYPE_CHECKING:
    from tamp.config import PruneConfig


def prune_matrix(weight: torch.Tensor, stats: InputStats | None, sparsity: float, cfg: PruneConfig) -> torch.Tensor:
    assert stats is not None and stats.col_sq is not None
    nm = cfg.nm
    scores = wanda_scores(weight, stats.col_sq)
    mask = nm_mask(scores, *nm) if nm is not None else row_mask(scores, sparsity)
    return weight.masked_fill(mask, 0)


METHOD = WeightMethod(
    name="wanda", label="Wanda", order=3, summary="|W| x input column norm, pruned per output row",
    scoring="wanda", score=Scoring(prune_matrix, Needs(calibration=True, col_norms=True)),
)
