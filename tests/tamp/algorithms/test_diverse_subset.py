"""DivPrune's max-min subset against a loop re-statement of the released `DivPrune`: distances 1 - cos written out
entry by entry, the first pick by each column's second-smallest entry, then each step the argmax (first on ties)
over columns of the minimum over the rows picked so far."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tamp.algorithms.diverse_subset import cosine_distances, gram_flops, max_min_subset, visual_runs


def _distances_by_hand(x: list[list[float]]) -> list[list[float]]:
    norms = [math.sqrt(sum(v * v for v in row)) for row in x]
    return [[1.0 - sum(a * b for a, b in zip(x[i], x[j])) / (norms[i] * norms[j]) for j in range(len(x))]
            for i in range(len(x))]


def _release_by_hand(dist: list[list[float]], count: int) -> list[int]:
    """The release's loop: step 0 scores each column by its second-smallest entry, step i > 0 by its minimum over
    the rows of the tokens picked so far; the argmax (the first of equal maxima) is picked."""
    n, picked = len(dist), []
    for i in range(count):
        scores = []
        for j in range(n):
            column = sorted(dist[r][j] for r in range(n)) if i == 0 else [dist[r][j] for r in picked]
            scores.append(column[1] if i == 0 else min(column))
        best = 0
        for j in range(1, n):
            if scores[j] > scores[best]:
                best = j
        picked.append(best)
    return picked


@pytest.mark.parametrize("seed", range(10))
def test_picks_what_the_release_loop_picks(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, d = int(torch.randint(3, 40, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    dist = cosine_distances(x)
    by_hand = _distances_by_hand(x.tolist())
    torch.testing.assert_close(dist, torch.tensor(by_hand, dtype=torch.float64), rtol=0, atol=1e-12)
    for count in sorted({1, 2, n // 3, n // 2, n - 1}):
        assert max_min_subset(dist, count).tolist() == _release_by_hand(dist.tolist(), count), count


def test_ties_go_to_the_earlier_token_and_nothing_is_picked_twice() -> None:
    """Axis-aligned +-1 vectors: exact cosines, many equal distances. The release's loop and ours agree; with
    duplicated tokens (distance 0 to a picked one) ours never re-picks a token, it takes the next unpicked one."""
    x = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1], [1, -1]], dtype=torch.float64)
    dist = cosine_distances(x)
    assert max_min_subset(dist, 4).tolist() == _release_by_hand(dist.tolist(), 4)
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    picked = max_min_subset(cosine_distances(twins), 3).tolist()
    assert len(set(picked)) == 3 and picked[:2] in ([0, 3], [3, 0])


def test_edges() -> None:
    dist = cosine_distances(torch.randn(5, 3, dtype=torch.float64))
    assert max_min_subset(dist, 0).tolist() == []
    assert max_min_subset(dist, 7).tolist() == [0, 1, 2, 3, 4]
    assert max_min_subset(cosine_distances(torch.ones(1, 3)), 1).tolist() == [0]
    assert cosine_distances(torch.zeros(2, 3))[0, 1] == 1  # a zero vector: at distance 1, no NaN
    with pytest.raises(ValueError, match="square"):
        max_min_subset(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="tokens, dim"):
        cosine_distances(torch.zeros(3))
    assert gram_flops(4, 8) == 2 * 4 * 4 * 8


def test_runs_split_images_and_videos() -> None:
    visual = torch.tensor([0, 1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    video = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert visual_runs(visual) == [(1, 3), (4, 8)]
    assert visual_runs(visual, video) == [(1, 3), (4, 6), (6, 8)]
    assert visual_runs(torch.zeros(3, dtype=torch.bool)) == []


def test_llava_next_size_is_cheap() -> None:
    """2,880 tokens (LLaVA-NeXT's largest any-res image) of width 4096, 10% kept: the greedy is O(n k) after the
    one Gram matrix, well under a few seconds on a CPU (the release's re-reduction is O(n k^2))."""
    x = torch.randn(2880, 4096, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    picked = max_min_subset(cosine_distances(x), 288)
    assert time.perf_counter() - start < 20  # a shared 2-core CPU; typically ~1 s
    assert len(set(picked.tolist())) == 288
