"""HoliTom's tensor math (Shao et al., 2025; cokeshao/HoliTom, `holitom/llava_arch.py`, `modeling_qwen2.py`).

Outside the LLM, one video's pooled frame tokens [F, N, D] are cut into segments of consecutive frames chosen by
a dynamic programme to maximise the tokens that stay the same across a segment (adjacent-frame cosine similarity
above tau); within a segment the static tokens are averaged over its frames and clustered (DPC-KNN density
peaks, each member joining its nearest peak), the others keep per frame the ones the vision encoder's attention
favours (and, with a share D, cluster the rest). Inside the LLM, at one layer, the visual tokens the last token
attends to least are averaged into the most similar kept one. Each function restates one release function; the
tests restate them again as loops (tests/tamp/algorithms/test_holitom.py).

Differences from the release, all in ties: DPC-KNN's density gets no 1e-6 random noise (the release's tie
breaker; here ties go to the earlier token, e.g. k = 1, where every density is 1), the inner merge ranks ties
by position (earlier first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

VERSION = 1


def adjacent_similarity(frames: Tensor) -> Tensor:
    """[F, N, D] -> [F - 1, N]: each token's cosine similarity with the same token of the next frame."""
    normed = torch.nn.functional.normalize(frames.float(), p=2, dim=-1)
    return torch.nn.functional.cosine_similarity(normed[:-1], normed[1:], dim=-1)


def static_counts(similarity: Tensor, tau: float) -> Tensor:
    """[F, F]: entry (s, e), e > s, is the tokens a segment of frames s..e saves by keeping its static tokens once:
    (tokens above tau between every adjacent pair in s..e) x (e - s); 0 elsewhere."""
    frames = similarity.shape[0] + 1
    counts = torch.zeros(frames, frames, dtype=torch.float64)
    above = (similarity > tau).long()
    for s in range(frames - 1):
        static = torch.cumprod(above[s:], dim=0).sum(dim=-1)  # row j: static over frames s..s + j + 1
        counts[s, s + 1:] = static.double() * torch.arange(1, frames - s, dtype=torch.float64)
    return counts


