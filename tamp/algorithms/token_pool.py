"""Average pooling of one image's visual-token grid (the plain-downsampling baseline): PyTorch's adaptive bins, each
pooled token placed at its bin's first (top-left) token, a newline column kept once per pooled row."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def pooled_side(side: int, stride: int, keep: float | None) -> int:
    """A grid side after pooling: ceil(side / stride), or with a share `keep`, round(side x sqrt(keep)) (so about
    keep of the tokens remain), at least 1 and at most the side."""
    if keep is None:
        return max(1, math.ceil(side / stride))
    return max(1, min(side, round(side * math.sqrt(keep))))


MAX_STRETCH = 2  # a budget grid's aspect may differ from its grid's by at most this factor


def budget_grid(rows: int, cols: int, target: int, newline: bool = False) -> tuple[int, int]:
    """(out_rows, out_cols) whose pooled count (out_rows x out_cols, plus one newline per pooled row with
    `newline`) is nearest `target`, among the grids whose aspect is within MAX_STRETCH of rows x cols; ties: the
    aspect nearest the grid's, then fewer rows. Square sides alone (round(n x sqrt(share))) step too coarsely on
    small grids: a 4 x 4 grid has only 1, 4, 9 or 16."""
    def stretch(r: int, c: int) -> Fraction:
        a, b = r * cols, c * rows
        return Fraction(max(a, b), min(a, b))

    shapes = [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]
    fitting = [s for s in shapes if stretch(*s) <= MAX_STRETCH] or shapes
    return min(fitting, key=lambda s: (abs(s[0] * s[1] + s[0] * int(newline) - target), stretch(*s), s[0]))


def bins(side: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive-pooling bins of `side` cells into `out`: [floor(i side / out), ceil((i + 1) side / out))."""
    return [(i * side // out, -(-(i + 1) * side // out)) for i in range(out)]


def pool_grid(states: Tensor, rows: int, cols: int, out_rows: int, out_cols: int,
              newline: bool = False) -> tuple[Tensor, Tensor]:
    """(offsets [k], pooled states [k, D]) of a row-major grid `states` [rows x cols(+1), D], pooled to out_rows x
    out_cols by adaptive average pooling. Offsets ascend: each pooled token sits at its bin's top-left token. With
    `newline` every row ends in a newline token (LLaVA-NeXT's high-resolution part): the grid pooled is rows x cols
    without it, and each pooled row keeps the newline of its bin's first row, unchanged, after its tokens."""
    width = cols + int(newline)
    if states.shape[0] != rows * width:
        raise ValueError(f"a {rows} x {width} grid has {rows * width} tokens, got {states.shape[0]}")
    grid = states.reshape(rows, width, -1)[:, :cols]  # [rows, cols, D]
    pooled = F.adaptive_avg_pool2d(grid.permute(2, 0, 1).float(), (out_rows, out_cols)).permute(1, 2, 0)
    row_starts = torch.tensor([a for a, _ in bins(rows, out_rows)])
    col_starts = torch.tensor([a for a, _ in bins(cols, out_cols)])
    offsets = row_starts[:, None] * width + col_starts[None, :]  # [out_rows, out_cols]
    pooled = pooled.to(states.dtype)
    if newline:
        offsets = torch.cat([offsets, (row_starts * width + cols)[:, None]], dim=1)
        pooled = torch.cat([pooled, states.reshape(rows, width, -1)[row_starts, cols][:, None]], dim=1)
    return offsets.flatten().to(states.device), pooled.reshape(-1, states.shape[-1])
