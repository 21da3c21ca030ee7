"""Pure tensor functions of the pruning algorithms (no model or I/O code here)."""

from .masks import (
    apply_mask,
    check_nm,
    check_sparsity,
    magnitude_mask,
    nm_mask,
    parse_pattern,
    row_mask,
    wanda_scores,
)
from .sparsegpt import add_to_hessian, sparsegpt_prune

__all__ = [
    "add_to_hessian",
    "apply_mask",
    "check_nm",
    "check_sparsity",
    "magnitude_mask",
    "nm_mask",
    "parse_pattern",
    "row_mask",
    "sparsegpt_prune",
    "wanda_scores",
]