def static_windows(similarity: Tensor, tau: float, max_window: int) -> tuple[list[tuple[int, int]], float]:
    """The release's segments (start, end) of a video and the tokens they save: dp[i] is the most saved by
    frames 0..i, either frame i alone or a segment of 2..max_window frames ending at i (a strictly larger value
    wins, so ties keep the shorter choice)."""
    counts = static_counts(similarity, tau).tolist()
    frames = len(counts)
    best, start = [0.0] * frames, [0] * frames
    for i in range(frames):
        value, first = (best[i - 1] if i > 0 else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            candidate = (best[j] if j >= 0 else 0.0) + counts[j + 1][i]
            if candidate > value:
                value, first = candidate, j + 1
        best[i], start[i] = value, first
    segments, i = [], frames - 1
    while i >= 0:
        segments.append((start[i], i))
        i = start[i] - 1
    return segments[::-1], best[-1]


def adjusted_keep(keep: float, frames: int, tokens: int, saved: float) -> float:
    """The share each segment keeps of what is left after the temporal merge, so the video keeps `keep` of its
    tokens in all: keep / ((total - saved) / total), at most 1 (the release's retain_ratio update)."""
    total = frames * tokens
    return min(keep / ((total - saved) / total), 1.0)


def scaled_distances(x: Tensor) -> tuple[Tensor, float]:
    """[n, D] -> ([n, n] Euclidean distances / sqrt(D), matmul FLOPs): the release's cdist / sqrt(D)."""
    sq = (x * x).sum(dim=-1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0).fill_diagonal_(0.0)
    return d2.sqrt() / math.sqrt(x.shape[-1]), 2.0 * x.shape[0] * x.shape[0] * x.shape[1]


def density_peaks(dist: Tensor, count: int, k: int) -> Tensor:
    """DPC-KNN (cluster_dpc_knn): density exp(-mean squared distance to the k nearest, self included); a
    token's spread is its distance to the nearest denser token (the largest distance for the densest); the
    `count` tokens of highest density x spread (ties: earlier first), as ascending indices."""
    nearest = torch.topk(dist, k, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    denser = density[None, :] > density[:, None]
    spread = torch.where(denser, dist, dist.max()).min(dim=-1).values
    order = torch.argsort(-(spread * density).double(), stable=True)
    return torch.sort(order[:count]).values


def merge_into_peaks(x: Tensor, peaks: Tensor, dist: Tensor, beta: float) -> Tensor:
    """merge_tokens_by_clustering: every other token joins its nearest peak; a peak with members becomes
    beta x peak + (1 - beta) x mean of its members, one without stays itself. [count, D] in peak order."""
    others = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    others[peaks] = False
    out = x[peaks].clone()
    if not bool(others.any()):
        return out
    joins = dist[others][:, peaks].argmin(dim=-1)
    sums = torch.zeros_like(out).index_add_(0, joins, x[others])
    members = torch.bincount(joins, minlength=peaks.numel()).to(x.dtype)[:, None]
    merged = beta * out + (1.0 - beta) * sums / members.clamp_min(1.0)
    return torch.where(members > 0, merged, out)


def cluster(x: Tensor, count: int, k: int, beta: float) -> tuple[Tensor, Tensor, float]:
    """(peak indices ascending, their merged states, FLOPs) of `count` DPC-KNN clusters of x [n, D]."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=x.device), x[:0], 0.0
    dist, flops = scaled_distances(x)
    peaks = density_peaks(dist, count, min(k, count))
    return peaks, merge_into_peaks(x, peaks, dist, beta), flops


def frame_tokens(x: Tensor, attention: Tensor, keep: float, contextual: float, k: int,
                 beta: float) -> tuple[Tensor, Tensor, float]:
    """merge_tokens_by_attention_density on one frame's n tokens: ceil(n x keep) in all, of them round(that x
    (1 - contextual)) dominant (the most attended, in position order), the rest DPC-KNN clusters of the others.
    Returns (source index per token, states, FLOPs): dominant first, then the clusters (their peaks)."""
    n = x.shape[0]
    total = math.ceil(n * keep)
    dominant = round(total * (1 - contextual))
    chosen = torch.sort(torch.topk(attention, dominant).indices).values if dominant > 0 else \
        torch.zeros(0, dtype=torch.long, device=x.device)
    rest = torch.ones(n, dtype=torch.bool, device=x.device)
    rest[chosen] = False
    others = torch.nonzero(rest).flatten()
    peaks, merged, flops = cluster(x[others], total - dominant, k, beta)
    return torch.cat([chosen, others[peaks]]), torch.cat([x[chosen], merged]), flops


@dataclass(frozen=True)
class VideoMerge:
    """One video after HoliTom's outer step: `sources` [M] the frame x N + token each output token stands at (a
    static cluster at its peak in the segment's first frame), `states` [M, D] in the release's order (per
    segment: the static clusters, then each frame's tokens), the segments, the tokens saved by the temporal merge
    and the adjusted keep share."""

    sources: Tensor
    states: Tensor
    segments: list[tuple[int, int]]
    saved: float
    keep: float
    flops: float


def merge_video(frames: Tensor, attention: Tensor, keep: float, tau: float, beta: float, contextual: float,
                k: int, max_window: int) -> VideoMerge:
    """HoliTom outside the LLM on one video: frames [F, N, D] (projected, pooled), attention [F, N] each token
    received at the vision feature layer (pooled the same way)."""
    count, n, _ = frames.shape
    similarity = adjacent_similarity(frames)
    segments, saved = static_windows(similarity, tau, max_window)
    share = adjusted_keep(keep, count, n, saved)
    sources, states, flops = [], [], 0.0
    for start, end in segments:
        static = torch.zeros(n, dtype=torch.bool, device=frames.device)
        if end > start:
            static = (similarity[start:end] > tau).all(dim=0)
            where = torch.nonzero(static).flatten()
            peaks, merged, spent = cluster(frames[start:end + 1, static].mean(dim=0), round(where.numel() * share),
                                           k, beta)
            sources.append(start * n + where[peaks])
            states.append(merged)
            flops += spent
        moving = torch.nonzero(~static).flatten()
        for f in range(start, end + 1):
            picked, merged, spent = frame_tokens(frames[f, moving], attention[f, moving], share, contextual, k, beta)
            sources.append(f * n + moving[picked])
            states.append(merged)
            flops += spent
    return VideoMerge(torch.cat(sources), torch.cat(states), segments, saved, share, flops)


def attended_merge(hidden: Tensor, scores: Tensor, keep: int) -> tuple[Tensor, Tensor, float]:
    """HoliTom inside the LLM on n visual states [n, D]: the `keep` most attended stay (ties: earlier first);
    each other one, in position order, is averaged into the kept state most cosine-similar to it,
    h <- (h + other) / 2, so a kept token with m members ends as h / 2^m + sum_j member_j / 2^(m - j) (j from
    0, in order). Returns (kept indices ascending, their states, FLOPs of the similarity matmul)."""
    order = torch.argsort(-scores.double(), stable=True)
    top, rest = order[:keep], torch.sort(order[keep:]).values
    if rest.numel() == 0 or top.numel() == 0:
        kept = torch.sort(top).values
        return kept, hidden[kept], 0.0
    x = hidden.float()
    a, b = x[rest], x[top]
    sim = (a @ b.T) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True).T)
    target = sim.argmax(dim=-1)  # into top
    members = torch.bincount(target, minlength=top.numel())
    rank = torch.zeros_like(target)
    for t in torch.unique(target).tolist():  # each source's place among its target's sources
        where = torch.nonzero(target == t).flatten()
        rank[where] = torch.arange(where.numel(), device=target.device)
    weight = torch.pow(2.0, -(members[target] - rank).double()).to(x.dtype)
    out = b * torch.pow(2.0, -members.double()).to(x.dtype)[:, None]
    out = out.index_add(0, target, a * weight[:, None])
    ascending = torch.argsort(top)
    return top[ascending], out[ascending].to(hidden.dtype), 2.0 * rest.numel() * top.numel() * hidden.shape[1]
