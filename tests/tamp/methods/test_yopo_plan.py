"""YOPO's plan: the layer a compute budget picks, the strategies alone, and its parameter checks."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from tamp.errors import TampError
from tamp.inference.sequence_edit import TokenPlan
from tamp.inference.visual_attention import VisualAttentionPatch
from tamp.inference.visual_mlp import VisualMlpSlice
from tamp.methods import yopo
from tamp.token_transform import TokenTransform


def _layers(n: int) -> list[nn.Module]:
    config = LlamaConfig(hidden_size=32, intermediate_size=86, num_attention_heads=4, num_key_value_heads=4)
    return [LlamaDecoderLayer(config, i) for i in range(n)]


def _mlp(plan: TokenPlan) -> dict[int, float]:
    """The FFN shares YOPO's plan installs (none: {})."""
    part = plan.part(VisualMlpSlice)
    return part.keep if part else {}


def _heads(plan: TokenPlan) -> dict[int, tuple[int, ...]]:
    part = plan.part(VisualAttentionPatch)
    return part.heads if part else {}


def _window(plan: TokenPlan) -> dict[int, int]:
    part = plan.part(VisualAttentionPatch)
    return part.window if part else {}


def test_the_budget_picks_the_last_layer_within_it() -> None:
    """Per layer and visual token: attention 4 x 32 x 32 = 4096 weights, MLP 3 x 32 x 86 = 8256. Keeping half the
    MLP, a layer costs 4096 + 4128 = 8224 of 12352: within 25% of 32 layers' cost fit 12 layers (12 x 8224 =
    98,688 <= 98,816), not 13."""
    layers = _layers(32)
    assert yopo.budget_layer(layers, 0.25, 0.5) == 12
    assert yopo.budget_layer(layers, 0.25, 1.0) == 8
    assert yopo.budget_layer(layers, 1.0, 1.0) == 32 and yopo.budget_layer(layers, 0.0, 0.5) == 0


def _plan(layers: list[nn.Module], **overrides):
    transform = TokenTransform.build("yopo", {"yopo_semantics": "removal", **overrides})
    return yopo.plan(yopo.model_defaults(transform.params, layers), len(layers))


def test_strategies_alone() -> None:
    layers = _layers(32)
    both = _plan(layers, yopo_strategies="layers+ffn")
    assert list(both.drops) == [12] and both.drops[12].score is None and sorted(_mlp(both)) == list(range(12))
    only_layers = _plan(layers, yopo_strategies="layers")
    assert list(only_layers.drops) == [8] and not _mlp(only_layers)
    only_ffn = _plan(layers, yopo_strategies="ffn")
    assert not only_ffn.drops and _mlp(only_ffn) == {i: 0.5 for i in range(32)}
    explicit = _plan(layers, yopo_strategies="layers+ffn", yopo_layer=20, yopo_ffn_keep=1.0)
    assert list(explicit.drops) == [20] and not _mlp(explicit)


def test_heads_and_window_in_the_plan_and_the_budget() -> None:
    """Removal: pruned heads apply before the cut only; a layer keeping half its heads costs 2048 + 2048 x 0.5 + 4128 =
    7200 per visual token (q and o are half of the attention weights), so 25% of 32 layers' cost reaches layer 13."""
    layers = _layers(32)
    fitted = {yopo.PRUNED_HEADS: [[0, 1]] * 32}
    params = {**TokenTransform.build("yopo", {"yopo_strategies": "layers+ffn+heads+attn",
                                              "yopo_semantics": "removal"}).params, **fitted}
    resolved = yopo.model_defaults(params, layers)
    assert resolved["yopo_layer"] == yopo.budget_layer(layers, 0.25, 0.5, [0.5] * 32) == 13
    plan = yopo.plan(resolved, 32)
    assert _heads(plan) == {i: (0, 1) for i in range(13)} and _window(plan) == {i: 5 for i in range(13)}
    assert not plan.part(VisualAttentionPatch).causal and list(plan.drops) == [13]
    with pytest.raises(ValueError, match="needs the heads chosen at prune time"):
        yopo.plan(yopo.model_defaults(TokenTransform.build("yopo", {"yopo_strategies": "heads"}).params, layers), 32)
    assert yopo.needs_fit({**params, "yopo_strategies": "heads"})
    assert not yopo.needs_fit({**params, "yopo_strategies": "heads", "yopo_heads_keep": 1.0})
    assert not yopo.needs_fit({**params, "yopo_strategies": "layers+ffn"})


