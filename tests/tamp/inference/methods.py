"""The token methods as the inference tests run them on the 4-layer tiny models: FastV dropping half after layer
2, AIM merging each image to half and pruning after layers 1 and 2 (75%, then 50% of the entering visual tokens),
YOPO sending the visual tokens through half of each MLP in layers 0-1 and no further; DivPrune, Random and Pool
keeping half of each image before layer 0 (the most diverse, a seeded draw, 2 x 2 means); PDrop's stages before
layers 1-3; DART's half after layer 2 with one image and one text pivot (the tiny Qwen models have 4 visual
tokens)."""

from __future__ import annotations

from typing import Any

from torch import nn

from tamp.inference.sequence_edit import SequenceEditor, TokenPlan
from tamp.inference.visual_mlp import VisualMlpSlice
from tamp.methods.aim import merge_drop, pagerank_score, prune_drop
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform

SETTINGS: dict[str, dict[str, Any]] = {
    "fastv": {"fastv_k": 2, "fastv_keep": 0.5},
    "aim": {"aim_merge_keep": 0.5, "aim_prune_start": 1, "aim_prune_step": 0.25, "aim_semantics": "removal",
            "aim_merge_schedule": "share"},
    "yopo": {"yopo_strategies": "layers+ffn", "yopo_layer": 2, "yopo_ffn_keep": 0.5, "yopo_semantics": "removal"},
    "divprune": {"divprune_keep": 0.5, "divprune_positions": "original"},
    "pdrop": {"pdrop_stage": 0.25, "pdrop_lambda": 0.5},
    "random": {"random_keep": 0.5, "random_seed": 0},
    "dart": {"dart_k": 2, "dart_keep": 0.5, "dart_image_pivots": 1, "dart_text_pivots": 1},  # tiny Qwen: 4 visual
    "pool": {"pool_stride": 2},
    "cdpruner": {"cdpruner_keep": 0.5, "cdpruner_positions": "original"},
}
METHODS = tuple(SETTINGS)
# methods whose parameters alone keep every token (their machinery still runs), and those whose choice costs no
# matmul (nothing to see in scoring_flops)
KEEP_ALL: dict[str, dict[str, Any]] = {"random": {"random_keep": 1.0}, "dart": {"dart_keep": 1.0, "dart_image_pivots": 1,
                                                                                  "dart_text_pivots": 1},
                                         "pool": {"pool_stride": 1}, "cdpruner": {"cdpruner_keep": 1.0}}
FREE_CHOICE = ("random", "pool")


def install(model: nn.Module, method: str) -> SequenceEditor:
    return TokenTransform.build(method, SETTINGS[method]).install(model)


def install_keep_all(model: nn.Module, method: str) -> SequenceEditor:
    """The method's machinery with nothing dropped: FastV keeping every token; AIM merging to 100% before layer 0
    and pruning at rate 1 after every layer (so its PageRank runs inside every attention call); YOPO's sliced
    MLP at 100% in every layer."""
    if method == "fastv":
        return TokenTransform.build("fastv", {"fastv_keep": 1.0}).install(model)
    if method == "divprune":  # every token kept, re-packed at its own position (the release's positions)
        return TokenTransform.build("divprune", {"divprune_keep": 1.0}).install(model)
    if method == "pdrop":  # a drop before each of layers 1-3, ranking by the last row and keeping every token
        return TokenTransform.build("pdrop", {"pdrop_lambda": 1.0}).install(model)
    if method in KEEP_ALL:
        return TokenTransform.build(method, KEEP_ALL[method]).install(model)
    adapter = get_adapter(model)
    layers = len(adapter.language_stack(model).layers)
    if method == "yopo":  # every MLP sliced at 100% for the visual rows, which then run apart from the text rows
        return SequenceEditor(model, adapter, TokenPlan({}, (VisualMlpSlice({i: 1.0 for i in range(layers)}),)))
    score = pagerank_score(0.1, 5)
    drops = {0: merge_drop(1.0), **{i: prune_drop(1.0, score) for i in range(1, layers)}}
    return SequenceEditor(model, adapter, TokenPlan(drops))
