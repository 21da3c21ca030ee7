"""Grid pooling against a loop over windows: each pooled token the plain mean of its bin (PyTorch's adaptive
rule: rows floor(i n / m) .. ceil((i + 1) n / m)), at its bin's top-left offset; newline columns kept once per
pooled row; the sides a share or a stride gives."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms.token_pool import budget_grid, pool_grid, pooled_side


def _loop(states: torch.Tensor, rows: int, cols: int, out_rows: int, out_cols: int, newline: bool):
    width = cols + int(newline)
    offsets, pooled = [], []
    for i in range(out_rows):
        r0, r1 = math.floor(i * rows / out_rows), math.ceil((i + 1) * rows / out_rows)
        for j in range(out_cols):
            c0, c1 = math.floor(j * cols / out_cols), math.ceil((j + 1) * cols / out_cols)
            cells = [states[r * width + c].double() for r in range(r0, r1) for c in range(c0, c1)]
            offsets.append(r0 * width + c0)
            pooled.append(sum(cells) / len(cells))
        if newline:
            offsets.append(r0 * width + cols)
            pooled.append(states[r0 * width + cols].double())
    return offsets, torch.stack(pooled)


@pytest.mark.parametrize(("rows", "cols", "out_rows", "out_cols", "newline"), [
    (24, 24, 12, 12, False), (24, 24, 14, 14, False), (24, 24, 8, 8, False), (7, 5, 4, 3, False),
    (6, 9, 3, 5, True), (5, 5, 5, 5, True), (3, 1, 1, 1, False), (10, 13, 6, 7, True)])
def test_matches_the_loop(rows: int, cols: int, out_rows: int, out_cols: int, newline: bool) -> None:
    states = torch.randn(rows * (cols + int(newline)), 8, generator=torch.Generator().manual_seed(rows * cols))
    offsets, pooled = pool_grid(states, rows, cols, out_rows, out_cols, newline)
    want_offsets, want = _loop(states, rows, cols, out_rows, out_cols, newline)
    assert offsets.tolist() == want_offsets == sorted(want_offsets)
    torch.testing.assert_close(pooled.double(), want, rtol=1e-5, atol=1e-6)  # fp32 sums in another order


def test_stride_one_is_the_identity() -> None:
    states = torch.randn(12, 4)
    offsets, pooled = pool_grid(states, 3, 4, 3, 4)
    assert offsets.tolist() == list(range(12)) and torch.equal(pooled, states)


def test_sides() -> None:
    assert [pooled_side(24, 2, None), pooled_side(23, 2, None), pooled_side(24, 1, None)] == [12, 12, 24]
    assert [pooled_side(24, 2, s) for s in (0.333, 0.222, 0.111, 1.0)] == [14, 11, 8, 24]
    assert pooled_side(3, 2, 0.01) == 1
    with pytest.raises(ValueError, match="grid has"):
        pool_grid(torch.zeros(5, 2), 2, 2, 1, 1)


def _budget_shape(rows: int, cols: int, target: int, newline: bool) -> tuple[int, int]:
    """Every pooled shape tried, the aspect held within 2x of the grid's (ratios compared as integer products)."""
    best = None
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            if r * cols > 2 * c * rows or c * rows > 2 * r * cols:
                continue
            miss = abs(r * c + (r if newline else 0) - target)
            stretch = max(r * cols, c * rows) / min(r * cols, c * rows)
            if best is None or (miss, stretch, r) < best[0]:
                best = ((miss, stretch, r), (r, c))
    assert best is not None
    return best[1]


@pytest.mark.parametrize(("rows", "cols", "newline"), [(24, 24, False), (4, 4, False), (4, 4, True), (7, 12, True),
                                                       (16, 9, False)])
def test_budget_grid_is_the_nearest_count(rows: int, cols: int, newline: bool) -> None:
    tokens = rows * (cols + int(newline))
    for target in range(1, tokens + 1, 1 if tokens < 100 else 7):
        assert budget_grid(rows, cols, target, newline) == _budget_shape(rows, cols, target, newline), target
    assert [budget_grid(24, 24, t) for t in (192, 128, 64)] == [(12, 16), (8, 16), (8, 8)]
