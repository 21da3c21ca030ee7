"""AIM's token merging before the LLM: ToMe-style bipartite soft matching on one group of visual tokens.

One pass over a group of N tokens: the tokens at even positions are sources, those at odd positions
destinations; every source finds its most cosine-similar destination, the r sources with the highest such
similarity are averaged into their destinations (a destination that receives k sources becomes the plain mean
of itself and them, AIM's `scatter_reduce(mean)`), and the other sources stay. Passes repeat, at most halving
the group each time. Two schedules:

- `release_passes` (AIM's release): pass j removes r_j = N // 2^j sources (capped at half of what is left), for
  as many passes as halvings in the merge ratio: 0.25 is two passes, N -> N - N//2 -> ... (196 -> 98 -> 49; 9
  tokens leave 3, where round(9 x 0.25) is 2). Only ratios 1/2^k have a released schedule.
- `bipartite_merge` (ours, "share"): passes repeat until round(N x keep) tokens remain, for any ratio.

Survivor order: `order="positions"` keeps the group in its original order (a destination stands where it stood),
which is what lets every survivor keep its own (m)rope position; `order="release"` returns them as the release
concatenates them, [unmerged sources by falling similarity, destinations] (its re-sort is commented out there).
Similarities are taken in fp64 (the release uses the model's dtype), so which pairs merge does not depend on bf16
rounding; ties go to the earlier token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 2


def merge_target(n: int, keep: float) -> int:
    """Tokens left of a group of `n` at merge ratio `keep` (at least one token of a non-empty group)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"merge keep must be in [0, 1], got {keep}")
    return min(n, max(1 if n else 0, int(round(n * keep))))


ORDERS = ("positions", "release")


def release_passes(n: int, keep: float) -> list[int]:
    """The release's sources removed per pass for a group of `n` at merge ratio `keep` = 1/2^k: n // 2, n // 4, ...
    (k passes; each is capped at half of what is left when it runs)."""
    if keep == 1.0:
        return []
    k = round(-math.log2(keep)) if 0.0 < keep < 1.0 else -1
    if k < 1 or 2.0 ** -k != keep:
        raise ValueError(f"the released merge schedule halves the group: merge keep must be 1/2, 1/4, 1/8, ... "
                         f"(or 1), got {keep}")
    return [n // 2 ** j for j in range(1, k + 1)]


def bipartite_merge_pass(x: Tensor, r: int, order: str = "positions") -> tuple[Tensor, Tensor]:
    """One pass on x [N, D] merging r sources (r <= N // 2): (kept positions [N - r], their states); the positions
    ascend (order "positions") or come as the release concatenates them (order "release")."""
    if order not in ORDERS:
        raise ValueError(f"merge order must be one of {', '.join(ORDERS)}, got {order!r}")
    n = x.shape[0]
    r = min(r, n // 2)
    positions = torch.arange(n, device=x.device)
    if r <= 0:
        return positions, x
    metric = x.double()  # fp64 similarities: ties and their order do not depend on the model's dtype
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    src, dst = metric[0::2], metric[1::2]
    sims = src @ dst.T
    target = sims.argmax(dim=-1)  # each source's most similar destination (the first on ties)
    best = sims.gather(1, target[:, None])[:, 0]
    ranked = torch.argsort(-best, stable=True)  # most similar first, earlier source on ties
    merged_src = ranked[:r]
    # plain mean of each destination and the sources it receives, in the input's dtype (as scatter_reduce does)
    dst_states = x[1::2].clone()
    dst_states = dst_states.scatter_reduce(0, target[merged_src, None].expand(-1, x.shape[1]), x[0::2][merged_src],
                                           reduce="mean", include_self=True)
    out = x.clone()
    out[1::2] = dst_states
    if order == "release":  # [unmerged sources, most similar first; destinations]
        kept = torch.cat([2 * ranked[r:], positions[1::2]])
        return kept, out[kept]
    alive = torch.ones(n, dtype=torch.bool, device=x.device)
    alive[2 * merged_src] = False
    return positions[alive], out[alive]


def merge_passes(x: Tensor, passes: list[int], order: str = "positions") -> tuple[Tensor, Tensor, float]:
    """Passes removing r sources each (capped at half of what is left) on x [N, D]: (kept positions, their
    states, the FLOPs of the similarity matmuls)."""
    positions = torch.arange(x.shape[0], device=x.device)
    flops = 0.0
    for r in passes:
        n = x.shape[0]
        if min(r, n // 2) <= 0:
            continue
        flops += 2.0 * ((n + 1) // 2) * (n // 2) * x.shape[1]
        kept, x = bipartite_merge_pass(x, r, order)
        positions = positions[kept]
    return positions, x, flops


def share_passes(n: int, target: int) -> list[int]:
    """Our schedule: passes that each remove as many as they may (half of what is left) until `target` remain."""
    passes = []
    while n > target and n // 2 > 0:
        r = min(n - target, n // 2)
        passes.append(r)
        n -= r
    return passes


def bipartite_merge(x: Tensor, target: int) -> tuple[Tensor, Tensor, float]:
    """Merge x [N, D] down to `target` tokens by repeated passes: (kept positions ascending, their states, the
    FLOPs of the similarity matmuls)."""
    return merge_passes(x, share_passes(x.shape[0], target))
