"""VisPruner (Zhang et al., ICCV 2025): before the LLM, each crop keeps its important tokens (the patches its
[CLS] token attends to most at the vision feature layer) and diverse tokens (of the rest, those left after
repeatedly removing the ones most similar to another).

Released code (Theia-4869/VisPruner, `llava/model/llava_arch.py` `encode_images`, `multimodal_encoder/
clip_encoder.py`): CLIP runs with `output_attentions=True`; at the feature layer (-2) the [CLS] row, averaged over
heads, ranks the patches; `visual_token_num` x `important_ratio` (int) of them are important, the others diverse,
chosen by tamp.algorithms.cls_select.vispruner_keep on the patches' feature-layer states (before the projector).
The kept tokens go on in their order (LLaVA-NeXT: each crop's mask, the tiles' through the unpadded grid, every
newline kept), and the shortened prompt is re-packed (positions 0..T'-1). Release defaults: `visual_token_num`
576 (every token; the paper's tables use 192 / 128 / 64), `important_ratio` 0.5.

Here the [CLS] row comes from the feature layer's own query and key (tamp.inference.vision_attention_capture, any
attention kernel, no [T, T] matrix). Token budget: `vispruner_keep` = the share of each crop's patches kept
(0.333 / 0.222 / 0.111 = 192 / 128 / 64 of 576, `visual_token_num` per crop as the release counts it on
LLaVA-NeXT). `vispruner_positions`: release (re-packed) or original (each kept token at its own position).
Families without a [CLS] token (LLaVA-OneVision's SigLIP, Qwen2-VL / 2.5-VL) are refused, and so is video.
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.cls_select import vispruner_flops, vispruner_keep
from tamp.algorithms.token_keep import keep_count
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.inference.vision_attention_capture import ClsCapture, ImageRuns
from tamp.methods.base import Param, TokenMethod

POSITIONS = ("release", "original")


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep, ratio = float(params["vispruner_keep"]), float(params["vispruner_important"])
    repack = str(params["vispruner_positions"]) == "release"
    capture = ClsCapture("vispruner")
    runs = ImageRuns(capture)

    def choose(seen: DropInput) -> Kept:
        last = capture.last
        image_runs = runs(seen.visual, seen.video)
        assert last is not None
        patches = last.hidden.shape[1] - 1
        count = keep_count(patches, keep)
        kept, flops = ~seen.visual.clone(), 0.0
        for run in image_runs:
            mask = torch.zeros(len(run.crops) * patches, dtype=torch.bool)
            for k, crop in enumerate(run.crops):
                chosen = vispruner_keep(last.rows[crop, :, 1:].mean(dim=0), last.hidden[crop, 1:], count, ratio)
                mask[k * patches + chosen.cpu()] = True
                flops += last.flops + vispruner_flops(patches, count, ratio, last.hidden.shape[-1])
            sources = run.sources
            kept[run.start:run.end] = ((sources < 0) | mask[sources.clamp_min(0)]).to(kept.device)
        return Kept(torch.nonzero(kept).flatten(), flops=flops, repack=repack)

    return TokenPlan({0: Drop(choose)}, (capture,))


PARAMS = (
    Param("vispruner_keep", float, 64 / 576, "share of each crop's patches kept, important plus diverse (the "
          "release's visual_token_num per crop: 64 of 576)",
          check=lambda v: f"vispruner_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("vispruner_important", float, 0.5, "share of the kept tokens chosen by [CLS] attention, the rest for "
          "diversity (the release's important_ratio)",
          check=lambda v: f"vispruner_important must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("vispruner_positions", str, "release", "release: the kept tokens re-packed at positions 0..T'-1 (the "
          "released code); original: each keeps its own position", choices=POSITIONS),
)

METHOD = TokenMethod(
    name="vispruner", label="VisPruner", order=28,
    summary="keep each crop's important tokens by the vision encoder's [CLS] attention plus diverse ones "
            "(similar tokens removed), before the LLM (CLIP families)",
    params=PARAMS, plan=plan, budget=lambda share: {"vispruner_keep": share},
    attention=("the vision encoder's [CLS] row at its feature layer (mean over heads), formed from that layer's own "
               "query and key inside its attention call (tamp.inference.vision_attention_capture; the release asks "
               "for every layer's full matrix with output_attentions): one row per crop, O(T), under any kernel"),
)
