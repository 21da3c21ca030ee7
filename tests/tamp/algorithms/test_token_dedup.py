"""DART's choice against a literal re-statement of the release's `get_retained_image_token` (ZichenWen1/DART
5a19452): Python sets, the pivot set's iteration order, `topk` of the negated cosine similarity per pivot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tamp.algorithms.token_dedup import dart_keep, per_pivot, release_pivot_order, spread


def release(l1: torch.Tensor, states: torch.Tensor, start: int, length: int, image_pivots: int, text_pivots: int,
            token_topk: int) -> list[int]:
    """The release's loop for one image span [start, start + length), text pivots from the tokens after it."""
    image_l1, query_l1 = l1[start:start + length], l1[start + length:]
    image_indices = (image_l1.topk(image_pivots).indices + start).tolist()
    query_indices = (query_l1.topk(text_pivots).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(start, start + length)) - set(image_indices)
    valid_list = list(valid_indices)
    for item in list(indices_set):
        cos = -F.cosine_similarity(states[item, :], states[valid_list, :], dim=-1)
        top = cos.topk(token_topk).indices
        real = [valid_list[i] for i in top]
        indices_set.update(real)
        valid_indices.difference_update(real)
        valid_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("keep", [0.111, 0.222, 0.5])
def test_matches_the_release(seed: int, keep: float) -> None:
    g = torch.Generator().manual_seed(seed)
    start = int(torch.randint(1, 40, (1,), generator=g))
    length = int(torch.randint(40, 200, (1,), generator=g))
    after = int(torch.randint(4, 30, (1,), generator=g))
    total = start + length + after
    states = torch.randn(total, 16, generator=g, dtype=torch.float64)
    l1 = torch.rand(total, generator=g, dtype=torch.float64)
    visual = torch.zeros(total, dtype=torch.bool)
    visual[start:start + length] = True
    text = torch.zeros(total, dtype=torch.bool)
    text[start + length:] = True
    got, flops = dart_keep(l1, states, visual, text, 4, 4, keep)
    topk = per_pivot(length, keep, 8)
    assert got.tolist() == release(l1, states, start, length, 4, 4, topk)
    assert got.numel() == 4 + 8 * topk  # the image pivots on top of the picks
    assert flops == (sum(2.0 * (length - 4 - j * topk) * 16 for j in range(8)) if topk else 0.0)


def test_pivot_order_is_the_sets() -> None:
    """The order depends on hash slots: 40 and 8 collide in an 8-slot table, so insertion order shows."""
    assert release_pivot_order([40, 8], [3]) == list({40, 8, 3})
    assert release_pivot_order([100, 36, 68], [200, 201, 202]) == list({100, 36, 68, 200, 201, 202})


def test_keep_all_and_caps() -> None:
    states = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    visual = torch.zeros(20, dtype=torch.bool)
    visual[2:15] = True
    text = torch.zeros(20, dtype=torch.bool)
    text[15:] = True
    l1 = torch.rand(20, generator=torch.Generator().manual_seed(1))
    assert dart_keep(l1, states, visual, text, 4, 4, 1.0)[0].tolist() == list(range(2, 15))
    kept, _ = dart_keep(l1, states, visual, text, 20, 9, 0.9)  # more pivots than tokens: capped, no error
    assert kept.tolist() == list(range(2, 15))
    assert dart_keep(l1, states, visual, text, 4, 4, 0.0)[0].numel() == 4  # no picks: the image pivots only


def budgeted(l1: torch.Tensor, states: torch.Tensor, start: int, length: int, image_pivots: int, text_pivots: int,
             total: int) -> list[int]:
    """The release's loop with the common budget's count (`exact`): at most `total` image pivots, the picks
    dealt out one at a time round the pivots in visiting order until the image holds `total` tokens."""
    image_l1, query_l1 = l1[start:start + length], l1[start + length:]
    image_indices = (image_l1.topk(min(image_pivots, total)).indices + start).tolist()
    query_indices = (query_l1.topk(text_pivots).indices + start + length).tolist()
    order = list(set(image_indices + query_indices))
    picks = [0] * len(order)
    for i in range(max(0, total - len(image_indices))):
        picks[i % len(order)] += 1
    kept, valid = set(image_indices), [t for t in range(start, start + length) if t not in image_indices]
    for item, count in zip(order, picks):
        ranked = sorted(valid, key=lambda t: (float(F.cosine_similarity(states[item], states[t], dim=0)), t))
        kept.update(ranked[:count])
        valid = [t for t in valid if t not in ranked[:count]]
    return sorted(kept)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", [0.111, 0.222, 0.333, 0.01])
def test_budget_count_is_exact(seed: int, keep: float) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    start, length, after = 3, int(torch.randint(20, 120, (1,), generator=g)), 6
    total = start + length + after
    states = torch.randn(total, 16, generator=g, dtype=torch.float64)
    l1 = torch.rand(total, generator=g, dtype=torch.float64)
    visual = torch.zeros(total, dtype=torch.bool)
    visual[start:start + length] = True
    text = torch.zeros(total, dtype=torch.bool)
    text[start + length:] = True
    got, _ = dart_keep(l1, states, visual, text, 4, 4, keep, exact=True)
    count = round(length * keep)
    assert got.numel() == count
    assert got.tolist() == budgeted(l1, states, start, length, 4, 4, count)


def test_spread() -> None:
    assert spread(188, 8) == [24] * 4 + [23] * 4 and spread(4, 8) == [1] * 4 + [0] * 4
    assert spread(0, 8) == [0] * 8 and spread(-3, 2) == [0, 0] and spread(5, 0) == []
