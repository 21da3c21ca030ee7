"""AIM's plan: where it drops on the released depths, which stages run, and its parameter checks."""

from __future__ import annotations

import pytest

from tamp.errors import TampError
from tamp.methods import aim
from tamp.token_transform import TokenTransform


def _plan(num_layers: int, **overrides) -> dict:
    return aim.plan(TokenTransform.build("aim", overrides).params, num_layers).drops


def test_the_released_schedules() -> None:
    """Qwen2-7B (28 layers): merge before layer 0; PageRank after layers 14..21 (87.5% .. 0%), applied from the
    next layer; LLaMA-7B (32 layers): the same from layer 13. Other depths start at half the depth."""
    assert sorted(_plan(28)) == [0, *range(15, 23)]
    assert sorted(_plan(32)) == [0, *range(14, 22)]
    assert sorted(_plan(4)) == [0, 3]
    assert all(d.score is not None for i, d in _plan(28).items() if i) and _plan(28)[0].score is None


def test_stages_alone() -> None:
    assert sorted(_plan(28, aim_stages="merge")) == [0]
    assert sorted(_plan(28, aim_stages="prune")) == list(range(15, 23))
    assert sorted(_plan(28, aim_merge_keep=1.0)) == list(range(15, 23))  # nothing to merge
    assert sorted(_plan(28, aim_prune_step=0.0)) == [0]
    assert sorted(_plan(28, aim_prune_start=20, aim_prune_step=0.5)) == [0, 21, 22]


@pytest.mark.parametrize("overrides,message", [
    ({"aim_stages": "both"}, "unknown aim_stages 'both'"),
    ({"aim_merge_keep": 0.0}, "aim_merge_keep must be in (0, 1]"),
    ({"aim_prune_step": 1.5}, "aim_prune_step must be in [0, 1]"),
    ({"aim_prune_start": -3}, "aim_prune_start must be -1"),
    ({"aim_tau": 0.0}, "aim_tau must be positive"),
    ({"aim_iters": 0}, "aim_iters must be at least 1"),
    ({"fastv_k": 2}, "fastv_k is no parameter of aim"),
])
def test_bad_parameters(overrides: dict, message: str) -> None:
    with pytest.raises(TampError, match=None) as err:
        TokenTransform.build("aim", overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("chunk_bytes", (1, 1 << 28))
def test_the_score_per_head_with_grouped_keys(monkeypatch: pytest.MonkeyPatch, chunk_bytes: int) -> None:
    """The PageRank score from query and key tensors (8 query heads sharing 2 key heads, no mask tensor: causal),
    one head at a time or all at once, equals the per-head computation written out."""
    import math

    import torch

    from tamp.algorithms.token_rank import pagerank

    monkeypatch.setattr(aim, "CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 8, 9, 4, generator=g), torch.randn(2, 2, 9, 4, generator=g)
    got = aim.pagerank_score(0.1, 5).fn(query, key, None, None)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    for b in range(2):
        dists = []
        for h in range(8):
            logits = (query[b, h] @ key[b, h // 4].T) / math.sqrt(4)
            dists.append(pagerank(logits.masked_fill(~causal, -math.inf)[None], 0.1, 5)[0])
        want = torch.stack(dists).pow(2).mean(0).sqrt()
        torch.testing.assert_close(got[b], want)
