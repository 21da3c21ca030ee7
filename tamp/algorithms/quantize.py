"""Weight quantization on a uniform integer grid: round-to-nearest (RTN) and GPTQ (Frantar et al., ICLR 2023).

The grid is the released GPTQ's (IST-DASLab/gptq, quant.py): per output row (and per group of `group_size` input
columns), the range [min(w, 0), max(w, 0)] is cut into 2^bits - 1 steps; symmetric grids take ±max|w| and put the
zero point in the middle ((2^bits) / 2), asymmetric ones round the zero point to the grid. Zero is always on the
grid, so a pruned weight stays exactly zero after quantization, and a symmetric b-bit grid is the signed range
[-2^(b-1), 2^(b-1) - 1] that compressed-tensors packs (integers = codes - zero point).

GPTQ quantizes columns left to right; the error each leaves is spread over the columns still to come with the
upper Cholesky factor of the damped inverse Hessian, lazily per block of `blocksize` columns, as SparseGPT does
(tamp/algorithms/sparsegpt.py). As in the release, a group's grid is fitted when its first column comes up, from the
weights as the last block boundary left them (within a block the release's outer copy lacks the updates of the
block's earlier columns), unless `static_groups` fits every group once on
the unquantized weights first; `act_order` processes columns by decreasing Hessian diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sparsegpt import _inverse_cholesky_upper, obs_prune

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

__all__ = ["Quantized", "fake_quantize", "fit_grid", "gptq_quantize", "rtn_quantize", "sparsegpt_quantize"]


@dataclass(frozen=True)
class Quantized:
    """A quantized matrix: `weight` (d_out, d_in) dequantized, in fp32 (fp64 if given fp64), on the grid (empty
    where only the codes are kept: the engine's record of what it rounded);
    `scale` and `zero` (d_out, n_groups) per row and group; `group` (d_in,) the group each input column was
    quantized with (columns in order unless act-order regrouped them); `codes` (d_out, d_in) the unsigned
    integers 0..2^bits - 1."""

    weight: Tensor
    scale: Tensor
    zero: Tensor
    group: Tensor
    codes: Tensor
    bits: int


def _working(x: Tensor) -> torch.dtype:
    """fp32, or fp64 when given fp64 (the slow re-statements in the tests run both ways in fp64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(bits: int, group_size: int, d_in: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be positive or -1 (one group per row), got {group_size}")


def fit_grid(w: Tensor, bits: int, sym: bool) -> tuple[Tensor, Tensor]:
    """Per row of `w` (d_out, n): (scale, zero), each (d_out,), of the released GPTQ's min-max grid."""
    maxq = 2**bits - 1
    w = w.to(_working(w))
    low = torch.clamp(w.min(dim=1).values, max=0.0)
    high = torch.clamp(w.max(dim=1).values, min=0.0)
    if sym:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)
    flat = (low == 0) & (high == 0)  # an all-zero row: any grid holds it exactly
    low = torch.where(flat, torch.full_like(low, -1.0), low)
    high = torch.where(flat, torch.full_like(high, 1.0), high)
    scale = (high - low) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-low / scale)
    return scale, zero


def _codes(x: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


def fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """x rounded to the grid (scale, zero broadcast against it) and mapped back to real values."""
    return scale * (_codes(x, scale, zero, 2**bits - 1) - zero)


def rtn_quantize(weight: Tensor, bits: int = 4, group_size: int = 128, sym: bool = True) -> Quantized:
    """Round every weight to its row's (and group's) grid; no data needed. group_size -1: one grid per row."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    _check(bits, group_size, d_in)
    size = d_in if group_size == -1 else group_size
    w = weight.detach().to(_working(weight))
    scales, zeros, parts, codes = [], [], [], []
    for start in range(0, d_in, size):
        block = w[:, start:start + size]
        scale, zero = fit_grid(block, bits, sym)
        code = _codes(block, scale[:, None], zero[:, None], 2**bits - 1)
        parts.append(scale[:, None] * (code - zero[:, None]))
        codes.append(code)
        scales.append(scale)
        zeros.append(zero)
    group = torch.arange(d_in, device=w.device) // size
    return Quantized(torch.cat(parts, dim=1), torch.stack(scales, 1), torch.stack(zeros, 1), group,
                     torch.cat(codes, dim=1).to(torch.uint8), bits)


@torch.no_grad()
def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group_size: int = 128, sym: bool = True,
                  act_order: bool = False, static_groups: bool = False, blocksize: int = 128,
                  percdamp: float = 0.01, pruned: Tensor | None = None) -> Quantized:
    """Quantize `weight` (d_out, d_in) with GPTQ given `hessian` (d_in, d_in, e.g. a sum of X^T X; the damping is
    relative to its mean diagonal, so its scale does not matter). Neither argument is modified. Inputs that never
    fire (zero Hessian diagonal) get zero weights, as in the release. `pruned` (d_out, d_in) bool: weights held at
    zero (a pruning mask from before), which receive none of the other columns' error (llm-compressor's
    `preserve_zeros`), so they are exactly zero after rounding; without it the error may move them."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if hessian.shape != (d_in, d_in):
        raise ValueError(f"hessian must have shape ({d_in}, {d_in}) for weight {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    _check(bits, group_size, d_in)
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    maxq = 2**bits - 1
    w = weight.detach().to(_working(weight)).clone()
    h = hessian.detach().to(device=w.device, dtype=w.dtype).clone()
    scale, zero = fit_grid(w, bits, sym)  # one grid per row when there are no groups (before dead inputs go)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    size = d_in if group_size == -1 else group_size
    n_groups = -(-d_in // size)
    fixed = [fit_grid(w[:, g * size:(g + 1) * size], bits, sym) for g in range(n_groups)] if static_groups else []
    order = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order \
        else torch.arange(d_in, device=w.device)
    w, h = w[:, order], h[order][:, order]
    free = None
    if pruned is not None:
        if pruned.shape != weight.shape:
            raise ValueError(f"pruned must have the weight's shape {tuple(weight.shape)}, got {tuple(pruned.shape)}")
        w = w.masked_fill(pruned[:, order], 0.0)
        free = (~pruned[:, order]).to(w.dtype)
    hinv = _inverse_cholesky_upper(h, percdamp)
    del h
    # on W^T (d_in, d_out), as SparseGPT: a column of W is a contiguous row, its rank-1 updates in place
    wt = w.t().contiguous()
    free_t = free.t().contiguous() if free is not None else None
    codes_t = torch.zeros_like(wt)
    scale_t = torch.zeros_like(wt)  # each processed column's grid, in processing order
    zero_t = torch.zeros_like(wt)
    group_of = torch.zeros(d_in, dtype=torch.long, device=w.device)
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                g = int(order[col]) // size
                scale, zero = fixed[g]
            else:
                g = col // size  # groups of columns in the order they are processed
                if group_size != -1 and col % size == 0:
                    # fitted from `wt` as the last block boundary left it: the release reads its outer W here,
                    # which lacks the updates of this block's earlier columns (only when group_size < blocksize)
                    scale, zero = fit_grid(wt[col:col + size].t(), bits, sym)
            group_of[col] = g
            code = _codes(w1[i], scale, zero, maxq)
            codes_t[col], scale_t[col], zero_t[col] = code, scale, zero
            e = (w1[i] - scale * (code - zero)) / hinv1[i, i]
            if free_t is None:
                w1[i + 1:].addr_(hinv1[i, i + 1:], e, alpha=-1.0)
            else:
                w1[i + 1:].sub_(torch.outer(hinv1[i, i + 1:], e) * free_t[col + 1:i2])
            err1[i] = e
        if i2 < d_in:
            step = hinv[i1:i2, i2:].t() @ err1
            wt[i2:].sub_(step if free_t is None else step * free_t[i2:])
    codes, scale_at, zero_at = codes_t.t(), scale_t.t(), zero_t.t()
    back = torch.argsort(order)
    weight_q = (scale_at * (codes - zero_at))[:, back].contiguous()
    group = group_of[back]
    # the grid of each group, read off a column that used it
    first = [int(torch.nonzero(group == g)[0]) for g in range(n_groups)]
    scales = scale_at[:, back][:, first].contiguous()
    zeros = zero_at[:, back][:, first].contiguous()
    return Quantized(weight_q, scales, zeros, group, codes[:, back].to(torch.uint8).contiguous(), bits)



@torch.no_grad()
def sparsegpt_quantize(weight: Tensor, hessian: Tensor, sparsity: float, n: int = 0, m: int = 0, bits: int = 4,
                       group_size: int = 128, sym: bool = True, blocksize: int = 128,
                       percdamp: float = 0.01) -> tuple[Quantized, Tensor]:
    """SparseGPT's joint pass (IST-DASLab/sparsegpt, `fasterprune` with a quantizer): each column is pruned as
    `sparsegpt_prune` prunes it, its kept weights rounded to the grid, and the error of both spread over the columns
    still to come with the same Hessian. Returns (the quantized weights, the mask; True = pruned): the mask is
    SparseGPT's, and every pruned weight is exactly zero. The release fits one grid per row on the unpruned weights
    (`group_size=-1`); with groups, a group's grid is fitted when its first column comes up, from the unpruned
    weights as updated so far (the release has no groups; its GPTQ fits them the same way)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    _check(bits, group_size, d_in)
    maxq = 2**bits - 1
    size = d_in if group_size == -1 else group_size
    work = _working(weight)
    grids: dict[int, tuple[Tensor, Tensor]] = {0: fit_grid(weight, bits, sym)} if group_size == -1 else {}
    codes = torch.zeros(d_out, d_in, dtype=work, device=weight.device)
    scales = torch.zeros(d_out, -(-d_in // size), dtype=work, device=weight.device)
    zeros = torch.zeros_like(scales)

    def round_column(col: int, kept: Tensor, wt: Tensor) -> Tensor:
        g = col // size
        if g not in grids:
            grids[g] = fit_grid(wt[col:col + size].t(), bits, sym)
        scale, zero = grids[g]
        code = _codes(kept, scale, zero, maxq)
        codes[:, col], scales[:, g], zeros[:, g] = code, scale, zero
        return scale * (code - zero)

    _, mask = obs_prune(weight, hessian, sparsity, n, m, blocksize, percdamp, round_column)
    group = torch.arange(d_in, device=weight.device) // size
    dequantized = scales.gather(1, group.expand(d_out, -1)) * (codes - zeros.gather(1, group.expand(d_out, -1)))
    return Quantized(dequantized, scales, zeros, group, codes.to(torch.uint8), bits), mask

