"""The sequence-editing core that token methods build on: remove or rewrite tokens between decoder layers, for real.

The released token-reduction code (FastV, AIM) masks attention, so dropped tokens still cost compute. Here the
hidden states of dropped tokens leave the sequence: later layers run on fewer tokens, their KV cache holds only
what they kept, and the rotary position embeddings, position ids and attention mask handed to each layer are
cut to the same tokens, so every kept token keeps its original position (Qwen2-VL's 3-D mrope included: the
model computes cos/sin from the full positions, this file only selects columns). In decoding, new tokens
continue from the original length and each layer's mask is cut to the keys that layer cached.

At the final norm the sequence is put back to its original length (a dropped token carries the state it had
when it was dropped), so logits keep their shape and the text positions every consumer reads are exact.

The public API, all a token method needs (docs/methods.md, "Writing a token method"):

- `TokenPlan(drops, installs)`: what a method's `plan(params, num_layers)` returns.
- `drops`: layer index i -> `Drop(choose, score)`, run before layer i. `choose(DropInput) -> Kept` sees one sample:
  its states, which tokens are visual, their image / frame groups, and, when `score` is set (an
  `AttentionScore`, i > 0), that score of layer i - 1's attention computed inside its own attention call.
  `Kept` lists the positions kept, optionally their rewritten states (a drop before layer 0 may merge, as AIM
  does) and the FLOPs choosing cost. A drop before layer 0 may `repack`: its kept tokens, in the order given,
  then run as if they were the prompt (positions 0..T'-1, causal in that order, decoding from T'). A drop with
  `mask` keeps every token in the sequence and masks the others as keys from then on (AIM's release: they stay
  queries, so later attention scores have their rows); a later drop without `mask` removes them.
- `installs`: anything else the method puts on the model for the editor's lifetime (YOPO's sliced visual MLP and
  its visual-attention patch): each is called with the `SequenceEditor` and returns an object with `.remove()`.
  An install reads the prefill in progress through `visual_rows(length)`, `groups`, `index`, `full_len`, `video`
  and `media_kwargs`, and charges the FLOPs its own work costs with `spent(flops)` and what it skips with
  `skipped(dense, nonzero)`.
- Per-layer accounting: `history` holds a `PrefillStats` per prefill (tokens each layer ran on, visual tokens,
  the FLOPs the method's scoring cost and those its installs skipped); the cost meter reads it.

Batches: each sample keeps its own count. A chooser sees one sample's own tokens only (the batch's left padding
taken off, so it sees what it would at batch size 1); when the samples keep different counts, or the prompt was
padded, the kept tokens are laid out again right-aligned with left padding (as `generate` pads), and each layer
from there gets its own mask (causal in each sample's order, padding slots hidden as keys, attending to
themselves only), per-sample positions (a repack: each sample's own 0..n-1) and, in decoding, masks cut to what
it cached. A batch with no padding whose samples keep equal counts takes the same path as batch size 1. Nothing
here names a method; transformers' internals are reached through tamp.models.internals only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from tamp.algorithms.token_keep import flag_runs
from tamp.engine.attention import AttentionScore, attention_dims, capture_attention_score
from tamp.inference.visual_grid import GRID_ARGS, GridArgs
from tamp.models import internals
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
    video: Tensor | None = None  # [T] bool: the visual tokens that are video (None: no video in this call)


@dataclass(frozen=True)
class Kept:
    """Positions within the current sequence, and their new states when the drop rewrites them. The positions
    ascend, unless `repack` (a drop before layer 0 only): then they are the new sequence in its new order, which
    the model sees as if it had been the prompt: contiguous positions 0..T'-1 and a causal mask in that order
    (AIM's release, which merges before the LLM). With mrope (Qwen2-VL) each token keeps its own 3-D position;
    only the order and the mask follow the new sequence."""

    positions: Tensor
    hidden: Tensor | None = None
    flops: float = 0.0  # what choosing cost in matmuls (AIM's merge similarities), charged to the prefill
    repack: bool = False


@dataclass(frozen=True)
class Drop:
    """One edit before a layer: per sample, which tokens stay (and, before layer 0, their new states)."""

    choose: Callable[[DropInput], Kept]
    score: AttentionScore | None = None  # of the previous layer's attention; None: the drop needs none
    # the tokens not kept stay in the sequence as queries and are masked as keys from here on (AIM's release);
    # later choosers see them as neither kept nor visual. They cost what they cost in the release (query rows
    # in every layer) until a later drop without `mask` removes them.
    mask: bool = False


class Installed(Protocol):
    """What an install leaves on the model: undone by `remove()`."""

    def remove(self) -> None: ...


# an install: called once with the editor when it is set up, returns what undoes it
Install = Callable[["SequenceEditor"], Installed]
_Part = TypeVar("_Part")


@dataclass(frozen=True)
class TokenPlan:
    """What a token method puts on a model: drops before layers (layer index -> Drop) and its own installs."""

    drops: dict[int, Drop] = field(default_factory=dict)
    installs: tuple[Install, ...] = ()

    def part(self, kind: type[_Part]) -> _Part | None:
        """The install of that type, if the plan has one (for reading a method's own settings back)."""
        return next((x for x in self.installs if isinstance(x, kind)), None)

    def is_empty(self) -> bool:
        return not self.drops and not self.installs


@dataclass
class PrefillStats:
    """One prefill: tokens each decoder layer ran on, visual tokens in and kept, FLOPs spent on scoring."""

    tokens_per_layer: list[float] = field(default_factory=list)  # per sample (a padded batch: the mean)
    visual_in: int = 0
    visual_kept_per_layer: list[int] = field(default_factory=list)
    # per sample: what the method's choosing cost (its attention scores' `AttentionScore.flops`, `Kept.flops`)
    scoring_flops: float = 0.0
    # per sample: FLOPs the method's installs skipped (YOPO: sliced MLPs, pruned heads' q/o projections, attention
    # to keys visual rows no longer see), with dense weights; and the same counting non-zero weights only
    skipped_flops: float = 0.0
    skipped_nonzero_flops: float = 0.0


def _take(x: Tensor, index: Tensor, batch_dim: int, seq_dim: int) -> Tensor:
    """x's entries at `index` [B, T'] along seq_dim, per sample along batch_dim (size B, or 1 if shared). One
    gather for the whole batch, not one select per sample: it runs for every layer of every decode step."""
    batch = index.shape[0]
    if x.shape[batch_dim] == 1 and batch > 1 and bool((index == index[:1]).all()):
        return x.index_select(seq_dim, index[0])
    size = list(x.shape)
    size[batch_dim] = batch
    source = x.expand(size) if x.shape[batch_dim] == 1 else x.narrow(batch_dim, 0, batch)
    shape = [1] * x.dim()
    shape[batch_dim], shape[seq_dim] = batch, index.shape[1]
    size[seq_dim] = index.shape[1]
    return source.gather(seq_dim, index.reshape(shape).expand(size))


def visual_groups(visual: Tensor, video: Tensor, frames: list[int]) -> Tensor:
    """[B, T] group ids: each contiguous run of visual tokens is one group (an image); a run of video tokens is
    split into `frames[k]` equal frames (the k-th video run, batch rows in order), tokens left over (LLaVA-
    OneVision's closing newline) forming a group of their own; when the videos' frames arrive as runs of their
    own (Qwen3-VL writes a timestamp before each), each such run is one frame. -1 outside visual tokens."""
    groups = [[-1] * visual.shape[1] for _ in range(visual.shape[0])]  # filled in Python: one tensor at the end
    next_id, video_run = 0, 0
    runs = [flag_runs(visual[b].tolist(), video[b].tolist()) for b in range(visual.shape[0])]
    video_runs = sum(int(video[b, t]) for b, row in enumerate(runs) for t, _ in row)
    if len(frames) < video_runs == sum(frames):
        frames = [1] * video_runs
    for b in range(visual.shape[0]):
        is_video = video[b].tolist()
        for t, end in runs[b]:
            length = end - t
            count = frames[video_run] if is_video[t] and video_run < len(frames) else 1
            video_run += int(is_video[t])
            per = length // count if 0 < count <= length else length
            groups[b][t:end] = [next_id + min(k // per, count) for k in range(length)]
            next_id += count + 1
    return torch.tensor(groups, dtype=torch.long).reshape(visual.shape).to(visual.device)


def video_frames(kwargs: dict[str, Any], video: Tensor | None = None) -> list[int]:
    """Frames per video in this call, in order: Qwen2-VL's temporal grid, or LLaVA-OneVision's frame axis. In
    `generate` (transformers 5) the media arrive encoded (`mm_encoder_outputs`) without pixels or grids: then
    LLaVA-OneVision's frames are the encoder's batch per video, and Qwen2-VL's are counted in its 3-D position ids:
    each frame restarts the (height, width) pattern, so a run of video tokens (`video` [B, T] bool) has as many
    frames as tokens at its first token's (height, width) (the temporal row cannot tell: Qwen2.5-VL's may repeat)."""
    grid = kwargs.get("video_grid_thw")
    if isinstance(grid, Tensor):
        return [int(t) for t in grid[:, 0].tolist()]
    pixels = kwargs.get("pixel_values_videos")
    if isinstance(pixels, Tensor) and pixels.dim() == 5:
        return [int(pixels.shape[1])] * int(pixels.shape[0])
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get("video")
    states, pooled = getattr(encoded, "last_hidden_state", None), getattr(encoded, "pooler_output", None)
    if isinstance(states, Tensor) and isinstance(pooled, Tensor) and states.dim() == 3 and pooled.dim() == 3:
        return [int(states.shape[0]) // int(pooled.shape[0])] * int(pooled.shape[0])
    pos = kwargs.get("position_ids")
    if encoded is not None and video is not None and isinstance(pos, Tensor) and pos.dim() == 3 \
            and pos.shape[-1] == video.shape[1]:
        height, width = pos[-2], pos[-1]  # [B, T]: the last two of Qwen2-VL's (t, h, w) rows
        frames = []
        for b in range(video.shape[0]):
            for t, end in flag_runs(video[b].tolist()):
                same = (height[b, t:end] == height[b, t]) & (width[b, t:end] == width[b, t])
                frames.append(int(same.sum()))
        return frames
    return []


def _choose(drop: Drop, x: DropInput, real: Tensor | None) -> Kept:
    """The drop's choice for one sample; in a padded batch it sees the sample's own tokens (`real`: their slots)
    only, as at batch size 1, and its positions are mapped back to slots."""
    if real is None:
        return drop.choose(x)
    own = DropInput(x.layer, x.hidden[real], x.visual[real], x.groups[real],
                    None if x.scores is None else x.scores[real], x.visual_at_entry,
                    None if x.video is None else x.video[real])
    k = drop.choose(own)
    return Kept(real[k.positions], k.hidden, k.flops, k.repack)


class SequenceEditor:
    """Hooks on a model's language stack that carry out a TokenPlan; `remove()` restores the model.

    What installs may read while a prefill runs: `active` (a prefill with visual tokens is being edited, or its
    decode steps follow), `full_len`, `index` [B, T_cur] (original positions of the tokens now in the sequence),
    `visual` and `groups` [B, T_cur], `video` [B, T_full] and `media_kwargs` (the prefill's image / video grid
    arguments), `kept_by_layer` (layer -> [B, T_l] original positions it cached), `history[-1]` (its stats)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, plan: TokenPlan) -> None:
        self.model, self.adapter, self.plan = model, adapter, plan
        stack = adapter.language_stack(model)
        self.layers = list(stack.layers)
        self.norm = internals.final_norm(model, stack.name)
        scored = sorted(i for i, d in plan.drops.items() if d.score is not None and not 0 < i < len(self.layers))
        if scored:
            raise ValueError(f"drop layers {scored} are outside 1..{len(self.layers) - 1}")
        bad = sorted(i for i in plan.drops if not 0 <= i < len(self.layers))
        if bad:
            raise ValueError(f"drop layers {bad} are outside 0..{len(self.layers) - 1}")
        self.visual_ids = [i for m in VISUAL for i in adapter.media_token_ids.get(m, [])]
        self.video_ids = list(adapter.media_token_ids.get("video", []))
        # each layer's sliding window (Gemma 3's local layers), None for global attention
        self.windows = [internals.attention_window(layer) for layer in self.layers]
        self.history: list[PrefillStats] = []
        self.installed: list[Installed] = []
        self._reset()
        self._grid_args = GridArgs(model)  # generate() hands the prefill no grid arguments: its encoders saw them
        self._handles = [adapter.runner(model).register_forward_pre_hook(self._on_model, with_kwargs=True),
                         self.norm.register_forward_pre_hook(self._on_norm)]
        deepstack = internals.route_deepstack(model, stack.name, self._deepstack)  # Qwen3-VL's
        if deepstack is not None:
            self._handles.append(deepstack)
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: self._on_layer(i, args, kwargs), with_kwargs=True))
            following = plan.drops.get(i + 1)
            if following is not None and following.score is not None:
                self._handles.append(layer.register_forward_pre_hook(lambda mod, args, i=i: self._start_capture(i)))
                self._handles.append(layer.register_forward_hook(lambda mod, args, out, i=i: self._stop_capture(i)))
        try:
            for install in plan.installs:
                self.installed.append(install(self))
        except Exception:
            self.remove()  # an install that fails leaves the model as it was
            raise

    def _reset(self) -> None:
        self.active = False
        self.full_len = 0
        self.index: Tensor | None = None
        self.visual: Tensor | None = None
        self.groups: Tensor | None = None
        self.entry: list[int] = []  # visual tokens per sample at the first layer
        self.kept_by_layer: dict[int, Tensor] = {}
        # per current token: its column in the model's full-length positions (ids / rotary) and in its 4-D mask
        # (its original position unless a repack gave it a new one), and its slot in the sequence layer 0 ran on
        self.pos: Tensor | None = None
        self.seq: Tensor | None = None
        self.slot: Tensor | None = None
        self.slot_by_layer: dict[int, Tensor] = {}
        self.seq_by_layer: dict[int, Tensor] = {}  # per layer: its tokens' mask columns (`seq`) in the prefill
        self.decode_pad: Tensor | None = None  # a decode step's 2-D padding mask over original positions, as given
        self.shift: int | Tensor = 0  # a repack's shortening: decoding continues from the re-packed length ([B, 1]
        # per sample in a re-laid batch)
        self.real: Tensor | None = None  # [B, T_full] the prompt's own tokens, when the batch was padded
        self.pad: Tensor | None = None  # [B, T_cur] slots of a re-laid batch that hold no token (left padding)
        self.pad_by_layer: dict[int, Tensor] = {}
        # the re-laid batch's masks, made once per layout (prefill) or per layout and step (decoding); keyed by the
        # ids of tensors the editor holds until the next prefill
        self._masks: dict[tuple, Tensor] = {}
        self.masked: Tensor | None = None  # [B, T_cur] tokens a masking drop took out as keys
        self.masked_by_layer: dict[int, Tensor] = {}
        self.steps = 0  # decode steps since the prefill
        self.mrope = False
        self.full: Tensor | None = None  # [B, T_full, D] states of tokens as they were dropped
        self._sink: list[Tensor] = []
        self._capture: Any = None
        self.media_kwargs: dict[str, Any] = {}
        self.video: Tensor | None = None

    def remove(self) -> None:
        """Restore the model. `installed` stays readable (what the installs recorded), each part removed."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._grid_args.remove()
        for part in reversed(self.installed):
            part.remove()

    # ---- what installs call -------------------------------------------------------------------------
    def visual_rows(self, length: int) -> Tensor | None:
        """[B, T] bool: the visual rows of the prefill in progress when its current sequence has `length` tokens
        and some are visual; None otherwise (decoding, text only, another module's sequence)."""
        visual = self.visual if self.active else None
        if visual is None or visual.shape[1] != length or not bool(visual.any()):
            return None
        return visual

    def spent(self, flops: float) -> None:
        """Charge FLOPs per sample of an install's own extra work (a score it computes) to this prefill."""
        self.history[-1].scoring_flops += flops

    def skipped(self, dense: float, nonzero: float) -> None:
        """Charge FLOPs per sample that an install's work saved (dense weights, non-zero weights) to this prefill."""
        self.history[-1].skipped_flops += dense
        self.history[-1].skipped_nonzero_flops += nonzero

    # ---- hooks --------------------------------------------------------------------------------------
    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[1] == 1:  # a decode step (or embeddings we cannot read): keep the prefill's state
            self.steps += 1
            self._masks.clear()
            mask = kwargs.get("attention_mask")
            self.decode_pad = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
            return self._decode_positions(*(self._decode_mask(args, kwargs) or (args, kwargs)))
        self._reset()
        visual = torch.isin(ids, torch.tensor(self.visual_ids, device=ids.device)) if self.visual_ids \
            else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(visual.any()):
            return
        video = torch.isin(ids, torch.tensor(self.video_ids, device=ids.device)) if self.video_ids \
            else torch.zeros_like(visual)
        self.active, self.full_len = True, ids.shape[1]
        self.index = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        self.pos = self.seq = self.slot = self.index
        pos = kwargs.get("position_ids")  # Qwen2-VL's 3-D positions (given in generate, else made from the grids)
        self.mrope = (isinstance(pos, Tensor) and pos.dim() == 3) or any(
            k in kwargs for k in ("image_grid_thw", "video_grid_thw", "mm_token_type_ids"))
        self.visual = visual
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape == ids.shape and not bool(mask.all()):
            self.real = mask.bool()
        # the call's grid arguments, else those its media encoders were called with (generate)
        self.media_kwargs = {**self._grid_args.seen, **{k: kwargs[k] for k in GRID_ARGS if k in kwargs}}
        frames = video_frames({**kwargs, **self.media_kwargs}, video.cpu())
        self.groups = visual_groups(visual.cpu(), video.cpu(), frames).to(ids.device)
        self.video = video
        self.history.append(PrefillStats(visual_in=int(visual.sum())))

    def _decode_mask(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        """When the first layer cached fewer tokens than the prompt had, the model sizes its decode masks by that
        cache: its 2-D padding mask is cut to the same tokens (and the new ones), so both line up."""
        mask = kwargs.get("attention_mask")
        first = self.kept_by_layer.get(0)
        pad = self.pad_by_layer.get(0)
        if self.active and pad is not None and isinstance(mask, Tensor) and mask.dim() == 2 \
                and mask.shape[1] >= self.full_len:
            return args, {**kwargs, "attention_mask": torch.cat([(~pad).to(mask.dtype), mask[:, self.full_len:]], 1)}
        if not self.active or first is None or first.shape[1] == self.full_len or not isinstance(mask, Tensor) \
                or mask.dim() != 2 or mask.shape[1] < self.full_len:
            return None
        extra = torch.arange(self.full_len, mask.shape[1], device=mask.device).expand(first.shape[0], -1)
        return args, {**kwargs, "attention_mask": _take(mask, torch.cat([first, extra], dim=1), 0, 1)}

    def _decode_positions(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        """After a repack the prompt was T' tokens long: a decode step's positions continue from T'."""
        pos, cache = kwargs.get("position_ids"), kwargs.get("cache_position")
        unshifted = isinstance(self.shift, int) and not self.shift
        if not self.active or unshifted or not isinstance(pos, Tensor) and not isinstance(cache, Tensor):
            return args, kwargs
        batch = self.index.shape[0] if self.index is not None else 1
        pos = cache[None].expand(batch, -1) if not isinstance(pos, Tensor) else pos
        return args, {**kwargs, "position_ids": pos - self.shift}

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
            own = self._windowed_decode_mask(i, hidden, kwargs) if any(self.windows) else None
            if own is not None:
                return args, {**kwargs, "attention_mask": own}
            mask = kwargs.get("attention_mask")
            if i in self.pad_by_layer:
                kwargs["attention_mask"] = self._decode_pad_mask(self.pad_by_layer[i], hidden)
            elif isinstance(mask, Tensor) and mask.dim() == 4 and self.slot_by_layer[i] is not self.slot_by_layer[0]:
                # the mask's key columns are the first layer's cached tokens, then the new ones (a layer that
                # cached what the first one did takes the mask as it is)
                first, columns = self.kept_by_layer[0], self.slot_by_layer[i]
                extra = torch.arange(first.shape[1], mask.shape[-1], device=mask.device).expand(columns.shape[0], -1)
                kwargs["attention_mask"] = _take(mask, torch.cat([columns, extra], dim=1), 0, 3)
            masked = self.masked_by_layer.get(i)
            if masked is not None:
                kwargs = self._mask_keys(kwargs, hidden, masked, masked.shape[1] + self.steps)
            return args, kwargs
        if i in self.plan.drops:
            hidden = self._drop(i, hidden)
        if i == 0:
            self.entry = [int(v) for v in self.visual.sum(dim=1).tolist()]
        stats = self.history[-1]
        pad = self._pad_now()
        stats.tokens_per_layer.append(int(hidden.shape[1]) if pad is None else float((~pad).sum()) / pad.shape[0])
        live = self.visual if self.masked is None else self.visual & ~self.masked
        stats.visual_kept_per_layer.append(int(live.sum()) // max(1, self.visual.shape[0]))
        self.kept_by_layer[i] = self.index
        if i == 0:
            self.slot = torch.arange(self.index.shape[1], device=self.index.device).expand(self.index.shape[0], -1)
        self.slot_by_layer[i] = self.slot
        self.seq_by_layer[i] = self.seq
        if self.pad is not None:  # a re-laid batch: positions cut, the mask made here
            self.pad_by_layer[i] = self.pad
            kwargs = self._cut(kwargs)
            cut = kwargs.get("attention_mask")
            windowed = any(w is not None for w in self.windows) and isinstance(cut, Tensor) and cut.dim() == 4
            kwargs["attention_mask"] = self._padded(cut) if windowed else self._prefill_pad_mask(hidden)
        elif self.index.shape[1] < self.full_len or self.seq is not self.index:
            kwargs = self._cut(kwargs)
        if self.masked is not None:
            self.masked_by_layer[i] = self.masked
            kwargs = self._mask_keys(kwargs, hidden, self.masked, hidden.shape[1])
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
        video = torch.gather(self.video, 1, self.index)
        visual = self.visual if self.masked is None else self.visual & ~self.masked
        pad = self._pad_now()
        kept = [_choose(drop, DropInput(i, hidden[b], visual[b], self.groups[b],
                                        None if scores is None else scores[b].float(),
                                        self.entry[b] if self.entry else int(visual[b].sum()), video[b]),
                        None if pad is None else torch.nonzero(~pad[b]).flatten())
                for b in range(hidden.shape[0])]
        repack = any(k.repack for k in kept)
        if repack and i != 0:
            raise RuntimeError(f"only a drop before layer 0 may re-pack positions (the drop before layer {i} did)")
        self.history[-1].scoring_flops += sum(k.flops for k in kept) / len(kept)
        if drop.mask:  # nothing leaves: what was not kept is masked as a key from this layer on
            out = torch.ones_like(self.visual)
            for b, k in enumerate(kept):
                out[b, k.positions] = False
            self.masked = out if self.masked is None else self.masked | out
            return hidden
        if self.masked is not None:  # a removing drop after masking ones: the masked tokens leave too
            kept = [Kept(k.positions[~m[k.positions]], None if k.hidden is None else k.hidden[~m[k.positions]])
                    for k, m in zip(kept, self.masked)]
            self.masked = None
        ragged = len({k.positions.numel() for k in kept}) != 1
        # a padded batch is laid out again, except on sliding-window models while the samples keep equal counts:
        # there the model's own masks (windows, image blocks, padding) are cut to the kept tokens, as for one sample
        if ragged or self.pad is not None or pad is not None and not any(w is not None for w in self.windows):
            return self._relayout(kept, hidden, repack)
        keep = torch.stack([k.positions for k in kept])  # positions within the current sequence
        if self.full is None:
            self.full = hidden.new_zeros(hidden.shape[0], self.full_len, hidden.shape[2])
        self._scatter(self.full, hidden)
        self.index = torch.gather(self.index, 1, keep)
        self.slot = torch.gather(self.slot, 1, keep)
        if repack:  # the new sequence as the prompt: contiguous positions (mrope: the tokens' own), causal mask
            packed = torch.arange(keep.shape[1], device=keep.device).expand(keep.shape[0], -1)
            self.pos = self.index if self.mrope else packed
            self.seq = packed
            self.shift = 0 if self.mrope else self.full_len - keep.shape[1]
        else:
            self.pos = torch.gather(self.pos, 1, keep)
            self.seq = torch.gather(self.seq, 1, keep)
        self.visual = torch.gather(self.visual, 1, keep)
        self.groups = torch.gather(self.groups, 1, keep)
        rows = [k.hidden if k.hidden is not None else hidden[b].index_select(0, k.positions)
                for b, k in enumerate(kept)]
        return torch.stack(rows).to(hidden.dtype)

    # ---- a re-laid batch: samples keep different counts, or the prompt was padded ----------------------------
    def _pad_now(self) -> Tensor | None:
        """[B, T_cur] bool: the slots holding no token of their sample (left padding); None when there are none."""
        if self.pad is not None:
            return self.pad
        return None if self.real is None else ~torch.gather(self.real, 1, self.index)

    def _scatter(self, full: Tensor, hidden: Tensor) -> Tensor:
        """full [B, T_full, D] with the current tokens' states written at their original positions (padding
        slots of a re-laid batch go to a spare column that is cut off)."""
        if self.pad is None:
            return full.scatter_(1, self.index.unsqueeze(-1).expand(-1, -1, hidden.shape[2]), hidden)
        index = self.index.masked_fill(self.pad, self.full_len).unsqueeze(-1).expand(-1, -1, hidden.shape[2])
        wide = torch.cat([full, full.new_zeros(full.shape[0], 1, full.shape[2])], dim=1).scatter_(1, index, hidden)
        return full.copy_(wide[:, :self.full_len])

    def _relayout(self, kept: list[Kept], hidden: Tensor, repack: bool) -> Tensor:
        """Each sample's kept tokens (no padding among them) right-aligned in a sequence as long as the longest,
        left-padded; the bookkeeping follows. A repack gives each sample its own positions 0..n-1 (the model's
        position columns lead..lead+n-1 hold them: left padding shifts a sample's positions by its lead)."""
        if self.full is None:
            self.full = hidden.new_zeros(hidden.shape[0], self.full_len, hidden.shape[2])
        self._scatter(self.full, hidden)
        width = max(int(k.positions.numel()) for k in kept)
        device = hidden.device
        lead = torch.zeros(len(kept), dtype=torch.long, device=device) if self.real is None \
            else self.real.long().argmax(dim=1)
        fields: dict[str, list[Tensor]] = {n: [] for n in ("index", "slot", "pos", "seq", "visual", "groups", "rows")}
        shift, pad = [], []
        for b, k in enumerate(kept):
            p, n = k.positions, int(k.positions.numel())
            gap = width - n
            zeros = torch.zeros(gap, dtype=torch.long, device=device)
            index = self.index[b, p]
            packed = torch.arange(n, device=device)
            fields["index"].append(torch.cat([zeros, index]))
            fields["slot"].append(torch.cat([zeros, self.slot[b, p]]))
            if repack:
                fields["pos"].append(torch.cat([zeros, index if self.mrope else packed + lead[b]]))
                fields["seq"].append(torch.cat([zeros, packed + lead[b]]))  # the model mask's columns (Gemma 3)
                shift.append(0 if self.mrope else self.full_len - int(lead[b]) - n)
            else:
                fields["pos"].append(torch.cat([zeros, self.pos[b, p]]))
                fields["seq"].append(torch.cat([zeros, self.seq[b, p]]))
            fields["visual"].append(torch.cat([zeros.bool(), self.visual[b, p]]))
            fields["groups"].append(torch.cat([zeros - 1, self.groups[b, p]]))
            rows = k.hidden if k.hidden is not None else hidden[b].index_select(0, p)
            fields["rows"].append(torch.cat([hidden.new_zeros(gap, hidden.shape[2]), rows.to(hidden.dtype)]))
            pad.append(torch.arange(width, device=device) < gap)
        self.index, self.slot, self.pos, self.seq, self.visual, self.groups, rows = (
            torch.stack(fields[n]) for n in ("index", "slot", "pos", "seq", "visual", "groups", "rows"))
        self.pad = torch.stack(pad)
        if repack and not self.mrope:
            self.shift = torch.tensor(shift, device=device)[:, None]
        return rows

    def _prefill_pad_mask(self, hidden: Tensor) -> Tensor:
        """[B, 1, T, T] additive mask of a re-laid batch: causal in each sample's own order (`seq`), padding slots
        hidden as keys and attending to themselves only (a row with no key would turn NaN). Made once for the
        layers between two drops (they share `seq` and `pad`)."""
        key = (id(self.seq), id(self.pad), hidden.dtype)
        if key not in self._masks:
            self._masks[key] = self._make_prefill_pad_mask(hidden)
        return self._masks[key]

    def _make_prefill_pad_mask(self, hidden: Tensor) -> Tensor:
        order, pad = self.seq, self.pad
        allowed = (order[:, None, :] <= order[:, :, None]) & ~pad[:, None, :]
        allowed |= torch.eye(pad.shape[1], dtype=torch.bool, device=pad.device) & pad[:, :, None]
        low = torch.finfo(hidden.dtype).min
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~allowed, low)[:, None]

    def _padded(self, mask: Tensor) -> Tensor:
        """A sliding-window model's own 4-D mask cut to a re-laid batch (its windows and image blocks as at batch size
        1: each sample's columns are its own original or re-packed ones), with the padding slots hidden as keys and
        attending to themselves only."""
        pad, eye = self.pad, torch.eye(self.pad.shape[1], dtype=torch.bool, device=self.pad.device)
        hide = (pad[:, None, None, :] | pad[:, None, :, None]) & ~eye
        own = eye & pad[:, None, :, None]
        if mask.dtype == torch.bool:
            return (mask & ~hide) | own
        low = torch.finfo(mask.dtype).min
        return mask.masked_fill(hide, low).masked_fill(own, 0.0)

    def _decode_pad_mask(self, pad: Tensor, hidden: Tensor) -> Tensor:
        """[B, 1, q, T_l + steps] additive mask of a decode step in a layer that cached a re-laid batch: its
        padding slots hidden, every generated token seen (causally among the step's own queries). Made once per
        step for the layers that share a layout (every layer after the same drop)."""
        queries = hidden.shape[1]
        key = (id(pad), self.steps, queries, hidden.dtype)
        if key not in self._masks:
            self._masks[key] = self._make_decode_pad_mask(pad, hidden)
        return self._masks[key]

    def _make_decode_pad_mask(self, pad: Tensor, hidden: Tensor) -> Tensor:
        queries = hidden.shape[1]
        new = torch.ones(queries, self.steps, dtype=torch.bool, device=pad.device).tril(self.steps - queries)
        allowed = torch.cat([(~pad)[:, None, :].expand(-1, queries, -1), new.expand(pad.shape[0], -1, -1)], dim=2)
        low = torch.finfo(hidden.dtype).min
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~allowed, low)[:, None]

    @staticmethod
    def _mask_keys(kwargs: dict[str, Any], hidden: Tensor, masked: Tensor, keys: int) -> dict[str, Any]:
        """The layer's 4-D mask with the first masked.shape[1] key columns masked where `masked` [B, T] says; with
        no mask given (sdpa's causal shortcut), a causal one over `keys` keys is made first."""
        mask = kwargs.get("attention_mask")
        queries = hidden.shape[1]
        if not isinstance(mask, Tensor) or mask.dim() != 4:
            low = torch.finfo(hidden.dtype).min
            mask = torch.zeros(masked.shape[0], 1, queries, keys, dtype=hidden.dtype, device=hidden.device)
            future = torch.ones(queries, keys, dtype=torch.bool, device=hidden.device).triu(keys - queries + 1)
            mask = mask.masked_fill(future, low)
        cols = torch.zeros(mask.shape[0], 1, 1, mask.shape[-1], dtype=torch.bool, device=mask.device)
        cols[..., :masked.shape[1]] = masked[:, None, None, :]
        if mask.dtype == torch.bool:
            mask = mask & ~cols
        else:
            mask = mask.masked_fill(cols, torch.finfo(mask.dtype).min)
        return {**kwargs, "attention_mask": mask}

    def _cut(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The model's full-length per-token arguments, cut to the tokens still in the sequence."""
        out = dict(kwargs)
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            out["position_embeddings"] = tuple(_take(t, self.pos, 0, 1) for t in pe)
        pos = kwargs.get("position_ids")
        if isinstance(pos, Tensor) and pos.shape[-1] == self.full_len:
            out["position_ids"] = _take(pos, self.pos, pos.dim() - 2, pos.dim() - 1)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 4:
            cut = _take(_take(mask, self.seq, 0, 2), self.seq, 0, 3)
            if self.seq is not self.index and not torch.equal(self.seq, self.index):
                cut = self._repacked_mask(mask, cut)
            out["attention_mask"] = cut
        return out

    def _deepstack(self, hidden: Tensor, mask: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """DeepStack adds vision features to the visual tokens after the first layers through a full-length mask
        [B, T_full] and one feature row per visual token in sequence order: both cut to the tokens now in the
        sequence, in its current order (kept, merged into or re-packed by a drop before or between those layers)."""
        if not self.active or self.index is None or mask.shape[-1] != self.full_len \
                or hidden.shape[1] != self.index.shape[1]:
            return mask, features
        index = self.index.to(mask.device)
        rows = (mask.flatten().cumsum(0) - 1).view_as(mask)  # each visual token's feature row
        kept = torch.gather(mask, 1, index)
        return kept, features[torch.gather(rows, 1, index)[kept].to(features.device)]
    def _repacked_mask(self, mask: Tensor, cut: Tensor) -> Tensor:
        """After a repack the mask is the new order's (causal, windows over the new positions), except that a key
        later in that order stays visible where the full mask let its query see it at their original positions,
        later there too: Gemma 3's image tokens keep attending to the rest of their image both ways (for a
        causal model nothing changes: no later key was visible)."""
        full = _take(_take(mask, self.index, 0, 2), self.index, 0, 3)
        n = self.index.shape[1]
        later = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
        ascending = self.index[:, None, :, None] < self.index[:, None, None, :]
        blocked = torch.tensor(False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min,
                               dtype=mask.dtype, device=mask.device)
        return torch.where(later, torch.where(ascending, full, blocked), cut)

    def _windowed_decode_mask(self, i: int, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor | None:
        """A decode step's mask for layer i of a model with sliding-window layers (Gemma 3), made from what that
        layer cached (a sliding layer's cache holds only its last window - 1 keys, of the tokens it kept): causal,
        the window counted in the mask's positions (the original ones, or a repack's new ones) as in the prefill,
        padding and masked keys off. None when the cache does not say what it holds (the general path runs)."""
        seq, queries = self.seq_by_layer[i], hidden.shape[1]
        before = self.steps - 1  # tokens generated before this step, one per step
        stored = internals.cached_length(kwargs.get("past_key_values"), i)
        if stored is None or stored > seq.shape[1] + before:
            return None
        batch, device = seq.shape[0], seq.device
        new = torch.arange(before + queries, device=device).expand(batch, -1)
        coords = torch.cat([seq, self.full_len - self.shift + new], dim=1)
        keep = torch.ones_like(coords, dtype=torch.bool)
        masked = self.masked_by_layer.get(i)
        if masked is not None:
            keep[:, :masked.shape[1]] &= ~masked
        if self.decode_pad is not None and self.decode_pad.shape[1] == self.full_len + before + queries:
            keep &= _take(self.decode_pad.bool(), torch.cat([self.kept_by_layer[i], self.full_len + new], dim=1), 0, 1)
        if i in self.pad_by_layer:  # a re-laid batch's padding slots
            keep[:, :seq.shape[1]] &= ~self.pad_by_layer[i]
        visible = stored + queries  # the layer's cached keys are the last `stored` of its prompt and past steps
        coords, keep = coords[:, -visible:], keep[:, -visible:]
        query = coords[:, -queries:, None]
        allowed = keep[:, None, :] & (coords[:, None, :] <= query)
        if self.windows[i] is not None:
            allowed &= coords[:, None, :] > query - self.windows[i]
        allowed = allowed[:, None]
        given = kwargs.get("attention_mask")
        if isinstance(given, Tensor) and given.dtype == torch.bool:
            return allowed
        low = torch.finfo(hidden.dtype).min
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=device).masked_fill(~allowed, low)

    def _on_norm(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self.active or self.full is None or args[0].shape[1] == 1 or \
                args[0].shape[1] == self.full_len and self.pad is None:
            return None
        return (self._scatter(self.full.clone(), args[0]), *args[1:])
