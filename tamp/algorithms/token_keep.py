"""Which tokens a token-reduction method keeps: pure index arithmetic on scores and modality masks."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_count(n_visual: int, keep_ratio: float) -> int:
    """Visual tokens kept out of `n_visual` at `keep_ratio` (rounded to the nearest token)."""
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in [0, 1], got {keep_ratio}")
    return int(round(n_visual * keep_ratio))


def top_visual_keep(scores: Tensor, visual: Tensor, keep_ratio: float) -> Tensor:
    """FastV's rule for one sample: every non-visual token, plus the `keep_count` visual tokens with the highest
    scores (ties broken by position, earlier first); returned as ascending positions, so order is kept.

    scores: [T] attention each token receives; visual: [T] bool.
    """
    if scores.shape != visual.shape or scores.dim() != 1:
        raise ValueError(f"scores and visual must be equal-length vectors, got {tuple(scores.shape)} and "
                         f"{tuple(visual.shape)}")
    positions = torch.arange(scores.shape[0], device=scores.device)
    vis = positions[visual]
    k = keep_count(int(vis.numel()), keep_ratio)
    order = torch.argsort(-scores[vis].double(), stable=True)
    kept_visual = vis[order[:k]]
    return torch.sort(torch.cat([positions[~visual], kept_visual])).values
