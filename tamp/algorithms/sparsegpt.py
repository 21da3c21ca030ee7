"""SparseGPT: one-shot pruning with OBS weight reconstruction (Frantar & Alistarh, 2023).

Columns are pruned left to right; after each column is fixed, the error it leaves is spread over the columns still
to be processed using the inverse Hessian restricted to those columns. The rows of the upper Cholesky factor of
``H^-1`` are exactly those restricted inverses (scaled), so one factorisation serves every step. Updates are applied
lazily: within a block of ``blocksize`` columns immediately, to the columns right of the block once per block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .masks import _lowest_k_mask, check_nm, check_sparsity

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

__all__ = ["ColumnRound", "add_to_hessian", "obs_prune", "sparsegpt_prune"]


@torch.no_grad()
def add_to_hessian(h_sum: Tensor | None, x: Tensor) -> Tensor:
    """Accumulate ``X^T X`` in fp32 for activations ``x`` of shape ``(..., d_in)``; starts a new sum when ``h_sum`` is None.

    Summing (rather than averaging) is fine: SparseGPT's damping is relative to ``mean(diag H)``, so scale cancels.
    """
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    if h_sum is None:
        return x2.t() @ x2
    if h_sum.shape != (x2.shape[1], x2.shape[1]):
        raise ValueError(f"hessian sum has shape {tuple(h_sum.shape)} but activations have d_in={x2.shape[1]}")
    if h_sum.dtype != torch.float32:
        raise ValueError(f"hessian sum must be float32, got {h_sum.dtype}")
    return h_sum.addmm_(x2.t().to(h_sum.device), x2.to(h_sum.device))


def _inverse_cholesky_upper(h: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + damp*I)^-1``; fails loudly since a silent fallback would corrupt the weights."""
    hint = "increase percdamp or use more calibration samples"
    if not bool(torch.isfinite(h).all()):
        raise RuntimeError(f"SparseGPT: the Hessian contains NaN/inf values; {hint}")
    damp = percdamp * torch.mean(torch.diag(h))
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise RuntimeError(f"SparseGPT: the damped Hessian is not positive definite (Cholesky failed); {hint}")
    hinv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        raise RuntimeError(f"SparseGPT: the inverse Hessian is not positive definite (Cholesky failed); {hint}")
    return upper


@torch.no_grad()
def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` (d_out, d_in) with SparseGPT given ``hessian`` (d_in, d_in, e.g. sum of ``X^T X``).

    Unstructured (``n == m == 0``): exactly ``int(numel_block * sparsity)`` entries per block of ``blocksize`` columns
    are pruned, chosen by the OBS saliency ``w^2 / [H^-1]_qq``. N:M (``0 < n < m``, ``sparsity`` ignored): the ``n``
    lowest-saliency entries of each group of ``m`` input columns, chosen once the group's columns have received the
    updates from the columns before them. Neither argument is modified.

    Returns ``(new_weight, mask)``: the reconstructed weight in ``weight``'s dtype with pruned entries exactly zero,
    and the bool mask (True = pruned).
    """
    return obs_prune(weight, hessian, sparsity, n, m, blocksize, percdamp)


# a column's kept values -> the values it is fixed to (SparseGPT's joint quantization): (column index, its pruned
# values (d_out,), the working weights W^T (d_in, d_out) as updated so far) -> (d_out,); zeros must stay zero
ColumnRound = Callable[[int, Tensor, Tensor], Tensor]


@torch.no_grad()
def obs_prune(weight: Tensor, hessian: Tensor, sparsity: float, n: int = 0, m: int = 0, blocksize: int = 128,
              percdamp: float = 0.01, round_column: ColumnRound | None = None) -> tuple[Tensor, Tensor]:
    """`sparsegpt_prune`, with each column's kept weights passed through `round_column` before its error is spread
    (the release's joint sparsification and quantization, tamp.algorithms.quantize.sparsegpt_quantize)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if hessian.shape != (d_in, d_in):
        raise ValueError(f"hessian must have shape ({d_in}, {d_in}) for weight {tuple(weight.shape)}, got {tuple(hessian.shape)}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    structured = n != 0 or m != 0
    if structured:
        check_nm(n, m, d_in)
        if blocksize % m != 0:
            # Groups are located by the column index inside a block, so blocks must not split a group.
            raise ValueError(f"blocksize ({blocksize}) must be a multiple of M ({m}) for N:M pruning")
    else:
        sparsity = check_sparsity(sparsity)

    # Work on W^T (d_in, d_out): a column of W is then a contiguous row, which makes the per-column rank-1 updates
    # several times faster on CPU and coalesced on GPU. `.contiguous()` also makes this our own fp32 copy.
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32  # fp64 only for the tests' oracles
    wt = weight.detach().to(work).t().contiguous()
    h = hessian.detach().to(device=wt.device, dtype=work).clone()

    # Inputs that never fire carry no information: make H invertible there and drop their weights.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    wt[dead, :] = 0.0

    hinv = _inverse_cholesky_upper(h, percdamp)
    del h
    mask_t = torch.zeros((d_in, d_out), dtype=torch.bool, device=wt.device)

    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        count = i2 - i1
        w1 = wt[i1:i2]  # a view: updating it updates wt
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)  # d1[q]^2 = [H_F^-1]_qq with F = the columns still free when q is fixed
        mask1 = mask_t[i1:i2]

        if not structured:
            # One choice per block over all its entries, exactly k of them (a `<=` threshold would over-prune on
            # ties); flattened in W's row-major order so ties go to the lower (row, column) like a stable sort.
            k = int(w1.numel() * sparsity)
            if k > 0:
                saliency = (w1**2 / (d1**2).unsqueeze(1)).t().reshape(-1)
                mask1.copy_(_lowest_k_mask(saliency, k).view(d_out, count).t())

        for i in range(count):
            if structured and i % m == 0:
                # Chosen from columns that already carry the updates of every column to their left.
                group = (w1[i : i + m] ** 2 / (d1[i : i + m] ** 2).unsqueeze(1)).t()  # (d_out, m)
                idx = torch.sort(group, dim=1, stable=True).indices[:, :n]
                mask1[i : i + m].t().scatter_(1, idx, True)
            row = w1[i]
            q = row.masked_fill(mask1[i], 0.0)
            if round_column is not None:
                q = round_column(i1 + i, q, wt)
            e = (row - q) / d1[i]
            w1[i] = q
            w1[i + 1 :].addr_(hinv1[i, i + 1 :], e, alpha=-1.0)
            err1[i] = e

        if i2 < d_in:
            # Lazy update of everything right of the block: W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:], transposed.
            wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1.0)

    mask = mask_t.t().contiguous()
    new_weight = wt.masked_fill_(mask_t, 0.0).t().to(weight.dtype).contiguous()
    return new_weight, mask