def test_release_keeps_the_visual_tokens_and_masks_after_the_softmax() -> None:
    """Release (the default): nothing leaves the sequence; the FFN slice, the pruned heads and the window run in
    every layer; the pruned heads before the cut and every head from it on zero their visual keys."""
    layers = _layers(32)
    fitted = {yopo.PRUNED_HEADS: [[0, 1]] * 32}
    params = {**TokenTransform.build("yopo", {"yopo_strategies": "layers+ffn+heads+attn"}).params, **fitted}
    assert params["yopo_semantics"] == "release"
    plan = yopo.plan(yopo.model_defaults(params, layers), 32)
    patch = plan.part(VisualAttentionPatch)
    assert not plan.drops and _mlp(plan) == {i: 0.5 for i in range(32)}
    assert _heads(plan) == {i: (0, 1) for i in range(32)} and _window(plan) == {i: 5 for i in range(32)}
    assert patch.cut_from == 13 and patch.zeroed == {i: (0, 1) for i in range(13)}
    assert [patch.zeroed_heads(i, 4) for i in (12, 13, 31)] == [(0, 1), (0, 1, 2, 3), (0, 1, 2, 3)]
    only_layers = yopo.plan(yopo.model_defaults(
        TokenTransform.build("yopo", {"yopo_strategies": "layers"}).params, layers), 32)
    assert not only_layers.drops and only_layers.part(VisualAttentionPatch).cut_from == 8
    assert not only_layers.part(VisualAttentionPatch).heads


def test_each_strategy_alone() -> None:
    layers = _layers(32)
    fitted = {yopo.PRUNED_HEADS: [[0]] * 32}
    plans = {name: yopo.plan(yopo.model_defaults({**TokenTransform.build("yopo", {"yopo_strategies": name,
                                                                               "yopo_semantics": "removal"}).params,
                                                  **fitted},
                                          layers), 32) for name in yopo.STRATEGIES}
    assert list(plans["layers"].drops) == [8] and not _heads(plans["layers"]) and not _window(plans["layers"])
    assert not plans["ffn"].drops and len(_mlp(plans["ffn"])) == 32 and not _heads(plans["ffn"])
    assert _heads(plans["heads"]) == {i: (0,) for i in range(32)} and not plans["heads"].drops \
        and not _mlp(plans["heads"]) and not _window(plans["heads"])
    assert _window(plans["attn"]) == {i: 5 for i in range(32)} and not _heads(plans["attn"])


def test_the_budget_weighs_the_window_at_the_calibration_sequence() -> None:
    """With the fit's mean sequence (600 tokens, 576 visual) the budget counts attention's matmuls per visual token:
    dense 2 x 32 (4 heads x 8) x 600 per layer on top of the 12352 weights; windowed 2 x 32 x (24 + 25) -- so the
    same 10% reaches layer 14 rather than 3."""
    layers = _layers(32)
    keys = {yopo.TOKENS: 600.0, yopo.VISUAL_TOKENS: 576.0}
    base = TokenTransform.build("yopo", {"yopo_strategies": "layers+ffn", "yopo_budget": 0.1}).params
    windowed = TokenTransform.build("yopo", {"yopo_strategies": "layers+ffn+attn", "yopo_budget": 0.1}).params
    dense_cut = yopo.model_defaults({**base, **keys}, layers)["yopo_layer"]
    window_cut = yopo.model_defaults({**windowed, **keys}, layers)["yopo_layer"]
    total = 0.1 * 32 * (12352 + 64 * 600)
    assert window_cut == int(total // (8224 + 64 * 49)) == 14 and dense_cut == int(total // (8224 + 64 * 600)) == 3


@pytest.mark.parametrize("overrides,message", [
    ({"yopo_strategies": "heads+eyes"}, "unknown yopo_strategies 'heads+eyes'; join any of layers, ffn, heads, attn"),
    ({"yopo_strategies": "ffn+ffn"}, "unknown yopo_strategies 'ffn+ffn'"),
    ({"yopo_heads_keep": 1.5}, "yopo_heads_keep must be in [0, 1]"),
    ({"yopo_window": 4}, "yopo_window must be an odd size"),
    ({"yopo_budget": 2.0}, "yopo_budget must be in [0, 1]"),
    ({"yopo_layer": -2}, "yopo_layer must be -1"),
    ({"yopo_ffn_keep": 0.0}, "yopo_ffn_keep must be in (0, 1]"),
    ({"yopo_semantics": "paper"}, "yopo_semantics must be one of release, removal, got 'paper'"),
])
def test_bad_parameters(overrides: dict, message: str) -> None:
    with pytest.raises(TampError) as err:
        TokenTransform.build("yopo", overrides)
    assert message in str(err.value)


def test_the_default_is_the_whole_method_and_needs_its_fit() -> None:
    """`--method yopo` is the paper's YOPO: all four strategies; its heads come from calibration data, so installing
    it unfitted is refused with the reason."""
    params = TokenTransform.build("yopo").params
    assert yopo.strategies(params) == set(yopo.STRATEGIES) and yopo.needs_fit(params)
    with pytest.raises(ValueError, match="heads chosen at prune time"):
        yopo.plan(yopo.model_defaults(params, _layers(4)), 4)
