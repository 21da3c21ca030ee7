"""Which tokens a token-reduction method keeps: pure index arithmetic on scores and modality masks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def keep_count(n_visual: int, keep_ratio: float) -> int:
    """Visual tokens kept out of `n_visual` at `keep_ratio` (rounded to the nearest token; FastV)."""
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in [0, 1], got {keep_ratio}")
    return int(round(n_visual * keep_ratio))


def top_visual(scores: Tensor, visual: Tensor, count: int) -> Tensor:
    """Every non-visual token, plus the `count` visual tokens with the highest scores (ties broken by position,
    earlier first); returned as ascending positions, so order is kept. scores: [T]; visual: [T] bool."""
    if scores.shape != visual.shape or scores.dim() != 1:
        raise ValueError(f"scores and visual must be equal-length vectors, got {tuple(scores.shape)} and "
                         f"{tuple(visual.shape)}")
    positions = torch.arange(scores.shape[0], device=scores.device)
    vis = positions[visual]
    order = torch.argsort(-scores[vis].double(), stable=True)
    kept_visual = vis[order[:max(0, count)]]
    return torch.sort(torch.cat([positions[~visual], kept_visual])).values


def top_visual_keep(scores: Tensor, visual: Tensor, keep_ratio: float) -> Tensor:
    """FastV's rule for one sample: the top `keep_count(visual tokens, keep_ratio)` visual tokens and all text."""
    return top_visual(scores, visual, keep_count(int(visual.sum()), keep_ratio))


def linear_schedule(layer: int, start: int, step: float) -> float:
    """AIM's retain rate after `layer`: 1 below `start`, then 1 - (layer - start + 1) * step, floored at 0."""
    return 1.0 if layer < start else max(0.0, 1.0 - (layer - start + 1) * step)


def scheduled_count(n_visual_at_entry: int, rate: float) -> int:
    """AIM's kept visual count: int() of the visual tokens that entered the LLM times the rate (a hair of slack
    so that 0.875 x 8 is 7 however the float rounds)."""
    return math.floor(n_visual_at_entry * rate + 1e-9)


def flag_runs(flags: list[bool], kind: list[bool] | None = None) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of set flags (split where `kind` changes, when given): the images and
    videos of a sequence, as runs of visual tokens."""
    runs, t = [], 0
    while t < len(flags):
        if not flags[t]:
            t += 1
            continue
        end = t
        while end < len(flags) and flags[end] and (kind is None or kind[end] == kind[t]):
            end += 1
        runs.append((t, end))
        t = end
    return runs
