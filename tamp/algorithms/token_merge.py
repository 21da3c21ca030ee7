"""AIM's token merging before the LLM: ToMe-style bipartite soft matching on one group of visual tokens.

One pass over a group of N tokens: the tokens at even positions are sources, those at odd positions
destinations; every source finds its most cosine-similar destination, the r sources with the highest such
similarity are averaged into their destinations (a destination that receives k sources becomes the plain mean
of itself and them, AIM's `scatter_reduce(mean)`), and the other sources stay. Passes repeat, at most halving
the group each time, until `target` tokens remain (AIM: two passes, N -> N/2 -> N/4).

The survivors keep their positions: a destination stands where it stood, so the group stays in its original
order (AIM's release concatenates [unmerged sources, destinations]; the line that re-sorts them is commented
out there). Keeping order is what lets every survivor keep its original (m)rope position. Similarities are taken in fp64
(the release uses the model's dtype), so which pairs merge does not depend on bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def merge_target(n: int, keep: float) -> int:
    """Tokens left of a group of `n` at merge ratio `keep` (at least one token of a non-empty group)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"merge keep must be in [0, 1], got {keep}")
    return min(n, max(1 if n else 0, int(round(n * keep))))


def bipartite_merge_pass(x: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One pass on x [N, D] merging r sources (r <= N // 2): (kept positions [N - r] ascending, their states)."""
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
    order = torch.argsort(-best, stable=True)  # most similar first, earlier source on ties
    merged_src = order[:r]
    # plain mean of each destination and the sources it receives, in the input's dtype (as scatter_reduce does)
    dst_states = x[1::2].clone()
    dst_states = dst_states.scatter_reduce(0, target[merged_src, None].expand(-1, x.shape[1]), x[0::2][merged_src],
                                           reduce="mean", include_self=True)
    out = x.clone()
    out[1::2] = dst_states
    alive = torch.ones(n, dtype=torch.bool, device=x.device)
    alive[2 * merged_src] = False
    return positions[alive], out[alive]


def bipartite_merge(x: Tensor, target: int) -> tuple[Tensor, Tensor, float]:
    """Merge x [N, D] down to `target` tokens by repeated passes: (kept positions ascending, their states, the
    FLOPs of the similarity matmuls)."""
    positions = torch.arange(x.shape[0], device=x.device)
    flops = 0.0
    while x.shape[0] > target:
        r = min(x.shape[0] - target, x.shape[0] // 2)
        if r <= 0:
            break
        n = x.shape[0]
        flops += 2.0 * ((n + 1) // 2) * (n // 2) * x.shape[1]
        kept, x = bipartite_merge_pass(x, r)
        positions = positions[kept]
    return positions, x, flops
