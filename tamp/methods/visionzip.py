"""VisionZip (Yang et al., CVPR 2025): before the LLM, each crop keeps its dominant tokens (the patches its [CLS]
token attends to most at the vision feature layer, and [CLS] itself) plus a few contextual tokens merged from the
rest by the similarity of their keys.

Released code (JIA-Lab-research/VisionZip, formerly dvlab-research; `visionzip/clip_encoder.py`, `utils.py`,
`llava_arch.py`): CLIP runs with `output_attentions=True`; at layer -2 (LLaVA's feature layer) the [CLS] row
summed over heads picks `dominant - 1` patches, kept with [CLS] in their order; the contextual tokens are made by
tamp.algorithms.cls_select.visionzip_select; the crop's tokens [CLS, dominant..., contextual...] go through the
projector and replace its 576 in the prompt, which is re-packed (positions 0..T'-1). LLaVA-NeXT (`restore_image_
features_sorted`): the base tile as above, then the tiles' dominant tokens in the order of the full (not
unpadded) tile grid, then the tiles' [CLS] tokens, then their contextual tokens; no newline tokens. README
defaults: 54 + 10 = 64, 108 + 20 = 128, 162 + 30 = 192 per crop (`visionzip(model, dominant=54, contextual=10)`).

Here the [CLS] row comes from the feature layer's own query and key (tamp.inference.vision_attention_capture, any
attention kernel, no [T, T] matrix); the chosen and merged feature-layer states (in fp32; the release's in the
model's dtype) are projected by the model's projector and take the first slots of the image's run, re-packed as
the release. Token budget: `visionzip_keep` = the share of each crop's patches retained (64 / 576 = 0.111), of
which `visionzip_contextual` (10 / 64, the README's ratio at every budget) are contextual. A share keeping every
patch leaves the image untouched. The budget (`token_budget=SHARE`) sets `visionzip_keep` = SHARE and
`visionzip_count` = image: each image keeps round(SHARE x its visual tokens in the prompt) (LLaVA-NeXT's newlines
counted, as every other method counts them, though VisionZip drops them), spread over its crops (the first ones
one more): 12 / 8 / 4 of the tiny LLaVA-NeXT's 36 where the per-crop share of 16 patches gives 10 / 8 / 4; one
crop of 576 (LLaVA-1.5): 192 / 128 / 64 either way. Families without a [CLS] token (LLaVA-OneVision's SigLIP, Qwen2-VL / 2.5-VL:
the release has no path for them) are refused; so is video (the release's LLaVA path is image only).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from tamp.algorithms.cls_select import visionzip_flops, visionzip_select
from tamp.algorithms.token_keep import keep_count
from tamp.errors import TampError
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.inference.vision_attention_capture import (
    ClsAttention,
    ClsCapture,
    ImageRun,
    ImageRuns,
    cls_problem,
    linear_flops,
    projector,
)
from tamp.methods.base import Param, TokenMethod

CONTEXTUAL = 10 / 64  # the README's 10 of 64 (20 of 128, 30 of 192)
COUNTS = ("crop", "image")


def split(patches: int, keep: float, contextual: float) -> tuple[int, int]:
    """(dominant patches besides [CLS], contextual tokens) a crop of `patches` keeps: round(patches x keep) tokens
    in all, round(that x contextual) of them contextual, [CLS] among the dominant ones."""
    return split_total(keep_count(patches, keep), contextual)


def crop_totals(tokens: int, crops: int, keep: float) -> list[int]:
    """Tokens each crop keeps when the image keeps round(tokens x keep) in all (`visionzip_count` = image): an even
    split, the first crops one more."""
    each, extra = divmod(keep_count(tokens, keep), max(1, crops))
    return [each + int(i < extra) for i in range(crops)]


def split_total(total: int, contextual: float) -> tuple[int, int]:
    """`split` of a crop's token count: (dominant patches besides [CLS], contextual tokens)."""
    merged = int(round(total * contextual))
    return max(0, total - merged - 1), merged


