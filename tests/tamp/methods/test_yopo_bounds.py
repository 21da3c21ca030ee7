"""YOPO's parameters that the model bounds: an explicit `yopo_layer` checked against the depth at plan time (from
the config, before loading or fitting), and a window wider than the visual grid costed as the grid."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from tamp.algorithms.attention_window import window_keys, window_neighbours
from tamp.methods import yopo
from tamp.token_transform import TokenTransform


def _layers(n: int) -> list[nn.Module]:
    config = LlamaConfig(hidden_size=32, intermediate_size=86, num_attention_heads=4, num_key_value_heads=4)
    return [LlamaDecoderLayer(config, i) for i in range(n)]


@pytest.mark.parametrize("layer, semantics, problem", [
    (5, "release", "--method yopo: yopo_layer 5 is beyond this model's 4 decoder layers; set it to at most 4 (or -1: "
                   "the layer from yopo_budget)"),
    (99, "removal", "--method yopo: yopo_layer 99 is beyond this model's 4 decoder layers"),
    (4, "release", None),  # the cut at the depth cuts nothing, as plan allows
    (0, "removal", None),
    (-1, "release", None),  # from the budget: needs the layers, checked at install
])
def test_an_explicit_yopo_layer_is_checked_against_the_depth(layer: int, semantics: str, problem: str | None) -> None:
    transform = TokenTransform.build("yopo", {"yopo_layer": layer, "yopo_semantics": semantics})
    got = transform.model_problem("llava-next", 4)
    assert got is None if problem is None else got is not None and got.startswith(problem), got
    assert transform.model_problem("llava-next", None) is None  # depth unknown: nothing to say yet


def test_the_plan_time_answer_is_the_plans_own_bound() -> None:
    """What model_problem accepts, plan accepts (the same 0..depth range), layer by layer."""
    layers = _layers(4)
    for layer in range(-1, 7):
        params = TokenTransform.build("yopo", {"yopo_layer": layer, "yopo_strategies": "layers+ffn+attn"}).params
        refused = TokenTransform("yopo", params).model_problem("llava-next", 4) is not None
        try:
            yopo.plan(yopo.model_defaults(params, layers), 4)
            planned = True
        except ValueError:
            planned = False
        assert refused == (not planned), layer


def _square_keys(rows: int, cols: int, window: int) -> int:
    """The slow statement: the most visual keys any token of a rows x cols grid has in its w x w window."""
    return int((window_neighbours(rows, cols, window, causal=False) >= 0).sum(1).max())


@pytest.mark.parametrize("rows, cols, window", [(3, 3, 3), (3, 3, 5), (3, 3, 99), (2, 4, 7), (24, 24, 5), (1, 5, 9)])
def test_a_windows_keys_are_at_most_its_grids(rows: int, cols: int, window: int) -> None:
    """window_keys bounds what a window really holds, and equals it where the window covers the grid or fits in it."""
    got = window_keys(window, rows * cols)
    assert got >= _square_keys(rows, cols, window)
    if window >= 2 * max(rows, cols) - 1 or window <= min(rows, cols):
        assert got == _square_keys(rows, cols, window)


def test_window_keys_refuses_an_even_window() -> None:
    with pytest.raises(ValueError, match="odd positive"):
        window_keys(4, 9)


def test_a_window_wider_than_the_grid_is_costed_as_the_grid() -> None:
    """A 3 x 3 grid (9 visual tokens of 40): a 5 x 5 or 99 x 99 window holds the grid's 9 keys, as a 3 x 3 one does,
    so the costed keys and the budget's cut layer are the clamped window's (not 25 or 9801 keys, past the dense
    40: the cut moved to an earlier layer)."""
    layers = _layers(32)
    fitted = {yopo.TOKENS: 40.0, yopo.VISUAL_TOKENS: 9.0}

    def params(window: int) -> dict:
        chosen = TokenTransform.build("yopo", {"yopo_strategies": "layers+ffn+attn", "yopo_budget": 0.3,
                                               "yopo_window": window}).params
        return {**chosen, **fitted}

    clamped = params(3)
    assert yopo._keys(clamped) == (40.0, 40.0)
    cut = yopo.model_defaults(clamped, layers)["yopo_layer"]
    for window in (5, 7, 99):
        assert yopo._keys(params(window)) == yopo._keys(clamped), window
        assert yopo.model_defaults(params(window), layers)["yopo_layer"] == cut, window
    # the same budget, had the window's full square been costed (what it was before): an earlier cut
    square = yopo.budget_layer(layers, 0.3, 0.5, None, (40.0, 40.0 - 9.0 + 25.0))
    assert square < cut
    # a window inside the grid keeps its w x w keys
    assert yopo._keys({**params(5), yopo.VISUAL_TOKENS: 576.0, yopo.TOKENS: 600.0}) == (600.0, 600.0 - 576.0 + 25.0)


def test_the_window_is_costed_within_the_dense_keys() -> None:
    """Whatever the window, a visual query never sees more keys with it than without it."""
    for visual in (1.0, 4.0, 9.0, 30.0):
        for window in (1, 3, 5, 9, 31):
            dense, kept = yopo._keys({**TokenTransform.build("yopo", {"yopo_window": window}).params,
                                      yopo.TOKENS: 40.0, yopo.VISUAL_TOKENS: visual})
            assert kept <= dense, (visual, window)
