"""top_visual_keep against a plain loop, on random scores with ties."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.token_keep import keep_count, top_visual_keep


def _loop(scores: list[float], visual: list[bool], keep: float) -> list[int]:
    vis = [i for i, v in enumerate(visual) if v]
    ranked = sorted(vis, key=lambda i: (-scores[i], i))
    chosen = set(ranked[:int(round(len(vis) * keep))])
    return [i for i in range(len(scores)) if not visual[i] or i in chosen]


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=g))
    scores = torch.randint(0, 6, (n,), generator=g).float() / 5  # many ties
    visual = torch.rand(n, generator=g) < 0.6
    for keep in (0.0, 0.25, 0.5, 0.9, 1.0):
        got = top_visual_keep(scores, visual, keep).tolist()
        assert got == _loop(scores.tolist(), visual.tolist(), keep)


def test_counts_and_bad_input() -> None:
    assert [keep_count(576, r) for r in (0.5, 0.25, 0.0, 1.0)] == [288, 144, 0, 576]
    with pytest.raises(ValueError, match="keep ratio"):
        keep_count(10, 1.5)
    with pytest.raises(ValueError, match="equal-length vectors"):
        top_visual_keep(torch.zeros(3), torch.zeros(4, dtype=torch.bool), 0.5)
