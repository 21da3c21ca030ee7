"""DivPrune (Alvar et al., CVPR 2025): before the LLM, keep each image's most diverse visual tokens.

Released code (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`): after the projector, the image's visual tokens
(LLaVA-NeXT: base, tiles and newlines together) form a max-min diversity subset of round(n x ratio) tokens under
the cosine distance 1 - cos, chosen greedily (tamp.algorithms.diverse_subset). The kept tokens go on in their
original order, and the shortened sequence is the prompt: positions 0..T'-1 (`position_ids` is None there), so
decoding continues from T'. Release default ratio 0.098 (`SUBSET_RATIO`, 56 of LLaVA-1.5's 576).

Here each image, and each whole video, is one subset (the release handles one image per prompt); the distances are
in fp32 (the release's in the model's dtype). `divprune_positions` = release (default: re-packed positions, as the
release) or original (each kept token keeps its position, as a removal that changes nothing else). With mrope
(Qwen2-VL) a token always keeps its own 3-D position. Token budget: `divprune_keep` = the share, which is the
release's own knob (0.333 / 0.222 / 0.111 = 192 / 128 / 64 of 576).
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.diverse_subset import cosine_distances, gram_flops, max_min_subset, visual_runs
from tamp.algorithms.token_keep import keep_count
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod

POSITIONS = ("release", "original")


def choose(keep: float, repack: bool):
    """The drop before layer 0: every non-visual token, and each run's max-min diverse subset."""

    def pick(seen: DropInput) -> Kept:
        kept = ~seen.visual.clone()
        flops = 0.0
        for start, end in visual_runs(seen.visual.cpu(), None if seen.video is None else seen.video.cpu()):
            states = seen.hidden[start:end].float()
            chosen = max_min_subset(cosine_distances(states), keep_count(end - start, keep))
            kept[start + chosen] = True
            flops += gram_flops(end - start, states.shape[1])
        return Kept(torch.nonzero(kept).flatten(), flops=flops, repack=repack)

    return pick


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    repack = str(params["divprune_positions"]) == "release"
    return TokenPlan({0: Drop(choose(float(params["divprune_keep"]), repack))})


PARAMS = (
    Param("divprune_keep", float, 0.098, "share of each image's visual tokens kept (the release's SUBSET_RATIO)",
          check=lambda v: f"divprune_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("divprune_positions", str, "release", "release: the kept tokens re-packed at positions 0..T'-1 (the "
          "released code); original: each keeps its own position", choices=POSITIONS),
)

METHOD = TokenMethod(
    name="divprune", label="DivPrune", order=24,
    summary="keep each image's max-min diverse visual tokens (cosine distance), before the LLM",
    params=PARAMS, plan=plan, budget=lambda share: {"divprune_keep": share},
)
