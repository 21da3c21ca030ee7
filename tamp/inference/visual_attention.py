"""One decoder layer's self-attention with YOPO's changes for visual query rows, saving the compute for real.

- Heads pruned for visual tokens: a visual row's query is not projected for those heads (q_proj runs on the kept
  heads' output columns only), it attends in the kept heads only, and o_proj reads the kept heads' input columns
  only; the pruned heads add nothing to a visual row. Keys and values stay whole (text rows attend to visual
  keys in every head), and text rows keep every head.
- Windowed visual attention: a visual row attends to the non-visual keys it may see (causal, padding) and to
  the visual keys of its w x w neighbourhood in its own image grid, gathered (tamp.algorithms.visual_attention).

Text rows go through the block's own attention function (sdpa / eager) on their rows; visual rows through
`rows_attention`. All of it applies only in a prefill that has visual tokens (`VisualRows` from the dropper);
decode steps (a text token, every head, every cached key) run the block unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tamp.algorithms.visual_attention import rows_attention
from tamp.engine.attention import allowed_keys, attention_dims, find_attention, override_attention


@dataclass(frozen=True)
class VisualRows:
    """What a prefill's current sequence holds: which rows are visual, and per sample each visual row's window
    neighbours as sequence positions [n_visual, W] (-1: none), or None when the window is off."""

    visual: Tensor  # [B, T] bool
    neighbours: list[Tensor] | None


@dataclass
class Spent:
    """FLOPs per sample the visual rows skipped in one call: dense weights, non-zero weights."""

    dense: float = 0.0
    nonzero: float = 0.0


class VisualAttention:
    """Patches one block (`remove()` undoes it). `rows()` gives the current prefill's VisualRows, or None."""

    def __init__(self, block: nn.Module, pruned_heads: tuple[int, ...], windowed: bool,
                 rows: Callable[[], VisualRows | None], spend: Callable[[Spent], None]) -> None:
        self.attn = find_attention(block)
        self.heads, self.head_dim = attention_dims(block)
        bad = [h for h in pruned_heads if not 0 <= h < self.heads]
        if bad:
            raise ValueError(f"heads {bad} are outside 0..{self.heads - 1}")
        for name in ("q_proj", "o_proj"):
            if not isinstance(getattr(self.attn, name, None), nn.Linear):
                raise ValueError(f"{type(self.attn).__name__} has no {name} linear")
        self.pruned = tuple(sorted(set(pruned_heads)))
        self.kept = torch.tensor([h for h in range(self.heads) if h not in self.pruned], dtype=torch.long)
        self.windowed, self.rows, self.spend = windowed, rows, spend
        d = self.head_dim
        self.kept_cols = (self.kept[:, None] * d + torch.arange(d)[None, :]).flatten()
        pruned_cols = torch.tensor([h * d + i for h in self.pruned for i in range(d)], dtype=torch.long)
        q, o = self.attn.q_proj.weight, self.attn.o_proj.weight
        # per visual row: the q_proj rows and o_proj columns of the pruned heads it skips (dense, non-zero)
        self._skipped = {name: Spent(2.0 * w.numel(), 2.0 * int((w != 0).sum()))
                         for name, w in (("q", q[pruned_cols.to(q.device)]), ("o", o[:, pruned_cols.to(o.device)]))}
        self._originals: dict[str, Any] = {}
        self._patch("forward", self.attn, self._forward)
        if self.pruned:
            self._patch("q", self.attn.q_proj, self._q_proj)
            self._patch("o", self.attn.o_proj, self._o_proj)

    def _patch(self, key: str, module: nn.Module, fn: Callable) -> None:
        self._originals[key] = (module, module.forward)
        module.forward = fn

    def remove(self) -> None:
        for module, _ in self._originals.values():
            module.__dict__.pop("forward", None)
        self._originals = {}

    def _current(self, length: int) -> VisualRows | None:
        rows = self.rows()
        if rows is None or rows.visual.shape[1] != length or not bool(rows.visual.any()):
            return None
        return rows

    # ---- the block's projections and attention ----------------------------------------------------------
    def _forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        full = self._originals["forward"][1]
        rows = self._current(hidden_states.shape[1])
        if rows is None:
            return full(hidden_states, *args, **kwargs)
        self._state = rows
        try:
            with override_attention(self.attn, self._attend):
                return full(hidden_states, *args, **kwargs)
        finally:
            self._state = None

    def _split(self, name: str, x: Tensor, visual_rows: Callable[[nn.Linear, Tensor, Tensor], Tensor]) -> Tensor:
        """One projection in a prefill with visual rows: text rows through the whole linear, visual rows through
        `visual_rows(linear, their inputs, the kept heads' columns)`; outside such a prefill, the whole linear."""
        layer = self._originals[name][0]
        rows = self._current(x.shape[1])
        if rows is None:
            return F.linear(x, layer.weight, layer.bias)
        visual = rows.visual
        out = x.new_empty(*x.shape[:-1], layer.out_features)
        out[~visual] = F.linear(x[~visual], layer.weight, layer.bias)
        out[visual] = visual_rows(layer, x[visual], self.kept_cols.to(x.device))
        self._spend_rows(name, visual)
        return out

    def _q_proj(self, x: Tensor) -> Tensor:
        def kept_heads(layer: nn.Linear, rows: Tensor, cols: Tensor) -> Tensor:  # the pruned heads' queries stay 0
            part = rows.new_zeros(rows.shape[0], layer.out_features)
            part[:, cols] = F.linear(rows, layer.weight[cols], None if layer.bias is None else layer.bias[cols])
            return part

        return self._split("q", x, kept_heads)

    def _o_proj(self, x: Tensor) -> Tensor:
        return self._split("o", x, lambda layer, rows, cols: F.linear(rows[:, cols], layer.weight[:, cols], layer.bias))

    def _spend_rows(self, name: str, visual: Tensor) -> None:
        rows, per_row = int(visual.sum()) / visual.shape[0], self._skipped[name]
        self.spend(Spent(rows * per_row.dense, rows * per_row.nonzero))

    def _attend(self, inner: Callable, module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                attention_mask: Tensor | None, **kwargs: Any) -> tuple[Tensor, None]:
        rows = self._state
        batch, heads, length, d = query.shape
        scaling = kwargs.pop("scaling", None) or d ** -0.5
        groups = heads // key.shape[1]
        kept = self.kept.to(query.device)
        out = query.new_zeros(batch, length, heads, d)
        spent = 0.0
        for b in range(batch):
            visual = rows.visual[b]
            text_rows, visual_rows = torch.nonzero(~visual).flatten(), torch.nonzero(visual).flatten()
            allowed = allowed_keys(attention_mask, b, length, key.shape[2], query.device)
            if text_rows.numel():
                mask = allowed[text_rows][None, None]
                if attention_mask is None or attention_mask.dtype != torch.bool:  # additive, as eager adds it
                    mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                        ~mask, torch.finfo(query.dtype).min)
                text_out, _ = inner(module, query[b:b + 1, :, text_rows], key[b:b + 1], value[b:b + 1], mask,
                                    scaling=scaling, **kwargs)
                out[b, text_rows] = text_out[0]
            if not visual_rows.numel():
                continue
            if not kept.numel():  # every head pruned: the visual rows attend nowhere
                spent += 4.0 * visual_rows.numel() * d * heads * key.shape[2]
                continue
            kv = kept // groups
            q = query[b, kept][:, visual_rows]
            k, v = key[b].index_select(0, kv), value[b].index_select(0, kv)
            if rows.neighbours is None:
                got = rows_attention(q, k, v, allowed[visual_rows], None, None, None, scaling)
                keys_used = float(k.shape[1])
            else:
                text_cols = torch.nonzero(~visual).flatten()
                near = rows.neighbours[b].to(query.device)
                index = near.clamp(min=0)
                got = rows_attention(q, k[:, text_cols], v[:, text_cols], allowed[visual_rows][:, text_cols],
                                     k[:, index], v[:, index], near >= 0, scaling)
                keys_used = float(text_cols.numel() + near.shape[1])
            out[b, visual_rows[:, None], kept[None, :]] = got.transpose(0, 1)
            # every head of every visual row would have cost 4 x keys x d against all keys; what ran instead
            spent += 4.0 * visual_rows.numel() * d * (heads * key.shape[2] - kept.numel() * keys_used)
        self.spend(Spent(spent / batch, spent / batch))
        return out, None
