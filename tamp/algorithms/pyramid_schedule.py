"""PyramidDrop's schedule as index arithmetic: where its stages end at any depth, how many visual tokens each
keeps, and which (stage length, lambda) give a layer-averaged share of visual tokens (its equal-token setting).

The release (Cooperx521/PyramidDrop, LLaVA-1.5-7B, 32 layers) ranks and drops after layers 8, 16 and 24 (the
0-based layer index it drops before) and keeps int(n x lambda^k) of the n image tokens after the k-th drop, lambda
= 0.5: four equal stages at 100 / 50 / 25 / 12.5 %. Its paper compares methods at an *average* of 192 / 128 / 64
visual tokens over the layers (sum of tokens per layer / layers, the accounting its issue #22 confirms).
"""

from __future__ import annotations

import math

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

RELEASE_STAGE, RELEASE_LAMBDA, RELEASE_DROPS = 0.25, 0.5, 3
EARLIEST_STAGE = 1 / 16  # the shortest first stage the budget uses (2 of 32 layers, FastV's K = 2)


def stage_layers(stage: float, drops: int, num_layers: int) -> dict[int, int]:
    """Layer i the k-th drop comes before (k = 1..drops) -> k: i = k x stage x layers, rounded half up, at least
    1 (a ranked drop needs a layer before it) and below the depth (later ones are left out). Where two drops
    round to one layer, the later (deeper-cut) k is kept. 32 layers at 0.25: {8: 1, 16: 2, 24: 3}."""
    layers: dict[int, int] = {}
    for k in range(1, drops + 1):
        layer = max(1, math.floor(k * stage * num_layers + 0.5))
        if layer < num_layers:
            layers[layer] = k
    return layers


def stage_count(n_entry: int, lam: float, k: int) -> int:
    """Visual tokens kept after the k-th drop: int(n x lambda^k) (a hair of slack so 0.5^3 x 576 is 72)."""
    return math.floor(n_entry * lam ** k + 1e-9)


def average_share(stage: float, lam: float, drops: int = RELEASE_DROPS) -> float:
    """Layer-averaged share of the visual tokens with `drops` stages of `stage` x depth each at 1, lambda, ...,
    and the rest of the depth at lambda^drops (integer rounding of the layers and counts aside)."""
    full = sum(lam ** k for k in range(drops))
    return stage * full + (1 - drops * stage) * lam ** drops


def _solve_lambda(stage: float, share: float, low: float, high: float) -> float:
    """lambda in [low, high] with average_share(stage, lambda) = share (it rises with lambda), by bisection."""
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if average_share(stage, mid) < share else (low, mid)
    return (low + high) / 2


def budget_schedule(share: float) -> tuple[float, float]:
    """(stage, lambda) whose layer-averaged visual share is `share`, keeping the release's shape where it can: its
    layers (stage 1/4) with a larger lambda above its own average (0.469); its lambda = 0.5 with earlier stages
    down to 1/16 of the depth (share 0.211); then lambda falls at stage 1/16; below a share of 1/16 the first
    stage alone holds the tokens (lambda 0, stage = share). Continuous and rising in `share`."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if share >= average_share(RELEASE_STAGE, RELEASE_LAMBDA):
        return RELEASE_STAGE, _solve_lambda(RELEASE_STAGE, share, RELEASE_LAMBDA, 1.0)
    if share >= average_share(EARLIEST_STAGE, RELEASE_LAMBDA):
        lam = RELEASE_LAMBDA
        tail = lam ** RELEASE_DROPS
        return (share - tail) / (sum(lam ** k for k in range(RELEASE_DROPS)) - RELEASE_DROPS * tail), lam
    if share >= EARLIEST_STAGE:
        return EARLIEST_STAGE, _solve_lambda(EARLIEST_STAGE, share, 0.0, RELEASE_LAMBDA)
    return share, 0.0


def layer_counts(n: int, drops: dict[int, int], depth: int, lam: float) -> list[int]:
    """Visual tokens each of `depth` layers runs on when drop k = drops[layer] before `layer` keeps
    stage_count(n, lam, k) of the n that entered (n before the first drop)."""
    counts, current = [], n
    for layer in range(depth):
        if layer in drops:
            current = min(current, stage_count(n, lam, drops[layer]))
        counts.append(current)
    return counts


def fit_lambda(n: int, drops: dict[int, int], depth: int, share: float) -> float:
    """The lambda whose integer schedule at this depth (`layer_counts`) averages nearest share x n visual tokens
    over the layers (the smaller on a tie): the rounding of stage layers and counts at a small depth corrected
    for, rather than the continuous `average_share`. The average rises with lambda, so bisect for where it reaches
    the target, then take the nearer of the two sides."""
    target = share * n
    total = lambda lam: sum(layer_counts(n, drops, depth, lam))  # noqa: E731
    low, high = 0.0, 1.0
    if total(low) >= target * depth:
        return low
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) < target * depth else (low, mid)
    return low if target * depth - total(low) <= total(high) - target * depth else high
