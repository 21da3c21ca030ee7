"""FastV (Chen et al., ECCV 2024): after layer K, keep the visual tokens the last token attends to most.

The released code (pkunlp-icler/FastV) ranks the image tokens by the attention that the last token of the
sequence pays them in the layer before K (averaged over heads), keeps the top ones and masks the rest out of
every later layer. Paper defaults: K = 2, R = 50% dropped. Here the dropped tokens leave the sequence
(tamp.inference.sequence_edit), so later layers really run on fewer tokens.
"""

from __future__ import annotations

from typing import Any

from tamp.algorithms.token_keep import top_visual_keep
from tamp.engine.attention import LAST_ROW
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep = float(params["fastv_keep"])

    def choose(seen: DropInput) -> Kept:
        assert seen.scores is not None
        return Kept(top_visual_keep(seen.scores, seen.visual, keep))

    return TokenPlan({int(params["fastv_k"]): Drop(choose, LAST_ROW)})


PARAMS = (
    Param("fastv_k", int, 2, "tokens are dropped before this layer (0-based), ranked by the layer before it",
          check=lambda v: f"fastv_k must be at least 1, got {v}" if v < 1 else None),
    Param("fastv_keep", float, 0.5, "fraction of the visual tokens kept (the paper's R = 50% drops half)",
          check=lambda v: f"fastv_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
)

METHOD = TokenMethod(
    name="fastv", label="FastV", order=20, summary="drop the visual tokens the last token attends to least, after layer K",
    params=PARAMS, plan=plan, budget=lambda share: {"fastv_keep": share},
    attention=("the last prompt token's row of layer K - 1's attention (mean over heads), computed from that layer's"
               " own query and key inside its attention call (tamp.engine.attention, LAST_ROW): one row, O(T), never"
               " the full matrix, under any kernel"),
)
