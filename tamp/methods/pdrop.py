"""PyramidDrop (Xing et al., CVPR 2025): drop visual tokens in stages inside the LLM, each stage keeping lambda of
the last, ranked by the attention the last instruction token pays them.

Released code (Cooperx521/PyramidDrop, `llava/model/modeling_llama_pdrop.py`, `pdrop_rank_drop`; LLaVA-1.5-7B
and LLaVA-NeXT scripts: `--layer_list [8,16,24] --image_token_ratio_list [0.5,0.25,0.125]`): after layers 7, 15
and 23 (0-based; it drops before 8, 16, 24) it ranks the image tokens by the softmax attention of the prompt's
last token (its "last instruction token", `prompt_len + image tokens - 1`, the sequence's last token in a
prefill) averaged over heads, keeps the top int(n x ratio_k) of the n image tokens in their order, and removes
the rest from the sequence. It scores with the *next* layer's own query and key (that layer's input norm and
q/k projections run once more on the states before the drop); here the score comes through the AttentionScore
seam, computed inside an attention call: `pdrop_rank` = previous (default: the drop before layer l is ranked by
layer l - 1's attention, so every layer runs on the release's token count) or own (ranked by layer l's own
attention over the undropped sequence, the release's scores exactly, and the drop moves to before l + 1).

Depth: the drops come before layers k x `pdrop_stage` x depth (k = 1..`pdrop_drops`, rounded; 0.25 of 32 = 8,
16, 24; of the tiny models' 4 layers: 1, 2, 3). Token budget: the paper compares at a layer-averaged 192 / 128
/ 64 tokens; the budget sets (`pdrop_stage`, `pdrop_lambda`) with that average (tamp.algorithms.pyramid_schedule
.budget_schedule: the release's layers with a larger lambda above its own 0.469, its lambda with earlier stages
down to 0.211, a smaller lambda below) and `pdrop_average` = the share: at the model's depth, with the stage
layers that rounding gives, lambda is refitted to the integer schedule (tamp.algorithms.pyramid_schedule
.fit_lambda) so that the visual tokens per layer, averaged over every layer, come nearest SHARE x n (576 over 32
layers: 191.8 / 128.1 / 63.6 for 192 / 128 / 64). Layer 0 always runs on all n (a drop is ranked by the layer
before it), so on the tiny models' 4 layers no schedule averages below n / 4: 0.333 -> 12 of 36 (36, 6, 3, 3),
0.222 and 0.111 -> 9 (every visual token dropped after layer 0). Every visual token of the prompt (all images
and video) is one pool; the release ranks the first image only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from tamp.algorithms.pyramid_schedule import (
    RELEASE_DROPS,
    RELEASE_LAMBDA,
    RELEASE_STAGE,
    budget_schedule,
    fit_lambda,
    stage_count,
    stage_layers,
)
from tamp.algorithms.token_keep import top_visual
from tamp.engine.attention import LAST_ROW
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod

RANKS = ("previous", "own")


def stage_drop(lam: float | Callable[[int], float], k: int) -> Drop:
    """After the k-th stage: the top int(n_entry x lambda^k) visual tokens by last-row attention, and all text
    (lambda given, or fitted to the n_entry visual tokens that entered the LLM)."""

    def choose(seen: DropInput) -> Kept:
        assert seen.scores is not None
        n = seen.visual_at_entry
        count = min(stage_count(n, lam(n) if callable(lam) else lam, k), int(seen.visual.sum()))
        return Kept(top_visual(seen.scores, seen.visual, count))

    return Drop(choose, LAST_ROW)


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    lam, shift = float(params["pdrop_lambda"]), int(str(params["pdrop_rank"]) == "own")
    layers = stage_layers(float(params["pdrop_stage"]), int(params["pdrop_drops"]), num_layers)
    at = {layer + shift: k for layer, k in layers.items() if layer + shift < num_layers}
    average = params["pdrop_average"]
    fitted = lam if average is None else lru_cache(maxsize=8)(
        lambda n: fit_lambda(n, at, num_layers, float(average)))
    drops = {layer: stage_drop(fitted, k) for layer, k in at.items()}
    if not drops:  # a plan that drops nothing would evaluate the dense model under PDrop's name
        raise ValueError(f"pdrop_stage {params['pdrop_stage']} puts every drop past this model's {num_layers} decoder "
                         f"layers (pdrop_rank={params['pdrop_rank']}); set pdrop_stage to at most "
                         f"{(num_layers - 1 - shift) / num_layers:.3g}")
    return TokenPlan(drops)


def budget(share: float) -> dict[str, Any]:
    stage, lam = budget_schedule(share)
    return {"pdrop_stage": stage, "pdrop_lambda": lam, "pdrop_average": share}


PARAMS = (
    Param("pdrop_stage", float, RELEASE_STAGE, "drop k comes before layer k x this share of the depth (the "
          "release's 8, 16, 24 of 32 layers)",
          check=lambda v: f"pdrop_stage must be in (0, 1], got {v}" if not 0 < v <= 1 else None),
    Param("pdrop_drops", int, RELEASE_DROPS, "drops (stages - 1; the release: 3)",
          check=lambda v: f"pdrop_drops must be at least 1, got {v}" if v < 1 else None),
    Param("pdrop_lambda", float, RELEASE_LAMBDA, "share of the visual tokens each drop keeps (the release's 0.5: "
          "50 / 25 / 12.5 %)", check=lambda v: f"pdrop_lambda must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("pdrop_rank", str, "previous", "previous: ranked by the attention of the layer before the drop; own: by "
          "the stage layer's own attention over the undropped tokens (the release's scores), dropping one layer "
          "later", choices=RANKS),
    Param("pdrop_average", float, None, "share of the visual tokens kept on average over the layers (the common "
          "token budget's): lambda refitted at the model's depth to the integer schedule (unset: pdrop_lambda)",
          check=lambda v: f"pdrop_average must be in (0, 1] (or unset), got {v}" if v is not None and not 0 < v <= 1
          else None),
)

METHOD = TokenMethod(
    name="pdrop", label="PDrop", order=25,
    summary="drop visual tokens in stages inside the LLM (lambda of the last each), ranked by the last token's attention",
    params=PARAMS, plan=plan, budget=budget,
    attention=("the last prompt token's row of each stage layer's attention (mean over heads), from that layer's own"
               " query and key (LAST_ROW): one row, O(T), never the full matrix, under any kernel"),
)
