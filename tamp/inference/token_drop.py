"""Remove tokens from a language model's sequence between decoder layers, for real.

The released token-reduction code (FastV, AIM) masks attention, so dropped tokens still cost compute. Here the
hidden states of dropped tokens leave the sequence: later layers run on fewer tokens, their KV cache holds only
what they kept, and the rotary position embeddings, position ids and attention mask handed to each layer are
cut to the same tokens, so every kept token keeps its original position (Qwen2-VL's 3-D mrope included: the
model computes cos/sin from the full positions, this file only selects columns). In decoding, new tokens
continue from the original length and each layer's mask is cut to the keys that layer cached.

At the final norm the sequence is put back to its original length (a dropped token carries the state it had
when it was dropped), so logits keep their shape and the text positions every consumer reads are exact.

A `DropPlan` says at which layers to drop and how to choose; `TokenDropper` installs the hooks that do it.
Batches must drop the same number of tokens per sample (true for batch size 1, and for equal media).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tamp.engine.attention import capture_last_row_attention
from tamp.models.adapters import ModelAdapter

# (last-row attention of the previous layer [T], visual mask [T], layer index) -> ascending kept positions [T']
Chooser = Callable[[Tensor, Tensor, int], Tensor]
VISUAL = ("image", "video")


@dataclass
class DropPlan:
    """layer index -> the chooser run before that layer (on the previous layer's last-row attention)."""

    choosers: dict[int, Chooser]


@dataclass
class PrefillStats:
    """One prefill: tokens each decoder layer ran on, and visual tokens in and kept."""

    tokens_per_layer: list[int] = field(default_factory=list)
    visual_in: int = 0
    visual_kept_per_layer: list[int] = field(default_factory=list)


def _take(x: Tensor, index: Tensor, batch_dim: int, seq_dim: int) -> Tensor:
    """x's entries at `index` [B, T'] along seq_dim, per sample along batch_dim (size B, or 1 if shared)."""
    if x.shape[batch_dim] == 1 and index.shape[0] > 1:
        if not bool((index == index[:1]).all()):
            raise RuntimeError("a batch-shared tensor cannot follow per-sample token drops")
        return x.index_select(seq_dim, index[0])
    parts = [x.narrow(batch_dim, b, 1).index_select(seq_dim, index[b]) for b in range(index.shape[0])]
    return torch.cat(parts, dim=batch_dim)


class TokenDropper:
    """Hooks on a model's language stack that drop tokens per a DropPlan; `remove()` restores the model."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, plan: DropPlan) -> None:
        self.model, self.adapter, self.plan = model, adapter, plan
        stack = adapter.language_stack(model)
        self.layers = list(stack.layers)
        self.norm = model.get_submodule(stack.name.rsplit(".", 1)[0]).norm
        bad = [i for i in plan.choosers if not 0 < i < len(self.layers)]
        if bad:
            raise ValueError(f"drop layers {bad} are outside 1..{len(self.layers) - 1}")
        self.visual_ids = [i for m in VISUAL for i in adapter.media_token_ids.get(m, [])]
        self.history: list[PrefillStats] = []
        self._reset()
        self._handles = [adapter.runner(model).register_forward_pre_hook(self._on_model, with_kwargs=True),
                         self.norm.register_forward_pre_hook(self._on_norm)]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: self._on_layer(i, args, kwargs), with_kwargs=True))
            if i + 1 in plan.choosers:
                self._handles.append(layer.register_forward_pre_hook(lambda mod, args, i=i: self._start_capture(i)))
                self._handles.append(layer.register_forward_hook(lambda mod, args, out, i=i: self._stop_capture(i)))

    def _reset(self) -> None:
        self.active = False  # a prefill with visual tokens is being reduced (or its decode steps follow)
        self.full_len = 0
        self.index: Tensor | None = None  # [B, T_cur] original positions of the tokens now in the sequence
        self.visual: Tensor | None = None  # [B, T_cur] which of them are visual
        self.kept_by_layer: dict[int, Tensor] = {}  # layer -> [B, T_l] original positions it cached
        self.full: Tensor | None = None  # [B, T_full, D] states of tokens as they were dropped
        self._sink: list[Tensor] = []
        self._capture: Any = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- hooks --------------------------------------------------------------------------------------
    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[1] == 1:
            return  # a decode step (or embeddings we cannot read): keep the prefill's state
        self._reset()
        visual = torch.isin(ids, torch.tensor(self.visual_ids, device=ids.device)) if self.visual_ids \
            else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(visual.any()):
            return
        self.active, self.full_len = True, ids.shape[1]
        self.index = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        self.visual = visual
        self.history.append(PrefillStats(visual_in=int(visual.sum())))

    def _start_capture(self, i: int) -> None:
        """Before layer i in a prefill whose next layer drops (in decoding every layer has its kept set)."""
        if self.active and i + 1 not in self.kept_by_layer:
            self._sink = []
            self._capture = capture_last_row_attention(self.layers[i], self._sink)
            self._capture.__enter__()

    def _stop_capture(self, i: int) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None

    def _on_layer(self, i: int, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if not self.active:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if i in self.kept_by_layer:  # decode: one new token; the mask's keys shrink to what this layer cached
            mask = kwargs.get("attention_mask")
            if isinstance(mask, Tensor) and mask.dim() == 4:
                kept = self.kept_by_layer[i]
                extra = torch.arange(self.full_len, mask.shape[-1], device=mask.device).expand(kept.shape[0], -1)
                kwargs["attention_mask"] = _take(mask, torch.cat([kept, extra], dim=1), 0, 3)
            return args, kwargs
        if i in self.plan.choosers:
            hidden = self._drop(i, hidden)
        stats = self.history[-1]
        stats.tokens_per_layer.append(int(hidden.shape[1]))
        stats.visual_kept_per_layer.append(int(self.visual.sum()) // max(1, self.visual.shape[0]))
        self.kept_by_layer[i] = self.index
        if self.index.shape[1] < self.full_len:
            kwargs = self._cut(kwargs)
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _drop(self, i: int, hidden: Tensor) -> Tensor:
        attention = self._sink[-1] if self._sink else None
        if attention is None:
            raise RuntimeError(f"no attention of layer {i - 1} was captured for the drop before layer {i}")
        rows = [self.plan.choosers[i](attention[b].float(), self.visual[b], i) for b in range(hidden.shape[0])]
        if len({r.numel() for r in rows}) != 1:
            raise RuntimeError("token reduction keeps a different number of tokens per sample in this batch; "
                               "evaluate with batch size 1")
        keep = torch.stack(rows)  # positions within the current sequence
        if self.full is None:
            self.full = hidden.new_zeros(hidden.shape[0], self.full_len, hidden.shape[2])
        self.full.scatter_(1, self.index.unsqueeze(-1).expand(-1, -1, hidden.shape[2]), hidden)
        self.index = torch.gather(self.index, 1, keep)
        self.visual = torch.gather(self.visual, 1, keep)
        return torch.gather(hidden, 1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[2]))

    def _cut(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The model's full-length per-token arguments, cut to the tokens still in the sequence."""
        out = dict(kwargs)
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            out["position_embeddings"] = tuple(_take(t, self.index, 0, 1) for t in pe)
        pos = kwargs.get("position_ids")
        if isinstance(pos, Tensor) and pos.shape[-1] == self.full_len:
            out["position_ids"] = _take(pos, self.index, pos.dim() - 2, pos.dim() - 1)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 4:
            out["attention_mask"] = _take(_take(mask, self.index, 0, 2), self.index, 0, 3)
        return out

    def _on_norm(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self.active or self.full is None or args[0].shape[1] == 1 or args[0].shape[1] == self.full_len:
            return None
        hidden = args[0]
        full = self.full.clone()
        full.scatter_(1, self.index.unsqueeze(-1).expand(-1, -1, hidden.shape[2]), hidden)
        return (full, *args[1:])
