"""SparseVLM's pure tensor math: text raters, the per-stage visual counts, and the recycling of dropped tokens.

Released code (Gumpest/SparseVLMs, `llava/model/language_model/modelling_sparse_llama.py`, `score.py`, `utils.py`;
the default `USE_VERSION` is "1_0", the v1.5 algorithm): the raters are the text tokens after the image whose
softmax relevance to the visual token embeddings, averaged over the visual tokens, exceeds its mean; after layers
2, 6 and 15 of LLaVA-1.5's 32 the image tokens are ranked by the raters' attention (mean over heads, then over the
raters) and a fixed count is kept per layer (`sparse_token_dict`, by `RETAIN_TOKN`); of the dropped ones the top
30% by that score (+1) are clustered (DPC-KNN, one cluster per 10, +1) and each cluster's mean stays as a token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

RELEASE_LAYERS, RELEASE_DEPTH, RELEASE_VISUAL = (2, 6, 15), 32, 576
# score.py's sparse_token_dict (USE_VERSION 1_0): RETAIN_TOKN -> tokens kept after layers 2, 6, 15 of 576
RELEASE_COUNTS = {64: (66, 30, 17), 96: (238, 48, 26), 128: (303, 110, 36), 192: (300, 200, 110)}
RECYCLE_SHARE, TOKENS_PER_CLUSTER = 0.3, 10


def stage_shares(share: float) -> tuple[float, ...]:
    """The kept share of the entering visual tokens after each stage for a retained share (RETAIN_TOKN / 576):
    the release's table at 64, 96, 128 and 192 of 576; linear between neighbours; from 192 up to 1 linear toward
    keeping everything; below 64 the 64 row scaled down."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    points = sorted((n / RELEASE_VISUAL, tuple(c / RELEASE_VISUAL for c in counts))
                    for n, counts in RELEASE_COUNTS.items())
    points.append((1.0, (1.0, 1.0, 1.0)))
    low, row = points[0]
    if share <= low:
        return tuple(r * share / low for r in row)
    for (a, ra), (b, rb) in zip(points, points[1:]):
        if share <= b:
            t = (share - a) / (b - a)
            return tuple(x + (y - x) * t for x, y in zip(ra, rb))
    return points[-1][1]


def scaled_layers(num_layers: int) -> tuple[int, ...]:
    """The release's scoring layers 2, 6, 15 of 32 at another depth (rounded half up, distinct, below the last
    layer): 32 -> (2, 6, 15), 28 -> (2, 5, 13), the tiny models' 4 -> (0, 1, 2)."""
    layers = [min(num_layers - 2, math.floor(layer * num_layers / RELEASE_DEPTH + 0.5)) for layer in RELEASE_LAYERS]
    return tuple(sorted(set(layers)))


def stage_count(n_entry: int, share: float, n_now: int) -> int:
    """Visual tokens a stage keeps: round(share x the visual tokens that entered the LLM), at most one fewer than
    it has now (the release's min(count, v_token_num - 1): one is always dropped, and recycled)."""
    return max(0, min(math.floor(n_entry * share + 0.5), n_now - 1))


def select_raters(visual: Tensor, text: Tensor) -> Tensor:
    """Indices (into `text`) of the raters: visual [V, D] and text [N, D] input embeddings; each text token's
    softmax-over-text relevance v @ t, averaged over the visual tokens, above the mean of those averages. When
    none is above it (every text token equal: one token), all are raters (the release's mean of none is NaN)."""
    relevance = torch.softmax(visual.float() @ text.float().T, dim=1).mean(dim=0)
    raters = torch.nonzero(relevance > relevance.mean()).flatten()
    return raters if raters.numel() else torch.arange(text.shape[0], device=text.device)


def rater_flops(n_visual: int, n_text: int, dim: int) -> float:
    """FLOPs of select_raters' one matmul."""
    return 2.0 * n_visual * n_text * dim


def top_first(scores: Tensor, count: int) -> Tensor:
    """Indices of the `count` largest scores, ties broken by index (earlier first), in descending score order."""
    order = torch.argsort(-scores.double(), stable=True)
    return order[:max(0, count)]


