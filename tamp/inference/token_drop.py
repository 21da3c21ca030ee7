"""Remove tokens from a language model's sequence between decoder layers, for real.

The released token-reduction code (FastV, AIM) masks attention, so dropped tokens still cost compute. Here the
hidden states of dropped tokens leave the sequence: later layers run on fewer tokens, their KV cache holds only
what they kept, and the rotary position embeddings, position ids and attention mask handed to each layer are
cut to the same tokens, so every kept token keeps its original position (Qwen2-VL's 3-D mrope included: the
model computes cos/sin from the full positions, this file only selects columns). In decoding, new tokens
continue from the original length and each layer's mask is cut to the keys that layer cached.

At the final norm the sequence is put back to its original length (a dropped token carries the state it had
when it was dropped), so logits keep their shape and the text positions every consumer reads are exact.

A `DropPlan` says before which layers to drop and how to choose; `TokenDropper` installs the hooks that do it.
A drop before layer i > 0 may ask for a score of layer i - 1's attention (FastV's last-row attention, AIM's
PageRank), computed inside that layer's attention call from its own query and key; a drop before layer 0 sees
the input embeddings and may rewrite the states it keeps (AIM's merging). Batches must drop the same number
of tokens per sample (true for batch size 1, and for equal media).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tamp.algorithms.ffn_slice import kept_channels, sliced_mlp
from tamp.engine.attention import AttentionScore, attention_dims, capture_attention_score
from tamp.inference.visual_attention import Spent, VisualAttention, VisualRows
from tamp.inference.visual_grid import group_segments, neighbour_positions
from tamp.models.adapters import ModelAdapter

VISUAL = ("image", "video")


@dataclass(frozen=True)
class DropInput:
    """What a chooser sees of one sample before the layer it drops at."""

    layer: int
    hidden: Tensor  # [T, D] states entering the layer
    visual: Tensor  # [T] bool
    groups: Tensor  # [T] long: the image or video frame a visual token belongs to (-1 for other tokens)
    scores: Tensor | None  # [T] the drop's score of the previous layer's attention (None when it asks for none)
    visual_at_entry: int  # visual tokens the first decoder layer ran on (after any drop before it)


@dataclass(frozen=True)
class Kept:
    """Ascending positions within the current sequence, and their new states when the drop rewrites them."""

    positions: Tensor
    hidden: Tensor | None = None
    flops: float = 0.0  # what choosing cost in matmuls (AIM's merge similarities), charged to the prefill


@dataclass(frozen=True)
class Drop:
    choose: Callable[[DropInput], Kept]
    score: AttentionScore | None = None  # of the previous layer's attention; None: the drop needs none


@dataclass
class DropPlan:
    """layer index -> the drop run before that layer; layer index -> the share of the MLP's intermediate channels
    the visual tokens in that layer go through (YOPO's sparse FFN projection; the other tokens use them all);
    layer index -> the attention heads visual queries skip there (YOPO's inactive visual heads); layer index ->
    the window w of visual queries' attention to visual keys there (YOPO's neighbour-aware attention)."""

    drops: dict[int, Drop]
    visual_mlp_keep: dict[int, float] = field(default_factory=dict)
    visual_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    visual_window: dict[int, int] = field(default_factory=dict)
    window_causal: bool = False  # a visual query sees only the window's earlier tokens (the release: all of them)


@dataclass
class PrefillStats:
    """One prefill: tokens each decoder layer ran on, visual tokens in and kept, FLOPs spent on scoring."""

    tokens_per_layer: list[int] = field(default_factory=list)
    visual_in: int = 0
    visual_kept_per_layer: list[int] = field(default_factory=list)
    scoring_flops: float = 0.0  # per sample: the matmuls the drops' attention scores cost
    # per sample: FLOPs the visual tokens skipped (sliced MLPs, pruned heads' q/o projections, attention to keys
    # they no longer see), with dense weights; and the same counting non-zero weights only
    skipped_flops: float = 0.0
    skipped_nonzero_flops: float = 0.0


def _take(x: Tensor, index: Tensor, batch_dim: int, seq_dim: int) -> Tensor:
    """x's entries at `index` [B, T'] along seq_dim, per sample along batch_dim (size B, or 1 if shared)."""
    if x.shape[batch_dim] == 1 and index.shape[0] > 1:
        if not bool((index == index[:1]).all()):
            raise RuntimeError("a batch-shared tensor cannot follow per-sample token drops")
        return x.index_select(seq_dim, index[0])
    parts = [x.narrow(batch_dim, b, 1).index_select(seq_dim, index[b]) for b in range(index.shape[0])]
    return torch.cat(parts, dim=batch_dim)


def visual_groups(visual: Tensor, video: Tensor, frames: list[int]) -> Tensor:
    """[B, T] group ids: each contiguous run of visual tokens is one group (an image); a run of video tokens is
    split into `frames[k]` equal frames (the k-th video run, batch rows in order), tokens left over (LLaVA-
    OneVision's closing newline) forming a group of their own. -1 outside visual tokens."""
    groups = torch.full(visual.shape, -1, dtype=torch.long)
    next_id, video_run = 0, 0
    for b in range(visual.shape[0]):
        flags, is_video = visual[b].tolist(), video[b].tolist()
        t = 0
        while t < len(flags):
            if not flags[t]:
                t += 1
                continue
            end = t
            while end < len(flags) and flags[end] and is_video[end] == is_video[t]:
                end += 1
            length = end - t
            count = frames[video_run] if is_video[t] and video_run < len(frames) else 1
            video_run += int(is_video[t])
            per = length // count if 0 < count <= length else length
            for k in range(length):
                groups[b, t + k] = next_id + min(k // per, count)
            next_id += count + 1
            t = end
    return groups.to(visual.device)


def video_frames(kwargs: dict[str, Any]) -> list[int]:
    """Frames per video in this call, in order: Qwen2-VL's temporal grid, or LLaVA-OneVision's frame axis."""
    grid = kwargs.get("video_grid_thw")
    if isinstance(grid, Tensor):
        return [int(t) for t in grid[:, 0].tolist()]
    pixels = kwargs.get("pixel_values_videos")
    if isinstance(pixels, Tensor) and pixels.dim() == 5:
        return [int(pixels.shape[1])] * int(pixels.shape[0])
    return []


class TokenDropper:
    """Hooks on a model's language stack that drop tokens per a DropPlan; `remove()` restores the model."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, plan: DropPlan) -> None:
        self.model, self.adapter, self.plan = model, adapter, plan
        stack = adapter.language_stack(model)
        self.layers = list(stack.layers)
        self.norm = model.get_submodule(stack.name.rsplit(".", 1)[0]).norm
        scored = sorted(i for i, d in plan.drops.items() if d.score is not None and not 0 < i < len(self.layers))
        if scored:
            raise ValueError(f"drop layers {scored} are outside 1..{len(self.layers) - 1}")
        bad = sorted(i for i in plan.drops if not 0 <= i < len(self.layers))
        if bad:
            raise ValueError(f"drop layers {bad} are outside 0..{len(self.layers) - 1}")
        self.visual_ids = [i for m in VISUAL for i in adapter.media_token_ids.get(m, [])]
        self.video_ids = list(adapter.media_token_ids.get("video", []))
        self.history: list[PrefillStats] = []
        self._reset()
        self._handles = [adapter.runner(model).register_forward_pre_hook(self._on_model, with_kwargs=True),
                         self.norm.register_forward_pre_hook(self._on_norm)]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: self._on_layer(i, args, kwargs), with_kwargs=True))
            following = plan.drops.get(i + 1)
            if following is not None and following.score is not None:
                self._handles.append(layer.register_forward_pre_hook(lambda mod, args, i=i: self._start_capture(i)))
                self._handles.append(layer.register_forward_hook(lambda mod, args, out, i=i: self._stop_capture(i)))
        self._mlps: list[nn.Module] = []
        for i, keep in plan.visual_mlp_keep.items():
            if not 0 <= i < len(self.layers):
                raise ValueError(f"FFN layer {i} is outside 0..{len(self.layers) - 1}")
            self._slice_mlp(self.layers[i].mlp, keep)
        self._attention: list[VisualAttention] = []
        for i in sorted(set(plan.visual_window) | {i for i, heads in plan.visual_heads.items() if heads}):
            if not 0 <= i < len(self.layers):
                raise ValueError(f"visual attention layer {i} is outside 0..{len(self.layers) - 1}")
            self._attention.append(VisualAttention(self.layers[i], tuple(plan.visual_heads.get(i, ())),
                                                   i in plan.visual_window, self._visual_rows, self._spend))

    def _reset(self) -> None:
        self.active = False  # a prefill with visual tokens is being reduced (or its decode steps follow)
        self.full_len = 0
        self.index: Tensor | None = None  # [B, T_cur] original positions of the tokens now in the sequence
        self.visual: Tensor | None = None  # [B, T_cur] which of them are visual
        self.groups: Tensor | None = None  # [B, T_cur] their image / frame group
        self.entry: list[int] = []  # visual tokens per sample at the first layer
        self.kept_by_layer: dict[int, Tensor] = {}  # layer -> [B, T_l] original positions it cached
        self.full: Tensor | None = None  # [B, T_full, D] states of tokens as they were dropped
        self._sink: list[Tensor] = []
        self._capture: Any = None
        self._neighbours: list[Tensor] | None = None  # per sample: visual tokens' window neighbours (positions)
        self._media_kwargs: dict[str, Any] = {}
        self._video: Tensor | None = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for mlp in self._mlps:
            mlp.__dict__.pop("forward", None)
        self._mlps = []
        for patch in self._attention:
            patch.remove()
        self._attention = []

    def _visual_rows(self) -> VisualRows | None:
        """The visual rows of the prefill in progress (None in decoding or without visual tokens), with each visual
        token's window neighbours once per prefill when a window is planned."""
        if not self.active or self.visual is None:
            return None
        if not self.plan.visual_window:
            return VisualRows(self.visual, None)
        if self._neighbours is None:
            if self.index is None or self.index.shape[1] != self.full_len:
                raise RuntimeError("windowed visual attention after a token drop is not supported")
            window = next(iter(self.plan.visual_window.values()))
            segments = group_segments(self.model.config, self._media_kwargs, self._video, self.groups)
            self._neighbours = [neighbour_positions(self.groups[b], segments, window, self.plan.window_causal)
                                .to(self.visual.device) for b in range(self.visual.shape[0])]
        return VisualRows(self.visual, self._neighbours)

    def _spend(self, spent: Spent) -> None:
        self.history[-1].skipped_flops += spent.dense
        self.history[-1].skipped_nonzero_flops += spent.nonzero

    def _slice_mlp(self, mlp: nn.Module, keep: float) -> None:
        """In a prefill, the visual rows go through the first `keep` of the intermediate channels only."""
        for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
            if not hasattr(mlp, name):
                raise ValueError(f"{type(mlp).__name__} is no gated MLP (gate_proj, up_proj, down_proj, act_fn)")
        channels = kept_channels(mlp.gate_proj.out_features, keep)
        full = mlp.forward
        skipped = [mlp.gate_proj.weight[channels:], mlp.up_proj.weight[channels:], mlp.down_proj.weight[:, channels:]]
        per_row = 2.0 * sum(w.numel() for w in skipped)
        per_row_nonzero = 2.0 * sum(int((w != 0).sum()) for w in skipped)  # once: the weights are fixed once loaded

        def forward(x: Tensor) -> Tensor:
            visual = self.visual if self.active and self.visual is not None else None
            if visual is None or x.shape[1] != visual.shape[1] or not bool(visual.any()):
                return full(x)  # decoding (text only), or no visual token in this sequence
            out = torch.empty_like(x)
            out[~visual] = full(x[~visual])
            out[visual] = sliced_mlp(x[visual], mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, channels)
            rows = int(visual.sum()) / visual.shape[0]
            self.history[-1].skipped_flops += rows * per_row
            self.history[-1].skipped_nonzero_flops += rows * per_row_nonzero
            return out

        mlp.forward = forward
        self._mlps.append(mlp)

    # ---- hooks --------------------------------------------------------------------------------------
    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[1] == 1:  # a decode step (or embeddings we cannot read): keep the prefill's state
            return self._decode_mask(args, kwargs)
        self._reset()
        visual = torch.isin(ids, torch.tensor(self.visual_ids, device=ids.device)) if self.visual_ids \
            else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(visual.any()):
            return
        video = torch.isin(ids, torch.tensor(self.video_ids, device=ids.device)) if self.video_ids \
            else torch.zeros_like(visual)
        self.active, self.full_len = True, ids.shape[1]
        self.index = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        self.visual = visual
        self.groups = visual_groups(visual.cpu(), video.cpu(), video_frames(kwargs)).to(ids.device)
        self._video = video
        self._media_kwargs = {k: kwargs[k] for k in ("image_grid_thw", "video_grid_thw", "image_sizes") if k in kwargs}
        self.history.append(PrefillStats(visual_in=int(visual.sum())))

    def _decode_mask(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        """When the first layer cached fewer tokens than the prompt had, the model sizes its decode masks by that
        cache: its 2-D padding mask is cut to the same tokens (and the new ones), so both line up."""
        mask = kwargs.get("attention_mask")
        first = self.kept_by_layer.get(0)
        if not self.active or first is None or first.shape[1] == self.full_len or not isinstance(mask, Tensor) \
                or mask.dim() != 2 or mask.shape[1] < self.full_len:
            return None
        extra = torch.arange(self.full_len, mask.shape[1], device=mask.device).expand(first.shape[0], -1)
        return args, {**kwargs, "attention_mask": _take(mask, torch.cat([first, extra], dim=1), 0, 1)}

    def _start_capture(self, i: int) -> None:
        """Before layer i in a prefill whose next layer drops (in decoding every layer has its kept set)."""
        if self.active and i + 1 not in self.kept_by_layer:
            score = self.plan.drops[i + 1].score
            assert score is not None
            self._sink = []
            self._capture = capture_attention_score(self.layers[i], self._sink, score.fn)
            self._capture.__enter__()
            heads, head_dim = attention_dims(self.layers[i])
            self.history[-1].scoring_flops += score.flops(int(self.index.shape[1]), heads, head_dim)

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
                # the mask's key columns are the first layer's cached tokens, then the new ones
                first, kept = self.kept_by_layer[0], self.kept_by_layer[i]
                columns = torch.stack([torch.searchsorted(first[b], kept[b]) for b in range(kept.shape[0])])
                extra = torch.arange(first.shape[1], mask.shape[-1], device=mask.device).expand(kept.shape[0], -1)
                kwargs["attention_mask"] = _take(mask, torch.cat([columns, extra], dim=1), 0, 3)
            return args, kwargs
        if i in self.plan.drops:
            hidden = self._drop(i, hidden)
        if i == 0:
            self.entry = [int(v) for v in self.visual.sum(dim=1).tolist()]
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
        drop = self.plan.drops[i]
        scores = None
        if drop.score is not None:
            scores = self._sink[-1] if self._sink else None
            if scores is None:
                raise RuntimeError(f"no attention of layer {i - 1} was captured for the drop before layer {i}")
        kept = [drop.choose(DropInput(i, hidden[b], self.visual[b], self.groups[b],
                                      None if scores is None else scores[b].float(),
                                      self.entry[b] if self.entry else int(self.visual[b].sum())))
                for b in range(hidden.shape[0])]
        if len({k.positions.numel() for k in kept}) != 1:
            raise RuntimeError("token reduction keeps a different number of tokens per sample in this batch; "
                               "evaluate with batch size 1")
        keep = torch.stack([k.positions for k in kept])  # positions within the current sequence
        self.history[-1].scoring_flops += sum(k.flops for k in kept) / len(kept)
        if self.full is None:
            self.full = hidden.new_zeros(hidden.shape[0], self.full_len, hidden.shape[2])
        self.full.scatter_(1, self.index.unsqueeze(-1).expand(-1, -1, hidden.shape[2]), hidden)
        self.index = torch.gather(self.index, 1, keep)
        self.visual = torch.gather(self.visual, 1, keep)
        self.groups = torch.gather(self.groups, 1, keep)
        rows = [k.hidden if k.hidden is not None else hidden[b].index_select(0, k.positions)
                for b, k in enumerate(kept)]
        return torch.stack(rows).to(hidden.dtype)

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
