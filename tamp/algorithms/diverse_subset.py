"""DivPrune's max-min diversity subset: a greedy selection of the tokens farthest from those already chosen.

The released code (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune`) takes the cosine distance
1 - cos(x_i, x_j) between every pair of an image's visual tokens after the projector, picks first the token
whose nearest other token is farthest (the second-smallest entry of its column: the smallest is its own 0),
and then, one at a time, the token whose distance to the nearest chosen token is largest (argmax, the first
on ties). It re-reduces the rows of every chosen token at each step (O(n k^2)); a running minimum gives the
same values in O(n k). A chosen token is excluded explicitly (the release relies on its self-distance being
the column's 0, which fp rounding can break when tokens are near-duplicates, and then picks it twice).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .token_keep import flag_runs

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def cosine_distances(x: Tensor) -> Tensor:
    """[n, d] -> [n, n] 1 - cosine similarity, in x's dtype (a zero row is at distance 1 from everything)."""
    if x.dim() != 2:
        raise ValueError(f"features must be [tokens, dim], got {tuple(x.shape)}")
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return 1.0 - torch.mm(unit, unit.t())


def gram_flops(n: int, d: int) -> float:
    """The matmul FLOPs of `cosine_distances` on n tokens of width d (the one matmul it runs)."""
    return 2.0 * n * n * d


def max_min_subset(distances: Tensor, count: int) -> Tensor:
    """[n, n] symmetric distances -> the `count` indices DivPrune picks, in the order picked. count >= n: all."""
    n = distances.shape[0]
    if distances.dim() != 2 or distances.shape[1] != n:
        raise ValueError(f"distances must be square, got {tuple(distances.shape)}")
    if count >= n or n < 2:
        return torch.arange(min(count, n), device=distances.device)
    picked = torch.empty(max(0, count), dtype=torch.long, device=distances.device)
    if count <= 0:
        return picked
    # first: the token whose nearest other token is farthest (the column's second-smallest distance)
    first = torch.argmax(torch.topk(distances, 2, dim=0, largest=False).values[1])
    picked[0] = first
    nearest = distances[first].clone()  # each token's distance to its nearest chosen token
    taken = torch.zeros(n, dtype=torch.bool, device=distances.device)
    taken[first] = True
    low = torch.tensor(float("-inf"), dtype=distances.dtype, device=distances.device)
    for i in range(1, count):
        pick = torch.argmax(torch.where(taken, low, nearest))
        picked[i] = pick
        taken[pick] = True
        nearest = torch.minimum(nearest, distances[pick])
    return picked


def visual_runs(visual: Tensor, video: Tensor | None = None) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of visual tokens [T] bool, split where `video` changes: one image (with
    LLaVA-NeXT's tiles and newlines) or one whole video per run."""
    return flag_runs(visual.tolist(), video.tolist() if video is not None else None)
