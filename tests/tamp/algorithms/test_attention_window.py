"""YOPO's visual-attention math against slow, obvious re-statements: the window's neighbours by brute force, the
split attention (dense keys + gathered window keys) against one dense softmax with the equivalent explicit mask,
the head choice against a plain sort, and the LLaVA-NeXT grid factorisation."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.attention_window import choose_pruned_heads, rows_attention, visual_mass, window_neighbours
from tamp.inference.visual_grid import anyres_segments, neighbour_positions


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("rows,cols,w", [(4, 5, 3), (6, 6, 5), (1, 7, 3), (3, 2, 1), (2, 2, 5)])
def test_window_neighbours_by_brute_force(rows: int, cols: int, w: int, causal: bool) -> None:
    got = window_neighbours(rows, cols, w, causal)
    assert got.shape == (rows * cols, w * w)
    for i in range(rows * cols):
        want = {j for j in range(rows * cols) if abs(j // cols - i // cols) <= w // 2
                and abs(j % cols - i % cols) <= w // 2 and (not causal or j <= i)}
        assert {j for j in got[i].tolist() if j >= 0} == want


def _dense(q, k, v, allowed, scaling):
    logits = (q.double() @ k.double().transpose(-1, -2)) * scaling
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(probs, nan=0.0) @ v.double()


@pytest.mark.parametrize("seed", range(5))
def test_split_attention_equals_the_dense_masked_one(seed: int) -> None:
    """A sequence of text and two image grids at random places: each visual query over the non-visual keys it may
    see causally plus its window (gathered), against a dense softmax over all keys with the explicit mask."""
    g = torch.Generator().manual_seed(seed)
    heads, d, t = 3, 8, 40
    shapes = [(3, 4), (2, 5)]
    start = [int(torch.randint(0, 6, (1,), generator=g)), 0]
    start[1] = start[0] + 12 + int(torch.randint(1, 8, (1,), generator=g))
    groups = torch.full((t,), -1)
    for n, (s, (r, c)) in enumerate(zip(start, shapes)):
        groups[s:s + r * c] = n
    visual = groups >= 0
    segments = {n: [(0, r, c)] for n, (r, c) in enumerate(shapes)}
    near = neighbour_positions(groups, segments, 3, causal=False)
    q, k, v = (torch.randn(heads, t, d, generator=g) for _ in range(3))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    rows = torch.nonzero(visual).flatten()
    text = torch.nonzero(~visual).flatten()
    got = rows_attention(q[:, rows], k[:, text], v[:, text], causal[rows][:, text],
                         k[:, near.clamp(min=0)], v[:, near.clamp(min=0)], near >= 0, d ** -0.5)
    allowed = causal[rows].clone()
    allowed[:, visual] = False
    for i, row in enumerate(near.tolist()):
        allowed[i, [p for p in row if p >= 0]] = True  # later window keys too (the release's square)
    want = _dense(q[:, rows], k, v, allowed, d ** -0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    full = rows_attention(q[:, rows], k, v, causal[rows], None, None, None, d ** -0.5)
    torch.testing.assert_close(full.double(), _dense(q[:, rows], k, v, causal[rows], d ** -0.5), rtol=1e-5, atol=1e-6)


def test_head_choice_and_mass() -> None:
    stat = torch.tensor([[0.5, 0.1, 0.9], [0.1, 0.7, 0.2]])
    assert choose_pruned_heads(stat, 0.5) == [[1], [0, 2]]  # the three lowest; the tie at 0.1 by order
    assert choose_pruned_heads(stat, 1.0) == [[], []] and choose_pruned_heads(stat, 0.0) == [[0, 1, 2], [0, 1, 2]]
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5]], [[0.6, 0.4, 0.0]]]))  # 2 heads, one query, 3 keys
    torch.testing.assert_close(visual_mass(logits, torch.tensor([False, True, True])), torch.tensor([0.8, 0.4]))


@pytest.mark.parametrize("height,width,want", [(100, 200, (3, 9)), (200, 100, (6, 4)), (100, 100, (4, 5))])
def test_anyres_grid_follows_the_image_aspect(height: int, width: int, want: tuple[int, int]) -> None:
    """Base 2 x 2 tile, then rows x (cols + 1): the factorisation of the rest closest to the image's aspect."""
    rest = want[0] * want[1]
    assert anyres_segments(4 + rest, 2, height, width) == [(0, 2, 2), (4, *want)]
