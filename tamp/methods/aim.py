"""AIM (Zhong et al., ICCV 2025): merge similar visual tokens before the LLM, then prune them progressively
inside it by a PageRank importance over each layer's attention.

Released code (LaVi-Lab/AIM): before the LLM, ToMe-style bipartite merging within each video frame, two passes
leaving 25% (196 -> 98 -> 49 on LLaVA-OneVision-7B); inside the LLM, from a middle layer on, each layer's
attention logits are softmaxed at temperature 0.1, pushed through 5 PageRank steps, combined over heads by
RMS, and the visual tokens are cut to a linearly falling share of those that entered the LLM (Qwen2-7B, 28
layers: 87.5% after layer 14, 0% after layer 21); text tokens are never pruned, and pruned tokens are masked as
keys but stay queries. Two switches (docs/fidelity.md has the table): `aim_semantics` = release (default: video
frames only merge, survivors in the release's order at re-packed positions; pruned tokens masked as keys, so they
stay PageRank rows, until the schedule's last prune removes them) or removal (ours: every image and frame merges,
survivors keep their places and positions, pruned tokens leave the sequence at once); `aim_merge_schedule` =
release (default: passes removing n//2, n//4, ... of a frame's n tokens) or share (repeat until round(n x keep)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tamp.algorithms.token_keep import linear_schedule, scheduled_count, top_visual
from tamp.algorithms.token_merge import merge_passes, merge_target, release_passes, share_passes
from tamp.algorithms.token_rank import pagerank
from tamp.engine.attention import AttentionScore, head_logits
from tamp.errors import TampError
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod

# the released schedules' first pruning layer by depth (Qwen2-7B: 28 layers, LLaMA/Vicuna-7B: 32 layers)
RELEASED_START = {28: 14, 32: 13}
STAGES = ("merge+prune", "merge", "prune")
SEMANTICS = ("release", "removal")
SCHEDULES = ("release", "share")
CHUNK_BYTES = 1 << 28  # the PageRank's attention matrices formed at once (256 MiB of fp32)


def prune_start(params: dict[str, Any], num_layers: int) -> int:
    start = int(params["aim_prune_start"])
    return start if start >= 0 else RELEASED_START.get(num_layers, num_layers // 2)


def merge_schedule(schedule: str, keep: float) -> Callable[[int], list[int]]:
    """Group size -> the sources each pass removes: the release's halving passes, or ours until the share."""
    if schedule == "release":
        try:
            release_passes(2, keep)
        except ValueError as e:
            raise TampError(f"aim_merge_keep {keep}: {e}; or set aim_merge_schedule=share") from None
        return lambda n: release_passes(n, keep)
    return lambda n: share_passes(n, merge_target(n, keep))


def merge_drop(keep: float, semantics: str = "removal", schedule: str = "share") -> Drop:
    """Before layer 0: each image / video frame's tokens merged down to `keep` of their count. With the release's
    semantics only video frames merge, and the survivors come in the release's order at re-packed positions."""
    passes = merge_schedule(schedule, keep)
    release = semantics == "release"

    def choose(seen: DropInput) -> Kept:
        hidden = seen.hidden.clone()
        flops = 0.0
        order = torch.arange(seen.hidden.shape[0], device=seen.hidden.device)
        video = seen.video if seen.video is not None else torch.zeros_like(seen.visual)
        merging = seen.visual & video if release else seen.visual
        for group in torch.unique(seen.groups[merging & (seen.groups >= 0)]).tolist():
            members = torch.nonzero(seen.groups == group).flatten()
            kept, states, spent = merge_passes(seen.hidden[members], passes(int(members.numel())),
                                               "release" if release else "positions")
            # a group is one contiguous run: its survivors, in the order the merge returned them, fill its first
            # slots, the rest of its slots go
            order[members[:kept.numel()]] = members[kept]
            order[members[kept.numel():]] = -1
            hidden[members[kept]] = states
            flops += spent
        positions = order[order >= 0]
        return Kept(positions, hidden[positions], flops, repack=release)

    return Drop(choose)


