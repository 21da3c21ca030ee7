"""AMIA (adaptive multimodal input activation): per sample and linear, attention-guided representative tokens
picked on the linear's outputs; only their inputs feed Wanda's statistic.

Released constants: k = 3, edge exp(-1.0 d), suppression exp(-0.2 d), MMD^2 < 0.1 sqrt(1 - density). The
selection itself is tamp.algorithms.amia; this file wires it into the engine's statistics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from tamp.algorithms.amia import amia_select, amia_select_batched
from tamp.engine.block_pass import sample_masks
from tamp.engine.capture import Captured
from tamp.methods.base import Needs, Param, TokenSelection, WeightMethod

if TYPE_CHECKING:
    from tamp.config import PruneConfig


class AmiaSelector:
    """Per sample and linear: AMIA picks tokens on the linear's outputs; their inputs feed Wanda's statistic."""

    needs_attention = True

    def __init__(self, cfg: PruneConfig) -> None:
        self.kw: dict[str, Any] = {key: cfg.param(f"amia_{key}")
                                   for key in ("k", "edge_temp", "suppress_temp", "mmd_factor", "sigma")}
        self.scope = cfg.param("amia_scope")

    def __call__(self, buffers: dict[str, tuple[torch.Tensor, torch.Tensor]], item: Captured,
                 attention: torch.Tensor | None) -> dict[str, torch.Tensor]:
        names = list(buffers)
        first_x = buffers[names[0]][0]
        batch, length = first_x.shape[0], first_x.shape[1]
        rows: dict[str, list[torch.Tensor]] = defaultdict(list)
        for b in range(batch):
            masks = sample_masks(item, b, length, first_x.device)
            scores = attention[b] if attention is not None else torch.full((length,), 1.0 / length, device=first_x.device)
            if self.scope == "layer":
                chosen = amia_select(first_x[b], scores, masks, **self.kw)
                for name in names:
                    rows[name].append(buffers[name][0][b][chosen])
                continue
            chosen_by_name = select_per_module({n: buffers[n][1][b] for n in names}, scores, masks, **self.kw)
            for name in names:
                rows[name].append(buffers[name][0][b][chosen_by_name[name]])
        return {name: torch.cat(parts) for name, parts in rows.items()}


def select_per_module(outs: Mapping[str, torch.Tensor], scores: torch.Tensor, masks: Mapping[str, torch.Tensor],
                      **kw: Any) -> dict[str, torch.Tensor]:
    """One sample's AMIA stage: each module's (T,) selection on its (T, D_m) outputs.

    Modules of equal output width (q/o/down, k/v, gate/up in a llama block) run as one lock-step batch, so the
    latency-bound greedy loop is paid once per width instead of once per module.
    """
    by_width: dict[int, list[str]] = defaultdict(list)
    for name, out in outs.items():
        by_width[out.shape[-1]].append(name)
    chosen: dict[str, torch.Tensor] = {}
    for group in by_width.values():
        picked = amia_select_batched([outs[n] for n in group], scores, masks, **kw)  # a list: no (M, T, D) copy
        chosen.update(zip(group, picked.unbind(0)))
    return chosen


def _positive(name: str) -> Any:
    return lambda v: f"{name} must be positive, got {v}" if v <= 0 else None


PARAMS = (
    Param("amia_k", int, 3, "neighbours per token in the similarity graph",
          check=lambda v: f"amia_k must be at least 1, got {v}" if v < 1 else None),
    Param("amia_edge_temp", float, 1.0, "graph edge weight exp(-temp * distance)"),
    Param("amia_suppress_temp", float, 0.2, "neighbour suppression exp(-temp * distance) after a pick"),
    Param("amia_mmd_factor", float, 0.1, "stop once MMD^2 < factor * sqrt(1 - density)"),
    Param("amia_sigma", float, 1.0, "kernel width of the MMD", check=_positive("amia_sigma")),
    Param("amia_scope", str, "module", "module (released: per linear output) | layer (one selection per block)",
          choices=("module", "layer")),
)

METHOD = WeightMethod(
    name="amia", label="AMIA", order=7, summary="attention-guided representative tokens feed Wanda's statistic",
    params=PARAMS, token_selection="amia", scoring="wanda",
    select=TokenSelection(AmiaSelector, Needs(calibration=True, attention=True)),
)
