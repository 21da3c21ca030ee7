"""AIM's multimodal token importance: PageRank over a layer's self-attention.

Per head, the attention logits (causal and padding masks applied) are softmaxed at a low temperature
(AIM: tau = 0.1, which sharpens each row), a uniform distribution over the tokens is pushed through that
matrix a few times (AIM: 5 iterations, no damping), and the heads are combined by the root mean square of
their distributions. A token is important when much attention flows to it, directly or through tokens that
are themselves attended.
"""

from __future__ import annotations

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def pagerank(logits: Tensor, tau: float = 0.1, iters: int = 5) -> Tensor:
    """logits [H, T, T] (masked entries -inf or very negative) -> [H, T] stationary-ish distribution per head."""
    if logits.dim() != 3 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must be [heads, T, T], got {tuple(logits.shape)}")
    walk = torch.softmax(logits.float() / tau, dim=-1).nan_to_num_(nan=0.0)  # a row with no key left: zeros
    t = logits.shape[-1]
    dist = torch.full((logits.shape[0], 1, t), 1.0 / t, device=logits.device, dtype=torch.float32)
    for _ in range(iters):
        dist = dist @ walk
    return dist[:, 0, :]


def rms_over_heads(dist: Tensor) -> Tensor:
    """[H, T] per-head distributions -> [T] importance (root mean square over heads)."""
    return dist.pow(2).mean(dim=0).sqrt()
