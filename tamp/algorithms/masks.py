"""Pure tensor functions that choose which weights to prune.

Conventions used throughout ``tamp.algorithms``:

* A Linear weight ``W`` has shape ``(d_out, d_in)``.
* A mask is a ``bool`` tensor of ``W``'s shape; ``True`` means PRUNED (set to zero).
* ``N:M`` means ``N`` entries are zeroed in every group of ``M`` consecutive *input* columns of each row.
* A sparsity ``s`` lies in ``[0, 1)``.

Ties are always broken as a stable sort would (lower index pruned first) so that masks are reproducible across runs.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from tamp.params import parse_pattern

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

__all__ = [
    "apply_mask",
    "check_nm",
    "check_sparsity",
    "magnitude_mask",
    "nm_mask",
    "parse_pattern",
    "row_mask",
    "wanda_scores",
]



def check_sparsity(sparsity: float) -> float:
    """Validate an unstructured sparsity; a bad value would silently prune nothing or everything."""
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def check_nm(n: int, m: int, d_in: int | None = None) -> None:
    """Validate an N:M pattern (and that it tiles ``d_in``), so a typo fails loudly instead of mis-pruning."""
    try:
        n, m = operator.index(n), operator.index(m)
    except TypeError:
        raise ValueError(f"N:M pattern needs integers with 0 < N < M, got {n!r}:{m!r}") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern needs integers with 0 < N < M, got {n}:{m}")
    if d_in is not None and d_in % m != 0:
        raise ValueError(f"N:M pattern {n}:{m} needs the input dimension to be a multiple of {m}, got d_in={d_in}")


def _check_2d(t: Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (d_out, d_in), got shape {tuple(t.shape)}")


def _lowest_k_mask(values: Tensor, k: int) -> Tensor:
    """Mark the ``k`` lowest entries along the last dim, ties going to the lower index.

    This gives the same result as taking the first ``k`` of a stable ascending sort, but uses a linear-time
    ``kthvalue`` selection plus a tie-break cumsum, which is several times cheaper than a full sort on 50M+ entries.
    """
    if bool(torch.isnan(values).any()):
        raise ValueError("pruning scores contain NaN; check the weights and calibration statistics")
    thresh = torch.kthvalue(values, k, dim=-1, keepdim=True).values
    chosen = values < thresh
    tied = values == thresh
    need = k - chosen.sum(dim=-1, keepdim=True)  # in [1, tied count] by definition of the k-th value
    if bool((tied.sum(dim=-1, keepdim=True) > need).any()):
        tied &= tied.cumsum(dim=-1) <= need
    return chosen | tied


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Prune the ``int(numel * s)`` smallest ``|W|`` over the whole matrix (one global threshold, as magnitude pruning does)."""
    s = check_sparsity(sparsity)
    k = int(weight.numel() * s)
    if k == 0:
        return torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    # fp32 |W| is exact for fp16/bf16 inputs, so the ranking is the same as in the native dtype.
    return _lowest_k_mask(weight.detach().reshape(-1).float().abs(), k).view(weight.shape)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the ``int(d_in * s)`` lowest scores in each output row (Wanda compares weights within a row)."""
    _check_2d(scores, "scores")
    s = check_sparsity(sparsity)
    k = int(scores.shape[1] * s)
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return _lowest_k_mask(scores.detach(), k)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Prune the ``n`` lowest scores in every group of ``m`` consecutive input columns of each row (N:M sparsity)."""
    _check_2d(scores, "scores")
    d_out, d_in = scores.shape
    check_nm(n, m, d_in)
    grouped = scores.detach().reshape(d_out, d_in // m, m)
    return _lowest_k_mask(grouped, n).view(d_out, d_in)


def wanda_scores(weight: Tensor, col_sq_sum: Tensor) -> Tensor:
    """Wanda importance ``|W_ij| * ||X_j||_2`` in fp32; ``col_sq_sum[j]`` is the sum over tokens of ``x_j^2``.

    Any positive scaling of ``col_sq_sum`` (sum vs. mean over tokens) leaves the per-row ranking unchanged.
    """
    _check_2d(weight, "weight")
    if col_sq_sum.dim() != 1 or col_sq_sum.shape[0] != weight.shape[1]:
        raise ValueError(
            f"col_sq_sum must have shape ({weight.shape[1]},) to match weight {tuple(weight.shape)}, "
            f"got {tuple(col_sq_sum.shape)}"
        )
    norms = col_sq_sum.detach().to(device=weight.device, dtype=torch.float32).sqrt()
    return weight.detach().float().abs() * norms.unsqueeze(0)


@torch.no_grad()
def apply_mask(weight: Tensor, mask: Tensor) -> Tensor:
    """Zero the pruned entries of ``weight`` in place (dtype unchanged) and return it."""
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = pruned), got {mask.dtype}")
    weight.masked_fill_(mask.to(weight.device), 0)
    return weight
