"""DAS (diversity-aware sparsity). released: each linear's output-token diversity, the keep budget spread over
matrices in proportion to it (floor 1 - (target + delta)); paper: each block's output diversity, sparsity
inversely proportional to it. Wanda scoring.

Diversity terms are cosine similarities within and across modalities (tamp.algorithms.amia.modality_similarities),
averaged over the calibration samples in which each term exists.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from tamp.algorithms.allocations import das_allocation, das_scores
from tamp.algorithms.amia import modality_similarities
from tamp.engine.block_pass import run_blocks, sample_masks
from tamp.engine.capture import Captured, run_block
from tamp.engine.context import Context, block_names
from tamp.methods.base import Allocation, Param, WeightMethod
from tamp.methods.ecoflap import OVERSHOOT_BUG
from tamp.models.adapters import Stack, prunable_linears


class RunningTerms:
    """Per-key running means of similarity terms over the samples in which each term exists.

    Sums stay on the device (no host sync per sample and module); NaN marks a term absent from a sample.
    """

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self.counts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def add(self, key: str, terms: dict[str, torch.Tensor]) -> None:
        for term, value in terms.items():
            present = ~torch.isnan(value)
            v = torch.where(present, value.double(), torch.zeros((), dtype=torch.float64, device=value.device))
            if term in self.sums[key]:
                self.sums[key][term] += v
                self.counts[key][term] += present
            else:
                self.sums[key][term] = v
                self.counts[key][term] = present.long()

    def means(self, key: str) -> dict[str, float]:
        out = {}
        for term, total in self.sums[key].items():
            count = int(self.counts[key][term])
            if count:
                out[term] = float(total) / count
        return out


def _similarities(out: torch.Tensor, item: Captured, positive_only: bool) -> list[dict[str, torch.Tensor]]:
    terms = []
    for b in range(out.shape[0]):
        x = F.normalize(out[b].float(), dim=-1)
        terms.append(modality_similarities(x, sample_masks(item, b, out.shape[1], out.device),
                                           positive_only=positive_only))
    return terms


def allocate(ctx: Context) -> dict[str, float]:
    cfg = ctx.cfg
    running = RunningTerms()
    block_members: dict[str, list[str]] = {}
    for stack in ctx.stacks:
        def observe(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack) -> None:
            block = f"{stack.name}.{i}"
            block_members[block] = block_names(stack, i, layer)
            current: dict[str, Captured] = {}
            handles = []

            def hook(key: str, output: torch.Tensor) -> None:
                for terms in _similarities(output, current["item"], cfg.param("das_positive_only")):
                    running.add(key, terms)

            if cfg.param("das_mode") == "released":
                for name, mod in prunable_linears(layer).items():
                    handles.append(mod.register_forward_hook(
                        lambda m, a, o, key=f"{block}.{name}": hook(key, o)))
            with torch.inference_mode():
                for item in items:
                    current["item"] = item
                    item.hidden = run_block(layer, item, ctx.device)
                    if cfg.param("das_mode") == "paper":
                        for t in _similarities(item.hidden, item, cfg.param("das_positive_only")):
                            running.add(block, t)
            for h in handles:
                h.remove()

        run_blocks(ctx, stack, observe, desc=f"DAS diversity {stack.name}")
    target, max_s = cfg.sparsity, cfg.sparsity + cfg.param("das_max_delta")
    if cfg.param("das_mode") == "released":
        scores = das_scores({name: running.means(name) for name in ctx.linears})
        numels = {name: mod.weight.numel() for name, mod in ctx.linears.items()}
        ctx.result.details["das_scores"] = scores
        return das_allocation(scores, numels, target, max_s, mode="released",
                              released_overshoot_bug=cfg.param("allocation_overshoot_bug"))
    scores = das_scores({block: running.means(block) for block in block_members})
    numels = {block: sum(ctx.linears[n].weight.numel() for n in names) for block, names in block_members.items()}
    ctx.result.details["das_scores"] = scores
    per_block = das_allocation(scores, numels, target, max_s, mode="per-layer-inverse")
    return {n: per_block[block] for block, names in block_members.items() for n in names}


PARAMS = (
    Param("das_mode", str, "released", "released (per-linear output diversity, keep budget by score) | paper "
          "(per-layer output diversity, sparsity ~ 1 / importance)", choices=("released", "paper")),
    Param("das_max_delta", float, 0.1, "no matrix goes above target + delta sparsity"),
    Param("das_positive_only", bool, True, "released: within-modality means over positive similarities only"),
    OVERSHOOT_BUG,
)

METHOD = WeightMethod(
    name="das", label="DAS", order=6, summary="diversity-aware per-matrix sparsity, Wanda scoring",
    params=PARAMS, allocation="das", scoring="wanda", allocate=Allocation(allocate),
)