def density_peaks(x: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """DPC-KNN (TCFormer's, as the release's `cluster_and_merge`) of x [N, D] into `clusters` groups: distances
    scaled by 1/sqrt(D), density exp(-mean squared distance to the k = clusters nearest, self included), each
    token's distance to the nearest denser token (the largest distance when none is denser), centers the largest
    distance x density, every token to its nearest center. Returns (centers [C] ascending, assignment [N] into
    them). The release adds noise of 1e-6 to the densities to break ties; here ties fall to the lower index."""
    n, dim = x.shape
    xf = x.float()
    sq = (xf * xf).sum(dim=1)
    gram = xf @ xf.T
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).sqrt() / math.sqrt(dim)
    dist.fill_diagonal_(0)
    nearest = torch.topk(dist, k=clusters, dim=1, largest=False).values
    density = torch.exp(-(nearest ** 2).mean(dim=1))
    denser = density[None, :] > density[:, None]
    parent = torch.where(denser, dist, dist.max()).min(dim=1).values
    centers = torch.sort(top_first(parent * density, clusters)).values
    assign = dist[centers].argmin(dim=0)
    assign[centers] = torch.arange(clusters, device=x.device)
    return centers, assign


def merge_clusters(x: Tensor, assign: Tensor, clusters: int) -> Tensor:
    """Each cluster's mean [C, D] as the release averages it: sum / (members + 1e-6)."""
    sums = x.new_zeros(clusters, x.shape[1]).index_add_(0, assign, x)
    counts = x.new_zeros(clusters).index_add_(0, assign, torch.ones_like(assign, dtype=x.dtype))
    return sums / (counts[:, None] + 1e-6)


def recycle(dropped: Tensor, scores: Tensor, share: float = RECYCLE_SHARE,
            per_cluster: int = TOKENS_PER_CLUSTER) -> tuple[Tensor, Tensor, float]:
    """The release's recycling of dropped visual tokens dropped [M, D] with their rater scores [M]: the top
    int(M x share) + 1 by score, clustered into int(that / per_cluster) + 1, each cluster's mean kept. Returns
    (merged states [C, D], the index into `dropped` of each cluster's center; FLOPs of the one matmul)."""
    count = min(dropped.shape[0], int(dropped.shape[0] * share) + 1)
    chosen = top_first(scores, count)
    clusters = int(count / per_cluster) + 1
    x = dropped[chosen]
    centers, assign = density_peaks(x, clusters)
    merged = merge_clusters(x.float(), assign, clusters).to(dropped.dtype)
    return merged, chosen[centers], 2.0 * count * count * dropped.shape[1]


def stage_visuals(n: int, shares: tuple[float, ...], recycle_share: float | None = RECYCLE_SHARE,
                  per_cluster: int = TOKENS_PER_CLUSTER) -> list[int]:
    """Visual tokens after each stage when `n` entered the LLM: `stage_count` kept, plus (`recycle_share` not
    None) the cluster means `recycle` adds from the dropped ones. The counts depend on n alone, not on the scores,
    so a budget can be fitted before the prefill runs."""
    now, out = n, []
    for share in shares:
        if now == 0:
            out.append(0)
            continue
        kept = stage_count(n, share, now)
        gone = now - kept
        if recycle_share is not None and gone > 0:
            kept += int(min(gone, int(gone * recycle_share) + 1) / per_cluster) + 1
        out.append(kept)
        now = kept
    return out


def layer_total(n: int, layers: tuple[int, ...], depth: int, visuals: list[int]) -> int:
    """Visual tokens summed over the `depth` layers: n up to and including the first ranking layer, then each
    stage's count from the layer after its ranking layer."""
    total, now, start = 0, n, 0
    for layer, count in zip(layers, visuals):
        total += now * (layer + 1 - start)
        now, start = count, layer + 1
    return total + now * (depth - start)


def fit_scale(n: int, shares: tuple[float, ...], layers: tuple[int, ...], depth: int, average: float,
              recycle_share: float | None = RECYCLE_SHARE, per_cluster: int = TOKENS_PER_CLUSTER) -> float:
    """The factor f on every stage's share (each capped at 1) whose integer schedule at this depth, recycled cluster
    means counted, averages nearest `average` x n visual tokens over the layers (the smaller f on a tie). The
    average never falls as f rises (one more kept token drops one fewer, so recycles as many clusters or one
    fewer): bisect for where it reaches the target, then take the nearer side."""
    target = average * n * depth
    high = 1 / min(shares) if min(shares) > 0 else 1.0

    def total(f: float) -> int:
        return layer_total(n, layers, depth, stage_visuals(n, tuple(min(1.0, f * s) for s in shares),
                                                            recycle_share, per_cluster))

    low = 0.0
    if total(low) >= target:
        return low
    if total(high) <= target:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) < target else (low, mid)
    return low if target - total(low) <= total(high) - target else high
