"""random: keep a uniform random share of each image's (and each video frame's) visual tokens, before the LLM.

The baseline UniPruneBench and LightCompress report (random pruning is a strong one; OCR suffers most). It acts
before layer 0, on the projected visual tokens, as those benchmarks' image-level random baseline does: each image
(each video frame, LLaVA-NeXT's base tile, tiles and row newlines together as its image) keeps round(n x keep) of
its n tokens, drawn without replacement; text is never dropped and the survivors keep their positions.

LightCompress (ModelTC/LightCompress, `token_reduction/random.py`) draws `torch.randperm` from the global RNG,
seeded once per run, at a configured block and over the one image's token span. Here one CPU generator is seeded
with `random_seed` (recorded in the artifact) when the transform is installed and each prefill draws from it in
turn, so a run is repeatable (lmms-eval's fixed sample order, batch size 1) and the same seed draws the same
tokens on any device. Every image keeps its own share, so multi-image and video prompts keep each frame.

Budget: `token_budget=SHARE` sets `random_keep` = SHARE (0.333 / 0.222 / 0.111 keep 192 / 128 / 64 of
LLaVA-1.5's 576), rounded per image.
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.token_sample import random_group_keep
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    """One drop before layer 0; its generator lives as long as this plan's editor (one install)."""
    keep = float(params["random_keep"])
    generator = torch.Generator().manual_seed(int(params["random_seed"]))

    def choose(seen: DropInput) -> Kept:
        return Kept(random_group_keep(seen.groups, seen.visual, keep, generator))  # no matmul: flops 0

    return TokenPlan({0: Drop(choose)})


PARAMS = (
    Param("random_keep", float, 0.5, "share of each image's (video frame's) visual tokens kept, drawn uniformly",
          check=lambda v: f"random_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("random_seed", int, 0, "seed of the CPU generator the draws come from (one stream per installed model)"),
)

METHOD = TokenMethod(
    name="random", label="Random", order=30,
    summary="keep a seeded uniform random share of each image's visual tokens, before the LLM",
    params=PARAMS, plan=plan, budget=lambda share: {"random_keep": share},
)
