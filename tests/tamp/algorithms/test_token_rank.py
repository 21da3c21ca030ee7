"""AIM's PageRank importance against a plain re-statement: row softmax at temperature tau written out, the
uniform start pushed through the matrix entry by entry, RMS over heads."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms.token_rank import pagerank, rms_over_heads


def _by_hand(logits: list[list[list[float]]], tau: float, iters: int) -> list[float]:
    per_head = []
    for head in logits:
        t = len(head)
        walk = []
        for row in head:
            finite = [v / tau for v in row if v != -math.inf]
            top = max(finite)
            exps = [0.0 if v == -math.inf else math.exp(v / tau - top) for v in row]
            walk.append([e / sum(exps) for e in exps])
        dist = [1.0 / t] * t
        for _ in range(iters):
            dist = [sum(dist[i] * walk[i][j] for i in range(t)) for j in range(t)]
        per_head.append(dist)
    return [math.sqrt(sum(h[j] ** 2 for h in per_head) / len(per_head)) for j in range(len(per_head[0]))]


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_hand_version(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    heads, t = 3, int(torch.randint(2, 12, (1,), generator=g))
    logits = torch.randn(heads, t, t, generator=g, dtype=torch.float64)
    logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)  # causal
    for tau, iters in ((0.1, 5), (1.0, 1), (0.5, 3)):
        got = rms_over_heads(pagerank(logits, tau, iters))
        torch.testing.assert_close(got.double(), torch.tensor(_by_hand(logits.tolist(), tau, iters),
                                                              dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_a_distribution_per_head_and_bad_shapes() -> None:
    logits = torch.randn(2, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf)
    dist = pagerank(logits)
    torch.testing.assert_close(dist.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="heads, T, T"):
        pagerank(torch.zeros(5, 5))
