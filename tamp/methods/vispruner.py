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
LLaVA-NeXT). The budget (`token_budget=SHARE`) sets `vispruner_keep` = SHARE and `vispruner_count` = image:
each image keeps round(SHARE x its visual tokens in the prompt), the newlines the release keeps counted in, the
rest patches chosen among those the prompt holds (LLaVA-NeXT's unpadded tiles), split over the crops in proportion
to them, at least one each: 12 / 8 / 6 of the tiny LLaVA-NeXT's 36 (4 newlines + 2 patches at 0.111; the per-crop
share gives 14 / 12 / 8); one crop of 576 (LLaVA-1.5): 192 / 128 / 64 either way. `vispruner_positions`:
release (re-packed) or original (each kept token at its own position). Families without a [CLS] token
(LLaVA-OneVision's SigLIP, Qwen2-VL / 2.5-VL) are refused, and so is video.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from tamp.algorithms.cls_select import vispruner_flops, vispruner_keep
from tamp.algorithms.token_keep import keep_count
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.inference.vision_attention_capture import ClsCapture, ImageRuns, cls_problem
from tamp.methods.base import Param, TokenMethod

POSITIONS = ("release", "original")
COUNTS = ("crop", "image")


def crop_counts(present: list[int], total: int) -> list[int]:
    """Patches each crop keeps when `total` are kept over crops holding `present` patches in the prompt: in
    proportion (the running total rounded), none more than it holds."""
    counts, seen, taken, whole = [], 0, 0, sum(present)
    for held in present:
        seen += held
        count = min(held, max(0, round(total * seen / whole) - taken)) if whole else 0
        counts.append(count)
        taken += count
    return counts


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep, ratio = float(params["vispruner_keep"]), float(params["vispruner_important"])
    repack = str(params["vispruner_positions"]) == "release"
    per_image = str(params["vispruner_count"]) == "image"
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
            sources = run.sources
            held = sources[sources >= 0].cpu()
            # image: each crop chooses among its patches the prompt holds, the image's count less its newlines
            where = [torch.sort(held[held // patches == k] % patches).values if per_image
                     else torch.arange(patches) for k in range(len(run.crops))]
            counts = (crop_counts([int(w.numel()) for w in where],
                                  max(keep_count(run.end - run.start, keep) - int((sources < 0).sum()), len(run.crops)))
                      if per_image else [count] * len(run.crops))
            for k, crop in enumerate(run.crops):
                at = where[k].to(last.hidden.device)
                chosen = vispruner_keep(last.rows[crop, :, 1:].mean(dim=0)[at], last.hidden[crop, 1:][at], counts[k],
                                        ratio)
                mask[k * patches + where[k][chosen.cpu()]] = True
                flops += last.flops + vispruner_flops(int(at.numel()), counts[k], ratio, last.hidden.shape[-1])
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
    Param("vispruner_count", str, "crop", "crop: vispruner_keep of each crop's patches (the release); image: of each "
          "image's visual tokens in the prompt, newlines counted in (the common token budget's)", choices=COUNTS),
)

METHOD = TokenMethod(
    config_problem=partial(cls_problem, method="vispruner"),
    name="vispruner", label="VisPruner", order=28,
    summary="keep each crop's important tokens by the vision encoder's [CLS] attention plus diverse ones "
            "(similar tokens removed), before the LLM (CLIP families)",
    params=PARAMS, plan=plan, budget=lambda share: {"vispruner_keep": share, "vispruner_count": "image"},
    attention=("the vision encoder's [CLS] row at its feature layer (mean over heads), formed from that layer's own "
               "query and key inside its attention call (tamp.inference.vision_attention_capture; the release asks "
               "for every layer's full matrix with output_attentions): one row per crop, O(T), under any kernel"),
)
