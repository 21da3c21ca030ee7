"""DART's choice against a literal re-statement of the release's `get_retained_image_token` (ZichenWen1/DART
5a19452): Python sets, the pivot set's iteration order, `topk` of the negated cosine similarity per pivot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tamp.algorithms.token_dedup import dart_keep, per_pivot, release_pivot_order


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
