"""Which visual tokens a token method keeps: top_visual_keep against a plain loop (ties included), AIM's schedule
against the released one."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.token_keep import keep_count, linear_schedule, scheduled_count, top_visual, top_visual_keep


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


def test_aims_schedule_is_the_released_one() -> None:
    """LaVi-Lab/AIM's retain rates, restated from its modeling files: Qwen2-7B (28 layers) from layer 14 and
    LLaMA-7B (32 layers) from layer 13, 1/8 fewer per layer."""
    for layers, start in ((28, 14), (32, 13)):
        released = [max(0, 1.0 - (i - start + 1) * 0.125) if i >= start else 1.0 for i in range(layers)]
        assert [linear_schedule(i, start, 0.125) for i in range(layers)] == released
    # int() of the entering visual count times the rate, as the release's keep_num
    assert [scheduled_count(49, linear_schedule(i, 14, 0.125)) for i in range(13, 23)] == \
        [49, 42, 36, 30, 24, 18, 12, 6, 0, 0]
    assert scheduled_count(8, 0.875) == 7 and scheduled_count(3, 1 / 3) == 1


@pytest.mark.parametrize("seed", range(5))
def test_top_visual_by_count_matches_the_ratio_form(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores, visual = torch.rand(40, generator=g), torch.rand(40, generator=g) < 0.5
    n = int(visual.sum())
    for count in range(n + 1):
        got = top_visual(scores, visual, count)
        assert int(visual[got].sum()) == count and int((~visual[got]).sum()) == int((~visual).sum())
    assert top_visual(scores, visual, keep_count(n, 0.5)).tolist() == top_visual_keep(scores, visual, 0.5).tolist()
