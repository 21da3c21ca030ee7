"""Token selection for the statistics: all tokens, or AMIA's attention-guided representative tokens."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from tamp.config import PruneConfig
from tamp.engine.capture import Captured


def sample_masks(item: Captured, b: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Modality masks of sample `b` of a captured batch; no input ids (vision stack) -> all text."""
    masks = {m: mask[b].to(device) for m, mask in item.token_masks.items()}
    return masks or {"text": torch.ones(length, dtype=torch.bool, device=device)}


class AmiaSelector:
    """Per sample and linear: AMIA picks tokens on the linear's outputs; their inputs feed Wanda's statistic."""

    needs_attention = True

    def __init__(self, cfg: PruneConfig) -> None:
        self.kw: dict[str, Any] = dict(k=cfg.amia_k, edge_temp=cfg.amia_edge_temp, suppress_temp=cfg.amia_suppress_temp,
                                       mmd_factor=cfg.amia_mmd_factor, sigma=cfg.amia_sigma)
        self.scope = cfg.amia_scope

    def __call__(self, buffers: dict[str, tuple[torch.Tensor, torch.Tensor]], item: Captured,
                 attention: torch.Tensor | None) -> dict[str, torch.Tensor]:
        from tamp.algorithms.amia import amia_select

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
    from tamp.algorithms.amia import amia_select_batched

    by_width: dict[int, list[str]] = defaultdict(list)
    for name, out in outs.items():
        by_width[out.shape[-1]].append(name)
    chosen: dict[str, torch.Tensor] = {}
    for group in by_width.values():
        picked = amia_select_batched([outs[n] for n in group], scores, masks, **kw)  # a list: no (M, T, D) copy
        chosen.update(zip(group, picked.unbind(0)))
    return chosen


def make_selector(cfg: PruneConfig, result: Any = None) -> AmiaSelector | None:
    """The selector for `cfg.token_selection` (None: every token counts, the plain Wanda/SparseGPT statistic)."""
    return AmiaSelector(cfg) if cfg.token_selection == "amia" else None
