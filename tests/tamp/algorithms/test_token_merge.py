"""AIM's bipartite merge against a straightforward re-statement: pairwise cosine similarities in Python, each
source's best destination, the most similar sources merged one at a time into running sums; on random tokens
with ties and on real-shaped ones (LLaVA-OneVision-7B video frames: 196 tokens of width 3584)."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms.token_merge import bipartite_merge, bipartite_merge_pass, merge_target


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / max(na * nb, 1e-300)


def _pass_by_hand(tokens: list[list[float]], r: int) -> tuple[list[int], list[list[float]]]:
    n = len(tokens)
    r = min(r, n // 2)
    sources, dests = list(range(0, n, 2)), list(range(1, n, 2))
    best = {}
    for s in sources:
        sims = [_cos(tokens[s], tokens[d]) for d in dests]
        top = max(sims)
        best[s] = (top, dests[sims.index(top)])  # first destination on ties
    ranked = sorted(sources, key=lambda s: (-best[s][0], s))
    sums = {d: list(tokens[d]) for d in dests}
    counts = {d: 1 for d in dests}
    for s in ranked[:r]:  # one merge at a time
        d = best[s][1]
        sums[d] = [a + b for a, b in zip(sums[d], tokens[s])]
        counts[d] += 1
    merged = set(ranked[:r])
    kept = [i for i in range(n) if i not in merged]
    states = [[v / counts[i] for v in sums[i]] if i in sums else list(tokens[i]) for i in kept]
    return kept, states


def _merge_by_hand(tokens: list[list[float]], target: int) -> tuple[list[int], list[list[float]]]:
    positions, current = list(range(len(tokens))), tokens
    while len(current) > target and len(current) // 2 > 0:
        kept, current = _pass_by_hand(current, min(len(current) - target, len(current) // 2))
        positions = [positions[k] for k in kept]
    return positions, current


@pytest.mark.parametrize("seed", range(12))
def test_one_pass_matches_the_hand_version(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 40, (1,), generator=g))
    if seed % 2 == 0:  # +-1 entries in 1, 4 or 16 dims: every cosine is exact in both versions, ties abound
        d = (1, 4, 16)[seed % 3]
        x = torch.randint(0, 2, (n, d), generator=g).double() * 2 - 1
    else:  # continuous: no ties
        d = int(torch.randint(1, 6, (1,), generator=g))
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
    for r in (0, 1, n // 4, n // 2, n):
        kept, states = bipartite_merge_pass(x, r)
        want_kept, want_states = _pass_by_hand(x.tolist(), r)
        assert kept.tolist() == want_kept
        torch.testing.assert_close(states, torch.tensor(want_states, dtype=torch.float64).reshape(-1, d))


@pytest.mark.parametrize("keep", (1.0, 0.5, 0.25, 0.1))
def test_repeated_passes_on_random_tokens(keep: float) -> None:
    x = torch.randn(37, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = merge_target(37, keep)
    kept, states, flops = bipartite_merge(x, target)
    want_kept, want_states = _merge_by_hand(x.tolist(), target)
    assert kept.tolist() == want_kept and len(want_kept) == target
    torch.testing.assert_close(states, torch.tensor(want_states, dtype=torch.float64))
    assert (flops == 0) == (keep == 1.0)


def test_real_shaped_frames_as_the_release_merges_them() -> None:
    """196 tokens x 3584 (one LLaVA-OneVision-7B frame after 2x2 pooling): 196 -> 98 -> 49, as the release's
    two passes r = N/2 then N/4; every survivor equal to the hand version's (states compared in fp32)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(14, 3584, generator=g)
    frame = base.repeat_interleave(14, dim=0) + 0.3 * torch.randn(196, 3584, generator=g)  # neighbours alike
    kept, states, flops = bipartite_merge(frame, merge_target(196, 0.25))
    assert kept.numel() == 49 and bool((kept[1:] > kept[:-1]).all())
    assert flops == 2.0 * 98 * 98 * 3584 + 2.0 * 49 * 49 * 3584
    want_kept, want_states = _merge_by_hand(frame.double().tolist(), 49)
    assert kept.tolist() == want_kept
    torch.testing.assert_close(states, torch.tensor(want_states, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_targets() -> None:
    assert [merge_target(196, k) for k in (1.0, 0.5, 0.25)] == [196, 98, 49]
    assert merge_target(3, 0.1) == 1 and merge_target(0, 0.5) == 0
    with pytest.raises(ValueError, match="merge keep"):
        merge_target(10, 1.5)