def pagerank_score(tau: float, iters: int) -> AttentionScore:
    """Importance of every token from one layer's attention: PageRank per head, RMS over heads."""

    def score(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None) -> Tensor:
        heads, t = query.shape[1], query.shape[2]
        chunk = max(1, CHUNK_BYTES // (4 * t * t))  # heads whose fp32 T x T matrices are formed at once
        out = []
        for b in range(query.shape[0]):
            squares = sum(pagerank(head_logits(query, key, mask, scaling, b, slice(h, h + chunk)), tau, iters)
                          .pow(2).sum(0) for h in range(0, heads, chunk))
            out.append((squares / heads).sqrt())
        return torch.stack(out)

    def flops(tokens: int, heads: int, head_dim: int) -> float:
        return 2.0 * tokens * tokens * heads * head_dim + iters * 2.0 * tokens * tokens * heads

    return AttentionScore(score, flops)


def prune_drop(rate: float, score: AttentionScore, mask: bool = False) -> Drop:
    """Keep int(visual tokens at the LLM's entry x rate) of the visual tokens, the highest scored; all text. With
    `mask` (the release) the others stay in the sequence, masked as keys, so they remain PageRank rows."""

    def choose(seen: DropInput) -> Kept:
        assert seen.scores is not None
        count = min(scheduled_count(seen.visual_at_entry, rate), int(seen.visual.sum()))
        return Kept(top_visual(seen.scores, seen.visual, count))

    return Drop(choose, score, mask)


def prune_drops(params: dict[str, Any], num_layers: int) -> dict[int, Drop]:
    """After each layer l from the start on, a drop at rate(l) scored by that layer's attention."""
    start, step = prune_start(params, num_layers), float(params["aim_prune_step"])
    score = pagerank_score(float(params["aim_tau"]), int(params["aim_iters"]))
    mask = str(params["aim_semantics"]) == "release"
    drops: dict[int, Drop] = {}
    for layer in range(max(start, 0), num_layers - 1):
        rate = linear_schedule(layer, start, step)
        if rate >= 1.0:
            continue
        drops[layer + 1] = prune_drop(rate, score, mask)
        if rate <= 0.0:
            break
    if mask and drops:  # after the last drop no PageRank reads the masked rows: they (and its pruned) leave
        last = max(drops)
        drops[last] = Drop(drops[last].choose, drops[last].score)
    return drops


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    """The merge before layer 0 and the prune drops; a prune start given beyond the model's depth (no drop after
    it) is a ValueError, as FastV's drop layer beyond the model is, not a run that silently prunes nothing."""
    stages = str(params["aim_stages"])
    start = prune_start(params, num_layers)
    if "prune" in stages and int(params["aim_prune_start"]) >= 0 and start >= num_layers - 1:
        raise ValueError(f"aim_prune_start {start} leaves no layer to prune after: this model has {num_layers} "
                         f"decoder layers, so it must be at most {num_layers - 2} (or -1 for the released schedule)")
    drops = prune_drops(params, num_layers) if "prune" in stages else {}
    if "merge" in stages and float(params["aim_merge_keep"]) < 1.0:
        drops[0] = merge_drop(float(params["aim_merge_keep"]), str(params["aim_semantics"]),
                              str(params["aim_merge_schedule"]))
    return TokenPlan(dict(sorted(drops.items())))


def _fraction(name: str, low_open: bool = False):
    def check(v: float) -> str | None:
        ok = (0 < v <= 1) if low_open else (0 <= v <= 1)
        return None if ok else f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {v}"
    return check


PARAMS = (
    Param("aim_stages", str, "merge+prune", "which stages run: merging before the LLM, pruning inside it, or both",
          choices=STAGES),
    Param("aim_merge_keep", float, 0.25, "fraction of each image / video frame's visual tokens left after merging",
          check=_fraction("aim_merge_keep", low_open=True)),
    Param("aim_merge_schedule", str, "release", "merge passes: release (remove n//2, then n//4, ...: keep 1/2^k) or "
          "share (repeat until round(n x keep) remain)", choices=SCHEDULES),
    Param("aim_semantics", str, "release", "release: merge video frames only, survivors in the release's order at "
          "re-packed positions; removal: merge every image and frame, survivors in place", choices=SEMANTICS),
    Param("aim_prune_start", int, -1, "first layer whose attention prunes (0-based); -1: the released schedule's "
          "(14 of 28 layers, 13 of 32), else half the depth",
          check=lambda v: None if v >= -1 else f"aim_prune_start must be -1 (auto) or a layer index, got {v}"),
    Param("aim_prune_step", float, 0.125, "share of the entering visual tokens pruned after each layer from the start",
          check=_fraction("aim_prune_step")),
    Param("aim_tau", float, 0.1, "softmax temperature of the attention logits before PageRank",
          check=lambda v: None if v > 0 else f"aim_tau must be positive, got {v}"),
    Param("aim_iters", int, 5, "PageRank iterations",
          check=lambda v: None if v >= 1 else f"aim_iters must be at least 1, got {v}"),
)

METHOD = TokenMethod(
    name="aim", label="AIM", order=21,
    summary="merge similar visual tokens per frame before the LLM, then prune them by PageRank on a falling schedule",
    params=PARAMS, plan=plan, version=2,
    attention=("PageRank needs each head's whole T x T attention: formed from the layer's own query and key (the "
               "layer itself still runs its kernel), a few heads at a time so memory stays bounded"),
)