def image_features(last: ClsAttention, run: ImageRun, splits: list[tuple[int, int]]) -> tuple[torch.Tensor, float]:
    """One image's feature-layer states in the release's order, before the projector, and the FLOPs choosing cost;
    splits: each crop's (dominant, contextual)."""
    patches = last.hidden.shape[1] - 1
    picks = []
    flops = 0.0
    for crop, (dominant, contextual) in zip(run.crops, splits):
        chosen, merged = visionzip_select(last.rows[crop, :, 1:].sum(dim=0), last.keys[crop], last.hidden[crop],
                                          dominant, contextual)
        picks.append((chosen, merged))
        flops += last.flops + visionzip_flops(patches, dominant, contextual, last.keys.shape[-1])
    base, (chosen, merged) = run.crops[0], picks[0]
    parts = [last.hidden[base, :1], last.hidden[base, 1 + chosen], merged]
    if len(run.crops) > 1:  # the tiles' dominant tokens in the full tile grid's row-major order, then [CLS], merged
        side = math.isqrt(patches)
        order, states = [], []
        for t, (crop, (chosen, _)) in enumerate(zip(run.crops[1:], picks[1:])):
            row, col = divmod(t, run.wide)
            order.append((row * side + chosen // side) * (run.wide * side) + col * side + chosen % side)
            states.append(last.hidden[crop, 1 + chosen])
        grid = torch.cat(order)
        parts.append(torch.cat(states)[torch.argsort(grid)])
        parts += [last.hidden[crop, :1] for crop in run.crops[1:]] + [merged for _, merged in picks[1:]]
    return torch.cat(parts), flops


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep, share = float(params["visionzip_keep"]), float(params["visionzip_contextual"])
    per_image = str(params["visionzip_count"]) == "image"
    capture = ClsCapture("visionzip")
    runs = ImageRuns(capture)

    def choose(seen: DropInput) -> Kept:
        last = capture.last
        image_runs = runs(seen.visual, seen.video)
        assert last is not None and capture.editor is not None
        patches = last.hidden.shape[1] - 1
        if keep_count(patches, keep) >= patches:  # every patch kept: the image as it is (its [CLS] rows were run)
            return Kept(torch.arange(seen.hidden.shape[0], device=seen.hidden.device),
                        flops=sum(len(run.crops) for run in image_runs) * last.flops)
        proj = projector(capture.editor.model)
        weight = next(proj.parameters())
        kept, hidden, flops = ~seen.visual.clone(), seen.hidden.clone(), 0.0
        for run in image_runs:
            splits = ([split_total(t, share) for t in crop_totals(run.end - run.start, len(run.crops), keep)]
                      if per_image else [split(patches, keep, share)] * len(run.crops))
            features, cost = image_features(last, run, splits)
            if features.shape[0] > run.end - run.start:
                raise TampError(f"visionzip: an image keeps {features.shape[0]} tokens (its {len(run.crops)} crops) "
                                f"but has {run.end - run.start} slots; lower visionzip_keep")
            with torch.no_grad():
                states = proj(features.to(weight.device, weight.dtype)).to(hidden.dtype)
            hidden[run.start:run.start + states.shape[0]] = states
            kept[run.start:run.start + states.shape[0]] = True
            flops += cost + states.shape[0] * linear_flops(proj)
        positions = torch.nonzero(kept).flatten()
        return Kept(positions, hidden[positions], flops=flops, repack=True)

    return TokenPlan({0: Drop(choose)}, (capture,))


def _share(name: str, low_open: bool):
    def check(v: float) -> str | None:
        ok = (0 < v <= 1) if low_open else (0 <= v < 1)
        return None if ok else f"{name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {v}"
    return check


PARAMS = (
    Param("visionzip_keep", float, 64 / 576, "share of each crop's patches retained as tokens, dominant ([CLS] "
          "included) plus contextual (the README's 54 + 10 = 64 of 576)", check=_share("visionzip_keep", True)),
    Param("visionzip_contextual", float, CONTEXTUAL, "share of the retained tokens that are contextual (merged) "
          "tokens (the README's 10 of 64, 20 of 128, 30 of 192)", check=_share("visionzip_contextual", False)),
    Param("visionzip_count", str, "crop", "crop: visionzip_keep of each crop's patches (the release); image: of each "
          "image's visual tokens in the prompt, spread over its crops (the common token budget's)", choices=COUNTS),
)

METHOD = TokenMethod(
    config_problem=partial(cls_problem, method="visionzip"),
    name="visionzip", label="VisionZip", order=27,
    summary="keep each crop's dominant tokens by the vision encoder's [CLS] attention, merge the rest into a few "
            "contextual tokens, before the LLM (CLIP families)",
    params=PARAMS, plan=plan, budget=lambda share: {"visionzip_keep": share, "visionzip_count": "image"},
    attention=("the vision encoder's [CLS] row at its feature layer (each head), formed from that layer's own query "
               "and key inside its attention call (tamp.inference.vision_attention_capture; the release asks for "
               "every layer's full matrix with output_attentions): one row per crop, O(T), under any kernel"),
)
