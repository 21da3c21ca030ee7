"""YOPO (Zhang et al., arXiv 2410.06169): prune the computation spent on visual tokens once for the model.

Two of the paper's strategies are built here, both training-free and both saving real compute:

- visual layer dropping: from layer L on nothing attends to the visual tokens and they are computed no
  further (the released code zeroes all heads' attention to them from `layercut_num` on); here they leave
  the sequence (tamp.inference.token_drop);
- sparse FFN projection: in the layers before L the visual tokens go through the first share of the MLP's
  intermediate channels (the release zeroes the gate and up outputs beyond I / mlpcut_ratio at the visual
  positions; mlpcut_ratio 2 in its scripts); here the sliced weights are applied to the visual rows only.

L comes from a compute budget: the share of the visual tokens' linear FLOPs kept (attention projections and
the MLP, the latter at the FFN share), the last layer whose cumulative share stays within it. The paper's
other two strategies (neighbour-aware visual attention, inactive visual heads) are not built yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tamp.inference.token_drop import Drop, DropInput, DropPlan, Kept
from tamp.methods.base import Param, TokenMethod

STRATEGIES = ("layers+ffn", "layers", "ffn")


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def budget_layer(layers: list[nn.Module], budget: float, ffn_keep: float) -> int:
    """The first layer the visual tokens no longer reach: the largest L with
    sum_{l<L} (attention_l + ffn_keep x mlp_l) <= budget x sum_l (attention_l + mlp_l), linear weights per token."""
    attention = [_weights(layer) - _weights(layer.mlp) for layer in layers]
    mlp = [_weights(layer.mlp) for layer in layers]
    total = sum(attention) + sum(mlp)
    spent, cut = 0.0, 0
    for a, m in zip(attention, mlp):
        spent += a + ffn_keep * m
        if spent > budget * total + 1e-9:
            break
        cut += 1
    return cut


def resolve(params: dict[str, Any], layers: list[nn.Module]) -> dict[str, Any]:
    """The layer from the budget when `yopo_layer` is -1 (and the strategies drop layers)."""
    out = dict(params)
    if "layers" not in str(params["yopo_strategies"]):
        out["yopo_layer"] = len(layers)
    elif int(params["yopo_layer"]) < 0:
        keep = float(params["yopo_ffn_keep"]) if "ffn" in str(params["yopo_strategies"]) else 1.0
        out["yopo_layer"] = budget_layer(layers, float(params["yopo_budget"]), keep)
    return out


def _drop_visual(seen: DropInput) -> Kept:
    return Kept(torch.nonzero(~seen.visual).flatten())


def plan(params: dict[str, Any], num_layers: int) -> DropPlan:
    cut = int(params["yopo_layer"])
    if not 0 <= cut <= num_layers:
        raise ValueError(f"yopo_layer {cut} is outside 0..{num_layers} (the model's decoder layers)")
    drops = {cut: Drop(_drop_visual)} if cut < num_layers else {}
    ffn = {}
    if "ffn" in str(params["yopo_strategies"]) and float(params["yopo_ffn_keep"]) < 1.0:
        ffn = {i: float(params["yopo_ffn_keep"]) for i in range(min(cut, num_layers))}
    return DropPlan(drops, ffn)


PARAMS = (
    Param("yopo_strategies", str, "layers+ffn", "which strategies run: visual layer dropping, sparse visual FFN, both",
          choices=STRATEGIES),
    Param("yopo_budget", float, 0.25, "share of the visual tokens' linear FLOPs kept; picks the layer they stop at",
          check=lambda v: None if 0 <= v <= 1 else f"yopo_budget must be in [0, 1], got {v}"),
    Param("yopo_layer", int, -1, "the first layer the visual tokens no longer reach (0-based); -1: from yopo_budget",
          check=lambda v: None if v >= -1 else f"yopo_layer must be -1 (from the budget) or a layer index, got {v}"),
    Param("yopo_ffn_keep", float, 0.5, "share of the MLP's intermediate channels the visual tokens use "
          "(the release's mlpcut_ratio 2)",
          check=lambda v: None if 0 < v <= 1 else f"yopo_ffn_keep must be in (0, 1], got {v}"),
)

METHOD = TokenMethod(
    name="yopo", label="YOPO", order=22,
    summary="visual tokens use part of each MLP, and stop at a layer picked by a compute budget",
    params=PARAMS, plan=plan, resolve=resolve,
)
