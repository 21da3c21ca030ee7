"""CDPruner's conditional DPP against slow, obvious re-statements of the release: the relevance written out entry by
entry (mean over the texts of -cos, min-max over the call with the release's +1e-6), the kernel r_i cos_ij r_j, and
the greedy MAP as what the fast update computes: each step the token whose addition gives the subset the largest
determinant (in float64, first on ties). The inputs keep every step's best determinant clearly ahead of the
second (checked), so the discrete picks cannot differ between CPUs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tamp.algorithms.conditional_dpp import choice_flops, conditional_kernel, greedy_map, normalise, raw_relevance


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _relevance_by_hand(crops: list[list[list[float]]], texts: list[list[float]]) -> list[list[float]]:
    """The release's relevance of every crop's tokens: mean over texts of -cos, then min-max over all crops."""
    raw = [[sum(-_cos(tok, t) for t in texts) / len(texts) for tok in crop] for crop in crops]
    low, high = min(min(r) for r in raw), max(max(r) for r in raw)
    return [[(v - low + 1e-6) / (high - low) for v in r] for r in raw]


def _kernel_by_hand(x: list[list[float]], r: list[float]) -> list[list[float]]:
    return [[r[i] * _cos(x[i], x[j]) * r[j] for j in range(len(x))] for i in range(len(x))]


def _greedy_by_determinant(kernel: list[list[float]], count: int) -> tuple[list[int], float]:
    """Each step: the token maximising det(L[S + j, S + j]); the picks and the smallest relative gap between a
    step's best determinant and the best of the tokens that are not exact duplicates of it (duplicates, such as
    LLaVA-OneVision's newline tokens, tie exactly on any CPU and go to the first)."""
    full = torch.tensor(kernel, dtype=torch.float64)
    picked: list[int] = []
    gap = math.inf
    for _ in range(count):
        dets = []
        for j in range(len(kernel)):
            if j in picked:
                continue
            rows = torch.tensor(picked + [j])
            dets.append((float(torch.linalg.det(full[rows][:, rows])), j))
        dets.sort(key=lambda v: (-v[0], v[1]))
        others = [v for v, j in dets[1:] if kernel[j] != kernel[dets[0][1]]]
        if others:
            gap = min(gap, (dets[0][0] - others[0]) / abs(dets[0][0]))
        picked.append(dets[0][1])
    return picked, gap


def _crop(seed: int, n: int = 14, d: int = 24) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(6))
def test_picks_what_the_determinant_greedy_picks(seed: int) -> None:
    crops = [_crop(seed), _crop(100 + seed)]
    texts = torch.randn(5, 24, generator=torch.Generator().manual_seed(200 + seed))
    by_hand = _relevance_by_hand([c.double().tolist() for c in crops], texts.double().tolist())
    rel = normalise(torch.cat([raw_relevance(c, texts) for c in crops]))
    torch.testing.assert_close(rel, torch.tensor(sum(by_hand, []), dtype=torch.float32), rtol=0, atol=1e-5)
    for k, crop in enumerate(crops):
        r = rel[k * 14:(k + 1) * 14]
        kernel = conditional_kernel(crop, r)
        want = _kernel_by_hand(crop.double().tolist(), by_hand[k])
        torch.testing.assert_close(kernel.double(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-5)
        expected, gap = _greedy_by_determinant(want, 6)
        assert gap > 1e-3, "the input's choices are too close to be stable across CPUs"
        assert greedy_map(kernel, 6).tolist() == expected


def test_theta_weights_relevance_as_the_release_comment() -> None:
    """theta = 0.5: alpha = 0.5, r -> exp(r / 2) on both sides of the kernel."""
    x, r = _crop(7, 6, 8), torch.rand(6, generator=torch.Generator().manual_seed(1))
    w = torch.exp(0.5 * r)
    want = _kernel_by_hand(x.double().tolist(), w.double().tolist())
    torch.testing.assert_close(conditional_kernel(x, r, 0.5).double(), torch.tensor(want, dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_more_picks_than_the_kernel_rank_stay_distinct() -> None:
    """12 tokens of width 3 (rank 3), 8 picks: the release would divide by sqrt(<= 0) and repeat picks; here each
    token is picked once, the first 3 by the determinant greedy."""
    x = _crop(3, 12, 3)
    kernel = conditional_kernel(x, torch.ones(12))
    picks = greedy_map(kernel, 8).tolist()
    assert len(set(picks)) == 8
    expected, _ = _greedy_by_determinant(kernel.double().tolist(), 3)
    assert picks[:3] == expected


def test_count_at_least_n_keeps_every_token_and_equal_relevance_is_ones() -> None:
    kernel = conditional_kernel(_crop(4, 5, 8), torch.ones(5))
    assert sorted(greedy_map(kernel, 9).tolist()) == list(range(5))
    assert greedy_map(kernel, 0).numel() == 0
    assert normalise(torch.full((4,), 0.3)).tolist() == [1.0] * 4


def test_flops_are_what_the_counter_sees() -> None:
    x, texts = _crop(5, 20, 16), torch.randn(3, 16)
    with FlopCounterMode(display=False) as counter:
        greedy_map(conditional_kernel(x, normalise(raw_relevance(x, texts))), 7)
    assert counter.get_total_flops() == choice_flops(20, 16, 3, 7)
