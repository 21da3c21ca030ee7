"""YOPO's visual-attention install: decoder layers' self-attention with changes for visual query rows, saving the
compute for real. YOPO's plan puts a `VisualAttentionPatch` among its installs; the sequence editor calls it.

- Heads pruned for visual tokens: a visual row's query is not projected for those heads (q_proj runs on the kept
  heads' output columns only), it attends in the kept heads only, and o_proj reads the kept heads' input columns
  only; the pruned heads add nothing to a visual row. Keys and values stay whole (text rows attend to visual
  keys in every head), and text rows keep every head.
- Windowed visual attention: a visual row attends to the non-visual keys it may see (causal, padding) and to
  the visual keys of its w x w neighbourhood in its own image grid, gathered (tamp.algorithms.attention_window).

- The release's post-softmax masking (`zeroed` heads of a layer): in those heads every query's attention
  probabilities on visual keys are multiplied by zero after the softmax, not renormalised (the softmax
  denominator still counts the visual keys), in the prefill and in every decode step (the cached visual keys).
  YOPO's release semantics put the pruned heads of the layers before the cut there, and every head from it on.

Text rows go through the block's own attention function (sdpa / eager) on their rows (explicitly, through
`rows_attention` over every key, in a layer with zeroed heads); visual rows through `rows_attention`. All of it
applies only in a prefill that has visual tokens (the editor's `visual_rows`); decode steps (a text token, every
head, every cached key) run the block unchanged but for the zeroed heads' masking. What the visual rows skip
(q / o work of pruned heads, attention to keys outside the window) is charged to the editor's `skipped`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tamp.algorithms.attention_window import rows_attention
from tamp.engine.attention import allowed_keys, attention_dims, find_attention, override_attention
from tamp.inference.sequence_edit import PrefillStats, SequenceEditor
from tamp.inference.visual_grid import group_segments, neighbour_positions
from tamp.models import internals


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
                 rows: Callable[[], VisualRows | None], spend: Callable[[Spent], None],
                 zeroed: tuple[int, ...] = (), visual_keys: Callable[[], Tensor | None] = lambda: None) -> None:
        self.attn = find_attention(block)
        self.heads, self.head_dim = attention_dims(block)
        bad = [h for h in (*pruned_heads, *zeroed) if not 0 <= h < self.heads]
        if bad:
            raise ValueError(f"heads {bad} are outside 0..{self.heads - 1}")
        projections = internals.attention_projections(block)
        self.pruned = tuple(sorted(set(pruned_heads)))
        self.kept = torch.tensor([h for h in range(self.heads) if h not in self.pruned], dtype=torch.long)
        self.windowed, self.rows, self.spend = windowed, rows, spend
        self.zeroed = torch.tensor([h in set(zeroed) for h in range(self.heads)], dtype=torch.bool)
        self.visual_keys = visual_keys
        d = self.head_dim
        self.kept_cols = (self.kept[:, None] * d + torch.arange(d)[None, :]).flatten()
        pruned_cols = torch.tensor([h * d + i for h in self.pruned for i in range(d)], dtype=torch.long)
        q, o = projections.q.weight, projections.o.weight
        # per visual row: the q_proj rows and o_proj columns of the pruned heads it skips (dense, non-zero)
        self._skipped = {name: Spent(2.0 * w.numel(), 2.0 * int((w != 0).sum()))
                         for name, w in (("q", q[pruned_cols.to(q.device)]), ("o", o[:, pruned_cols.to(o.device)]))}
        self._originals: dict[str, Any] = {}
        self._patch("forward", self.attn, self._forward)
        if self.pruned:
            self._patch("q", projections.q, self._q_proj)
            self._patch("o", projections.o, self._o_proj)

    def _patch(self, key: str, module: nn.Module, fn: Callable) -> None:
        self._originals[key] = (module, internals.replace_forward(module, fn))

    def remove(self) -> None:
        for module, _ in self._originals.values():
            internals.restore_forward(module)
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
            keys = self.visual_keys() if bool(self.zeroed.any()) else None
            if keys is None:
                return full(hidden_states, *args, **kwargs)
            self._keys = keys  # a decode step (or a prefill chunk) against cached visual keys: zero them
            try:
                with override_attention(self.attn, self._attend_zeroed):
                    return full(hidden_states, *args, **kwargs)
            finally:
                self._keys = None
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
            visual_keys = _pad(visual, key.shape[2])
            if text_rows.numel() and bool(self.zeroed.any()):  # the release's masking: explicit, every key
                every = torch.arange(heads, device=query.device) // groups
                text_out = rows_attention(query[b][:, text_rows], key[b].index_select(0, every),
                                          value[b].index_select(0, every), allowed[text_rows], None, None, None,
                                          scaling, self.zeroed, visual_keys)
                out[b, text_rows] = text_out.transpose(0, 1)
            elif text_rows.numel():
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
            zero = self.zeroed[self.kept]
            q = query[b, kept][:, visual_rows]
            k, v = key[b].index_select(0, kv), value[b].index_select(0, kv)
            if rows.neighbours is None:
                got = rows_attention(q, k, v, allowed[visual_rows], None, None, None, scaling, zero, visual_keys)
                keys_used = float(k.shape[1])
            else:
                text_cols = torch.nonzero(~visual).flatten()
                near = rows.neighbours[b].to(query.device)
                index = near.clamp(min=0)
                got = rows_attention(q, k[:, text_cols], v[:, text_cols], allowed[visual_rows][:, text_cols],
                                     k[:, index], v[:, index], near >= 0, scaling, zero)
                keys_used = float(text_cols.numel() + near.shape[1])
            out[b, visual_rows[:, None], kept[None, :]] = got.transpose(0, 1)
            # every head of every visual row would have cost 4 x keys x d against all keys; what ran instead
            spent += 4.0 * visual_rows.numel() * d * (heads * key.shape[2] - kept.numel() * keys_used)
        self.spend(Spent(spent / batch, spent / batch))
        return out, None

    def _attend_zeroed(self, inner: Callable, module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                       attention_mask: Tensor | None, **kwargs: Any) -> tuple[Tensor, None]:
        """Every row (a decode step's new tokens) over every key it may see, the zeroed heads' probabilities on the
        cached visual keys set to zero after the softmax."""
        batch, heads, length, d = query.shape
        scaling = kwargs.pop("scaling", None) or d ** -0.5
        every = torch.arange(heads, device=query.device) // (heads // key.shape[1])
        out = query.new_zeros(batch, length, heads, d)
        for b in range(batch):
            allowed = allowed_keys(attention_mask, b, length, key.shape[2], query.device)
            got = rows_attention(query[b], key[b].index_select(0, every), value[b].index_select(0, every), allowed,
                                 None, None, None, scaling, self.zeroed, _pad(self._keys[b], key.shape[2]))
            out[b] = got.transpose(0, 1)
        return out, None


def _pad(visual: Tensor, length: int) -> Tensor:
    """[T] bool visual positions of a prefill -> [length] (keys past the prefill, generated ones, are text)."""
    out = torch.zeros(length, dtype=torch.bool, device=visual.device)
    n = min(length, visual.shape[0])
    out[:n] = visual[:n]
    return out


@dataclass(frozen=True)
class VisualAttentionPatch:
    """YOPO's install: layer -> heads pruned for visual queries there (an empty tuple: the split path, nothing
    pruned); layer -> the window w of visual queries' attention to visual keys there; `causal`: the window holds
    only the earlier visual keys (the release: the whole square); layer -> heads in which every query's attention
    probabilities on visual keys are multiplied by zero after the softmax (the release's masking)."""

    heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    window: dict[int, int] = field(default_factory=dict)
    causal: bool = False
    zeroed: dict[int, tuple[int, ...]] = field(default_factory=dict)
    cut_from: int | None = None  # from this layer on, every head is zeroed (the release's layer cut)

    def layers(self, count: int) -> list[int]:
        cut = range(self.cut_from, count) if self.cut_from is not None else range(0)
        return sorted(set(self.window) | set(self.heads) | set(self.zeroed) | set(cut))

    def zeroed_heads(self, layer: int, heads: int) -> tuple[int, ...]:
        if self.cut_from is not None and layer >= self.cut_from:
            return tuple(range(heads))
        return tuple(self.zeroed.get(layer, ()))

    def __call__(self, editor: SequenceEditor) -> VisualAttentionPatches:
        return VisualAttentionPatches(self, editor)


class VisualAttentionPatches:
    """A VisualAttentionPatch installed on one editor's model: the patched blocks and, per prefill, each visual
    token's window neighbours (computed once, from the model's own grid arguments)."""

    def __init__(self, patch: VisualAttentionPatch, editor: SequenceEditor) -> None:
        self.patch, self.editor = patch, editor
        self.neighbours: list[Tensor] | None = None  # per sample: visual tokens' window neighbours (positions)
        self._for: PrefillStats | None = None  # the prefill `neighbours` belong to
        self.blocks: list[VisualAttention] = []
        count = len(editor.layers)
        for i in patch.layers(count):
            if not 0 <= i < count:
                self.remove()
                raise ValueError(f"visual attention layer {i} is outside 0..{count - 1}")
            zeroed = patch.zeroed_heads(i, attention_dims(editor.layers[i])[0])
            self.blocks.append(VisualAttention(editor.layers[i], tuple(patch.heads.get(i, ())), i in patch.window,
                                               self.rows, self.spend, zeroed, self.visual_keys))

    def rows(self) -> VisualRows | None:
        """The visual rows of the prefill in progress (None in decoding or without visual tokens), with each visual
        token's window neighbours once per prefill when a window is planned."""
        editor = self.editor
        if not editor.active or editor.visual is None:
            return None
        if not self.patch.window:
            return VisualRows(editor.visual, None)
        if self._for is not editor.history[-1]:
            if editor.index is None or editor.index.shape[1] != editor.full_len:
                raise RuntimeError("windowed visual attention after a token drop is not supported")
            window = next(iter(self.patch.window.values()))
            segments = group_segments(editor.model.config, editor.media_kwargs, editor.video, editor.groups)
            self.neighbours = [neighbour_positions(editor.groups[b], segments, window, self.patch.causal)
                               .to(editor.visual.device) for b in range(editor.visual.shape[0])]
            self._for = editor.history[-1]
        return VisualRows(editor.visual, self.neighbours)

    def visual_keys(self) -> Tensor | None:
        """[B, T_prefill] bool: which positions of the cache the prefill filled with visual tokens, while its
        decode steps follow (None without one, or when a drop left the cache shorter than the prompt)."""
        editor = self.editor
        if not editor.active or editor.visual is None or editor.visual.shape[1] != editor.full_len:
            return None
        return editor.visual

    def spend(self, spent: Spent) -> None:
        self.editor.skipped(spent.dense, spent.nonzero)

    def remove(self) -> None:
        for block in self.blocks:
            block.remove()
        self.blocks = []
