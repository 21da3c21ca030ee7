"""PyramidDrop on the tiny models (4 layers: drops before layers 1, 2, 3 at the release's 0.25 of the depth)
against a plain re-statement of Cooperx521/PyramidDrop's `pdrop_rank_drop` over the eager attention weights:
the last prompt token's softmax row (its "last instruction token": in a prefill, the sequence's last token),
averaged over heads, the image tokens sorted by it (earlier first on ties), the top int(n x lambda^k) of the n
that entered the LLM kept in their order with every text token."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_token_drop import _visual_positions


def _release_keeps(weights: torch.Tensor, before: list[int], visual: set[int], count: int) -> list[int]:
    """One rank-and-drop: weights [heads, T, T] of the scoring layer over the tokens `before` (original
    positions); the last query row, mean over heads; the top `count` visual tokens and all text, in order."""
    heads, t = weights.shape[0], weights.shape[1]
    row = [sum(float(weights[h, t - 1, j]) for h in range(heads)) / heads for j in range(t)]
    image = [j for j, p in enumerate(before) if p in visual]
    ranked = sorted(image, key=lambda j: (-row[j], j))[:count]
    return sorted([p for p in before if p not in visual] + [before[j] for j in ranked])


@pytest.mark.parametrize("rank", ("previous", "own"))
@pytest.mark.parametrize("family", FAMILIES)
def test_each_stage_keeps_the_release_top(loaded, family: str, rank: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    with torch.no_grad():
        dropper = TokenTransform.build("pdrop", {"pdrop_rank": rank}).install(model)
        try:
            attentions = model(**inputs, output_attentions=True).attentions
        finally:
            dropper.remove()
    ids = inputs["input_ids"][0].tolist()
    visual = set(_visual_positions(model, ids))
    shift = int(rank == "own")
    stages = {1 + shift: 1, 2 + shift: 2, 3 + shift: 3}  # layer the k-th drop comes before -> k
    assert sorted(dropper.plan.drops) == [layer for layer in stages if layer < 4]
    for layer in range(1, 4):
        before = dropper.kept_by_layer[layer - 1][0].tolist()
        got = dropper.kept_by_layer[layer][0].tolist()
        if layer not in stages:
            assert got == before
            continue
        count = math.floor(len(visual) * 0.5 ** stages[layer])
        assert got == _release_keeps(attentions[layer - 1][0], before, visual, count), layer
        assert sum(p in visual for p in got) == count
    tokens = dropper.history[-1].tokens_per_layer
    assert tokens[0] == len(ids) and tokens[-1] < tokens[0]


def test_budget_maps_to_the_layer_averaged_share() -> None:
    from tamp.algorithms.pyramid_schedule import budget_schedule
    from tamp.recipe import build_recipe

    for share in (0.333, 0.222, 0.111):
        recipe = build_recipe("pdrop", 0, overrides=[f"token_budget={share}"])
        assert recipe.token is not None
        stage, lam = budget_schedule(share)
        assert recipe.token.params["pdrop_stage"] == pytest.approx(stage)
        assert recipe.token.params["pdrop_lambda"] == pytest.approx(lam)


def test_a_stage_past_the_depth_is_refused() -> None:
    """A schedule whose every drop falls past the model's layers would run the dense model: one clear error."""
    transform = TokenTransform.build("pdrop", {"pdrop_stage": 1.0})
    assert "pdrop_stage 1.0 puts every drop past this model's 4 decoder layers" in transform.model_problem("llava", 4)
    assert transform.model_problem("llava", 32) is not None
    assert TokenTransform.build("pdrop", {}).model_problem("llava", 4) is None
    own = TokenTransform.build("pdrop", {"pdrop_stage": 0.75, "pdrop_rank": "own"})
    assert "at most 0.5" in own.model_problem("llava", 4)
