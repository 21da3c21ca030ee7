"""normpow: score |W_ij| * ||X_j||^p and prune per output row (or N:M). p = 1 is Wanda, p = 0 row-wise magnitude.

An example of a method that lives outside tamp: one Param, one scoring hook, registered through the
`tamp.methods` entry point in this package's pyproject.toml.
"""

from __future__ import annotations

import torch

from tamp.algorithms.masks import nm_mask, row_mask
from tamp.methods.base import Needs, Param, Scoring, WeightMethod


def prune_matrix(weight: torch.Tensor, stats, sparsity: float, cfg) -> torch.Tensor:
    """The engine hands over the column sums of x^2 because `needs` asks for col_norms."""
    p = cfg.param("normpow_p")  # its parameters sit under its name in cfg.params; cfg.param reads them
    scores = weight.abs().float() * stats.col_sq.sqrt().pow(p)
    mask = nm_mask(scores, *cfg.nm) if cfg.nm is not None else row_mask(scores, sparsity)
    return weight.masked_fill(mask, 0)


METHOD = WeightMethod(
    name="normpow", label="NormPow", order=50, summary="|W| x ||X||^p per output row (p = 1: Wanda)",
    params=(Param("normpow_p", float, 1.0, "exponent of the input column norm",
                  check=lambda v: f"normpow_p must be >= 0, got {v}" if v < 0 else None),),
    scoring="normpow", score=Scoring(prune_matrix, Needs(calibration=True, col_norms=True)),
)
