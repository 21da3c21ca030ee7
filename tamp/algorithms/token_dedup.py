"""DART's duplication-aware choice (Wen et al., EMNLP 2025) as tensor maths: pivot tokens by the L1 norm of their
keys, then, pivot after pivot, the visual tokens least similar to the pivot (cosine), so the tokens that duplicate
a pivot are the ones left out."""

from __future__ import annotations

import torch
from torch import Tensor

from tamp.algorithms.token_keep import keep_count

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def top_by(values: Tensor, positions: Tensor, count: int) -> list[int]:
    """The `count` positions with the largest values, largest first (ties: the earlier position first)."""
    order = torch.argsort(-values[positions].double(), stable=True)
    return positions[order[:max(0, count)]].tolist()


def release_pivot_order(image_pivots: list[int], text_pivots: list[int]) -> list[int]:
    """The order the release visits its pivots: `list(set(image + text))`, CPython's iteration order of a set of
    ints (by hash slot, not by value). It matters: each pivot picks from what the earlier ones left."""
    return list(set(image_pivots + text_pivots))


def per_pivot(n_visual: int, keep: float, pivots: int) -> int:
    """Tokens each pivot keeps: round(n x keep) // pivots (the release's max_num_trunction // (4 + 4): 128 -> 16,
    so the image keeps its 4 pivots + 8 x 16 = 132 tokens for the paper's '128')."""
    return keep_count(n_visual, keep) // max(1, pivots)


def spread(total: int, pivots: int) -> list[int]:
    """Picks per pivot (in visiting order) adding up to `total`: total // pivots each, one more for the first
    total % pivots, so a budget is met to the token rather than to a multiple of the pivot count."""
    if pivots <= 0:
        return []
    each, extra = divmod(max(0, total), pivots)
    return [each + int(i < extra) for i in range(pivots)]


def dart_keep(key_norms: Tensor, states: Tensor, visual: Tensor, text: Tensor, image_pivots: int, text_pivots: int,
              keep: float, exact: bool = False) -> tuple[Tensor, float]:
    """Ascending visual positions kept of one sample, and the FLOPs of the similarity matmuls.

    key_norms [T]: each token's pivot score (the release: L1 norm of the previous layer's keys); states [T, D]:
    what the similarity compares (the release: the final norm of the states entering the layer); visual [T] bool;
    text [T] bool: the tokens text pivots come from (the release: those after the image). The top `image_pivots`
    visual and `text_pivots` text tokens are pivots; in the release's order each pivot keeps the
    `per_pivot(...)` visual tokens least cosine-similar to it among those not kept yet (ties: the earlier
    position); the image pivots and every pick are kept, the text pivots are no visual token. keep >= 1 keeps
    every visual token (the release's floor division would drop up to 7). `exact` (the common token budget):
    round(n x keep) visual tokens in all, the image pivots counted in (at most that many of them) and the rest
    `spread` over the pivots, instead of the release's floor(round(n x keep) / pivots) each on top of them."""
    positions = torch.arange(states.shape[0], device=states.device)
    vis = positions[visual]
    target = keep_count(int(vis.numel()), keep)
    images = top_by(key_norms, vis, min(image_pivots, vis.numel(), target if exact else image_pivots))
    texts = top_by(key_norms, positions[text], min(text_pivots, int(text.sum())))
    order = release_pivot_order(images, texts)
    each = per_pivot(int(vis.numel()), keep, image_pivots + text_pivots)
    picks = spread(target - len(images), len(order)) if exact else [each] * len(order)
    unit = states.double()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    left = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    left[~visual] = False
    left[images] = False
    kept = set(images)
    flops = 0.0
    for pivot, each in zip(order, picks):
        candidates = positions[left]
        if candidates.numel() == 0 or each == 0:
            break  # `spread` gives the later pivots no more than the earlier
        similarity = (unit[candidates] @ unit[pivot].unsqueeze(1)).squeeze(1)  # a matmul the cost meter sees
        flops += 2.0 * candidates.numel() * states.shape[1]
        chosen = candidates[torch.argsort(similarity, stable=True)[:each]]
        left[chosen] = False
        kept.update(chosen.tolist())
    if keep >= 1.0:
        return vis, flops
    return torch.tensor(sorted(kept), dtype=torch.long, device=states.device), flops
