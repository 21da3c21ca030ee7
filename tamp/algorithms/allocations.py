"""Per-matrix / per-layer sparsity allocations (OWL, ECoFLaP, TAMP's DAS) as pure functions on numbers and tensors.

These decide *how much* each matrix is pruned; Wanda (``masks.row_mask``) then decides *which* weights. Everything here
is model-free so the allocation maths can be checked exactly on plain inputs (including real model shapes) without a model.

Released-code quirks are reproduced only behind explicit flags (``released_overshoot_bug``, ``released_tamp_sign``)
so the default path is the intended algorithm and the fidelity docs can still show what the released code did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

__all__ = [
    "das_allocation",
    "das_scores",
    "keep_budget_allocation",
    "outlier_ratio",
    "owl_block_sparsities",
    "sparsities_from_keep",
    "zeroth_order_grad",
]

DAS_MODES = ("released", "per-layer-inverse")

# ---------------------------------------------------------------------------------------------------------------------
# ECoFLaP's keep-budget distribution (also the allocator of TAMP's DAS)
# ---------------------------------------------------------------------------------------------------------------------


def _check_groups(scores: Sequence[float], numels: Sequence[int]) -> tuple[list[float], list[int]]:
    """Validate score/size lists once, so the allocation loops can assume clean input and always terminate."""
    if len(scores) != len(numels):
        raise ValueError(f"scores and numels must have the same length, got {len(scores)} and {len(numels)}")
    if len(numels) == 0:
        raise ValueError("need at least one group to allocate over")
    s = [float(x) for x in scores]
    n = [int(x) for x in numels]
    if any(x != int(y) for x, y in zip(n, numels)):
        raise ValueError("numels must be integers")
    if any(x <= 0 for x in n):
        raise ValueError(f"every numel must be positive, got {n}")
    if any(not math.isfinite(x) or x < 0 for x in s):
        raise ValueError("scores must be finite and non-negative (an importance, not a signed quantity)")
    return s, n


def _hand_out_remainder(keep: list[int], numels: list[int], need: int) -> None:
    """Give ``need`` more kept weights to groups with room, in index order (the released 'algo stuck' fallback)."""
    for i in range(len(keep)):
        if need == 0:
            return
        add = min(need, numels[i] - keep[i])
        keep[i] += add
        need -= add
    if need:
        raise RuntimeError("budget exceeds capacity; unreachable after validation")  # pragma: no cover


def _remove_overshoot(keep: list[int], floor_keep: list[int], excess: int, released_bug: bool) -> None:
    """Take ``excess`` back from the largest groups first (stable), never below ``floor_keep``.

    The released code *adds* the amount it meant to remove (``+= parameters_can_remove``); ``released_bug`` reproduces that.
    """
    order = sorted(range(len(keep)), key=lambda i: -keep[i])  # Python's sort is stable = torch.argsort(stable=True)
    for i in order:
        if excess == 0:
            return
        take = min(excess, keep[i] - floor_keep[i])
        keep[i] += take if released_bug else -take
        excess -= take
    if excess:
        raise RuntimeError("cannot remove the overshoot; unreachable after validation")  # pragma: no cover


def keep_budget_allocation(
    scores: Sequence[float],
    numels: Sequence[int],
    total_keep: int,
    max_sparsity: float,
    *,
    released_overshoot_bug: bool = False,
) -> list[int]:
    """Split a global keep budget over groups in proportion to their scores (ECoFLaP ``compute_the_sparsity_per_group``).

    Every group first keeps ``ceil(n_g * (1 - max_sparsity))`` so none exceeds ``max_sparsity``; the rest of the budget is
    handed out proportionally to the scores of groups that are not yet full, repeatedly (full groups drop out, their
    share is re-offered). Ceil rounding overshoots by up to one weight per group; the excess is taken back from the
    largest groups, never below ``int(n_g * (1 - max_sparsity))``. With the default flag the result sums to
    ``total_keep`` exactly; ``released_overshoot_bug=True`` reproduces the released code, which adds the excess again
    (and, like it, skips the loop entirely when the ceil floors alone already exceed the budget).

    Scores are used as given (no division by group size), as both ECoFLaP's 'sum' aggregation and TAMP's DAS do.
    If every score is zero the budget is spread in proportion to the group sizes instead (the released code divides by
    zero there). Arithmetic is exact integer / float64 (the released code runs in float32, which at 7B scale rounds the
    per-group counts to a few weights and the budget sum to hundreds).
    """
    s, n = _check_groups(scores, numels)
    total_keep = int(total_keep)
    if not 0.0 <= max_sparsity <= 1.0:
        raise ValueError(f"max_sparsity must be in [0, 1], got {max_sparsity}")
    total = sum(n)
    if not 0 <= total_keep <= total:
        raise ValueError(f"total_keep={total_keep} must be in [0, sum(numels)={total}]")
    density_floor = 1.0 - max_sparsity
    floor_keep = [int(x * density_floor) for x in n]
    if sum(floor_keep) > total_keep:
        raise ValueError(
            f"max_sparsity={max_sparsity} forces at least {sum(floor_keep)} kept weights but the budget is {total_keep} "
            f"(global sparsity {1 - total_keep / total:.4f}); max_sparsity must be at least the target sparsity"
        )
    if sum(s) == 0.0:
        s = [float(x) for x in n]

    numel_t = torch.tensor(n, dtype=torch.int64)
    score_t = torch.tensor(s, dtype=torch.float64)
    keep_t = torch.ceil(numel_t.to(torch.float64) * density_floor).to(torch.int64)

    # Each pass either meets the budget or fills at least one more group, so len(n) + 1 passes always suffice.
    for _ in range(len(n) + 2):
        current = int(keep_t.sum())
        if current >= total_keep:
            break
        score_sum = math.fsum(score_t.tolist())
        rest = total_keep - current
        if score_sum == 0.0:  # only zero-score groups have room left: nothing proportional to hand out
            keep = keep_t.tolist()
            _hand_out_remainder(keep, n, rest)
            keep_t = torch.tensor(keep, dtype=torch.int64)
            break
        add = torch.ceil(score_t / score_sum * float(rest)).to(torch.int64)
        keep_t = keep_t + add
        score_t[keep_t >= numel_t] = 0.0  # full groups take no further share
        keep_t = torch.minimum(keep_t, numel_t)
        if int(add.sum()) == 0:  # pragma: no cover - the released guard; unreachable with a positive score sum
            keep = keep_t.tolist()
            _hand_out_remainder(keep, n, total_keep - int(keep_t.sum()))
            keep_t = torch.tensor(keep, dtype=torch.int64)
        if int(keep_t.sum()) > total_keep:
            keep = keep_t.tolist()
            _remove_overshoot(keep, floor_keep, sum(keep) - total_keep, released_overshoot_bug)
            keep_t = torch.tensor(keep, dtype=torch.int64)
            break
    else:  # pragma: no cover
        raise RuntimeError("keep_budget_allocation did not converge; this is a bug")

    keep = keep_t.tolist()
    if not released_overshoot_bug and sum(keep) > total_keep:
        # The ceil floors alone exceed the budget (max_sparsity == target up to rounding): trim down to the int floors.
        _remove_overshoot(keep, floor_keep, sum(keep) - total_keep, False)
    return keep


def sparsities_from_keep(keep: Sequence[int], numels: Sequence[int], *, clamp: bool = False) -> list[float]:
    """Turn keep counts into sparsities ``1 - keep/n``; ``clamp=True`` clips to [0, 1] as the released code does.

    Without ``clamp`` an out-of-range count raises, so a budget bug cannot silently become a 0%-sparsity matrix.
    """
    if len(keep) != len(numels):
        raise ValueError(f"keep and numels must have the same length, got {len(keep)} and {len(numels)}")
    out = []
    for k, n in zip(keep, numels):
        if n <= 0:
            raise ValueError(f"numel must be positive, got {n}")
        if not clamp and not 0 <= k <= n:
            raise ValueError(f"keep count {k} outside [0, {n}]")
        out.append(min(1.0, max(0.0, 1.0 - k / n)) if clamp else 1.0 - k / n)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# OWL: outlier-weighted layerwise sparsity
# ---------------------------------------------------------------------------------------------------------------------


def outlier_ratio(metric: Tensor | Sequence[Tensor], m: float = 5.0) -> float:
    """Percentage of entries above ``m`` times the mean (OWL's layerwise outlier distribution, LOD).

    ``metric`` is the Wanda metric ``|W| * sqrt(col_sq)`` of every pruned linear of one decoder block, either already
    flattened and concatenated or as a list of per-linear tensors (concatenated here). float64 is used so the threshold
    does not depend on the summation order of a ~200M-entry mean.
    """
    if isinstance(metric, Tensor):
        flat = metric.detach().reshape(-1)
    else:
        flat = torch.cat([t.detach().reshape(-1).cpu() for t in metric]) if len(metric) else torch.empty(0)
    if flat.numel() == 0:
        raise ValueError("outlier_ratio needs a non-empty metric")
    flat = flat.to(torch.float64)
    threshold = flat.mean() * m
    return 100.0 * int((flat > threshold).sum()) / flat.numel()


def owl_block_sparsities(
    ratios: Sequence[float], target: float, lam: float = 0.08, *, released_tamp_sign: bool = False
) -> list[float]:
    """Per-block sparsity from the blocks' outlier ratios (OWL): more outliers -> less sparsity.

    ``D~ = (D - min D) / (max D - min D) * 2 lam``; density ``= D~ - mean(D~) + (1 - target)``; sparsity ``= 1 - density``.
    The spread max - min is exactly ``2 lam`` and the mean is exactly ``target``; the values lie in ``target +- lam`` only
    when ``mean(D~) = lam`` (e.g. symmetric ratios) -- in general in ``target +- 2 lam``. Equal ratios give ``target``
    everywhere (the reference divides by zero). A sparsity <= 0 becomes 0.01 as in the reference (luuyin/OWL
    ``prune_wanda_outlier``), which then lifts the mean above ``target``. ``released_tamp_sign=True`` reproduces TAMP's copy,
    which uses ``D~ - mean(D~) + target`` directly as the sparsity, so more outliers give MORE sparsity.
    """
    if len(ratios) == 0:
        raise ValueError("need at least one block ratio")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target}")
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    d = [float(r) for r in ratios]
    if any(not math.isfinite(x) for x in d):
        raise ValueError("outlier ratios must be finite")
    lo, hi = min(d), max(d)
    if hi == lo:
        return [float(target)] * len(d)
    scaled = [(x - lo) * (1.0 / (hi - lo) * lam * 2.0) for x in d]  # the reference's order of operations
    mean = math.fsum(scaled) / len(scaled)
    if released_tamp_sign:
        sparsity = [x - mean + target for x in scaled]
    else:
        sparsity = [1.0 - (x - mean + (1.0 - target)) for x in scaled]
    sparsity = [0.01 if x <= 0.0 else x for x in sparsity]
    if any(x >= 1.0 for x in sparsity):
        raise ValueError(f"OWL gives a block sparsity >= 1 (target={target}, lam={lam}); lower lam or the target")
    return sparsity


# ---------------------------------------------------------------------------------------------------------------------
# TAMP's DAS (diversity-aware sparsity)
# ---------------------------------------------------------------------------------------------------------------------


def das_scores(similarity_terms_per_matrix: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Importance of each matrix as ``sum over terms of (1 - similarity)``: a less redundant matrix keeps more.

    The released code sums the terms (the paper averages over three); the allocation is scale-free, so both agree.
    """
    out: dict[str, float] = {}
    for name, terms in similarity_terms_per_matrix.items():
        if len(terms) == 0:
            raise ValueError(f"matrix {name!r} has no similarity terms")
        out[name] = math.fsum(1.0 - float(t) for t in terms.values())
    return out


def _inverse_sparsities(scores: list[float], numels: list[int], target: float, max_sparsity: float) -> list[float]:
    """Sparsity proportional to 1/score with an exact parameter-weighted mean, water-filled against ``max_sparsity``.

    Groups whose share would exceed the cap are pinned at the cap and the constant is re-solved over the rest; the
    constant only grows when groups are pinned, so pinning all offenders at once is exact and takes at most G passes.
    """
    g = len(scores)
    total = math.fsum(numels)
    pinned = [x == 0.0 for x in scores]  # 1/0: least important, sparsest allowed
    sparsity = [max_sparsity if p else 0.0 for p in pinned]
    for _ in range(g + 1):
        budget = target * total - max_sparsity * math.fsum(n for n, p in zip(numels, pinned) if p)
        if budget < -1e-9 * total:
            raise ValueError(
                f"zero-score groups pinned at max_sparsity={max_sparsity} already exceed the target {target}"
            )
        free = [i for i in range(g) if not pinned[i]]
        if not free:
            break
        weight = math.fsum(numels[i] / scores[i] for i in free)
        c = max(budget, 0.0) / weight
        over = [i for i in free if c / scores[i] > max_sparsity]
        if not over:
            for i in free:
                sparsity[i] = c / scores[i]
            break
        for i in over:
            pinned[i] = True
            sparsity[i] = max_sparsity
    else:  # pragma: no cover
        raise RuntimeError("per-layer-inverse allocation did not converge; this is a bug")
    return sparsity


def das_allocation(
    scores: Mapping[str, float],
    numels: Mapping[str, int],
    target: float,
    max_sparsity: float,
    mode: str = "released",
    *,
    released_overshoot_bug: bool = False,
) -> dict[str, float]:
    """Per-group sparsity from DAS scores (group = a matrix for 'released', a decoder layer for 'per-layer-inverse').

    * ``"released"``: ECoFLaP's keep-budget split with one group per matrix, scores not normalised by size and
      ``total_keep = int(sum(numels) * (1 - target))`` (callers pass ``max_sparsity = target + 0.1`` as TAMP does). The
      kept counts ``round(n * (1 - s))`` sum exactly to that budget. Size-blind scores hand small matrices (k/v) a share
      far above their size, so they end dense while the MLP goes past the target.
    * ``"per-layer-inverse"``: the paper's wording, sparsity inversely proportional to the group's importance, scaled so
      the parameter-weighted mean is exactly ``target`` and capped at ``max_sparsity`` (excess re-spread over the
      uncapped groups). Callers sum scores and numels per decoder layer; the function is generic over groups.
    """
    if mode not in DAS_MODES:
        raise ValueError(f"unknown DAS mode {mode!r}; choose one of {DAS_MODES}")
    if set(scores) != set(numels):
        missing = sorted(set(scores) ^ set(numels))
        raise ValueError(f"scores and numels must name the same groups; mismatched: {missing[:5]}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target}")
    if not target <= max_sparsity <= 1.0:
        raise ValueError(f"max_sparsity must be in [target={target}, 1], got {max_sparsity}")
    names = list(numels)
    s, n = _check_groups([scores[k] for k in names], [numels[k] for k in names])
    if mode == "released":
        keep = keep_budget_allocation(
            s, n, int(sum(n) * (1.0 - target)), max_sparsity, released_overshoot_bug=released_overshoot_bug
        )
        return dict(zip(names, sparsities_from_keep(keep, n, clamp=released_overshoot_bug)))
    return dict(zip(names, _inverse_sparsities(s, n, float(target), float(max_sparsity))))


# ---------------------------------------------------------------------------------------------------------------------
# ECoFLaP's zeroth-order importance
# ---------------------------------------------------------------------------------------------------------------------


def zeroth_order_grad(loss_plus: float, loss_minus: float, eps: float) -> float:
    """Magnitude of the two-point (central-difference) estimate ``|(L(w + eps z) - L(w - eps z)) / (2 eps)|``.

    ECoFLaP uses it to score layers from forward passes only (no backward, so it fits in inference memory); the
    perturbation loop over the model lives with the model code.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return abs((float(loss_plus) - float(loss_minus)) / (2.0 * float(eps)))
