"""OWL: one sparsity per decoder block from its share of outlier Wanda metrics (more outliers -> less pruning).

Reference luuyin/OWL: M = 5, lambda = 0.08. The arithmetic is tamp.algorithms.allocations; this file gathers
the metric with one observing sweep of the dense model and maps blocks to matrix names.
"""

from __future__ import annotations

import torch
from torch import nn

from tamp.algorithms.allocations import outlier_ratio, owl_block_sparsities
from tamp.engine.block_pass import run_blocks
from tamp.engine.capture import Captured, run_block
from tamp.engine.context import Context, block_names
from tamp.engine.stats import StatsCollector
from tamp.methods.base import Allocation, Param, WeightMethod
from tamp.models.adapters import Stack, prunable_linears


def allocate(ctx: Context) -> dict[str, float]:
    cfg = ctx.cfg
    targets: dict[str, float] = {}
    for stack in ctx.stacks:
        ratios: list[float] = []
        blocks: list[list[str]] = []

        def observe(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack,
                    ratios: list[float] = ratios, blocks: list[list[str]] = blocks) -> None:
            linears = prunable_linears(layer)
            collector = StatsCollector(linears, need_sq=True, need_hessian=False)
            with torch.inference_mode():
                for item in items:
                    collector.next_batch(item)
                    item.hidden = run_block(layer, item, ctx.device)
            collector.remove()
            metric = torch.cat([(mod.weight.abs().float() * collector.result(n).col_sq.sqrt()).flatten()
                                for n, mod in linears.items()])
            ratios.append(outlier_ratio(metric, cfg.param("owl_m")))
            blocks.append(block_names(stack, i, layer))

        run_blocks(ctx, stack, observe, desc=f"OWL outliers {stack.name}")
        sparsities = owl_block_sparsities(ratios, cfg.sparsity, cfg.param("owl_lambda"),
                                          released_tamp_sign=cfg.param("owl_released_sign"))
        ctx.result.details.setdefault("owl_outlier_ratios", {})[stack.name] = ratios
        for names, s in zip(blocks, sparsities):
            targets.update({n: s for n in names})
    return targets


PARAMS = (
    Param("owl_m", float, 5.0, "a metric above M x its block's mean counts as an outlier"),
    Param("owl_lambda", float, 0.08, "block sparsities spread over target +- lambda"),
    Param("owl_released_sign", bool, False, "True: TAMP's copy of OWL (more outliers -> MORE sparsity)"),
)

METHOD = WeightMethod(
    name="owl", label="OWL", order=4, summary="per-block sparsity from outlier ratios, Wanda scoring",
    params=PARAMS, allocation="owl", scoring="wanda", allocate=Allocation(allocate),
)
