"""PyramidDrop's schedule: the release's layers and counts at its depth, the layers at other depths, and the
budget's (stage, lambda) against the layer-averaged share counted layer by layer."""

from __future__ import annotations

import pytest

from tamp.algorithms.pyramid_schedule import (
    average_share,
    budget_schedule,
    fit_lambda,
    layer_counts,
    stage_count,
    stage_layers,
)


def test_the_release_at_its_depth() -> None:
    assert stage_layers(0.25, 3, 32) == {8: 1, 16: 2, 24: 3}  # --layer_list [8,16,24]
    assert [stage_count(576, 0.5, k) for k in (1, 2, 3)] == [288, 144, 72]  # int(576 x [0.5, 0.25, 0.125])
    assert [stage_count(2880, 0.5, k) for k in (1, 2, 3)] == [1440, 720, 360]
    assert stage_count(577, 0.5, 1) == 288  # int() floors
    assert average_share(0.25, 0.5) == pytest.approx((1 + 0.5 + 0.25 + 0.125) / 4)


def test_other_depths() -> None:
    assert stage_layers(0.25, 3, 28) == {7: 1, 14: 2, 21: 3}  # Qwen2-7B
    assert stage_layers(0.25, 3, 4) == {1: 1, 2: 2, 3: 3}  # the tiny models
    assert stage_layers(0.1, 3, 4) == {1: 3}  # 0.4, 0.8, 1.2 -> at least layer 1: one drop to lambda^3
    assert stage_layers(0.4, 3, 4) == {2: 1, 3: 2}  # 1.6, 3.2, 4.8: the third is past the depth
    assert stage_layers(0.2, 4, 40) == {8: 1, 16: 2, 24: 3, 32: 4}  # the paper's 5-stage ablation shape


def _counted_average(stage: float, lam: float, layers: int = 3200, n: int = 10 ** 6) -> float:
    """Visual tokens each of `layers` layers runs on, summed and divided by layers x n, layer by layer."""
    drops = stage_layers(stage, 3, layers)
    tokens, total = n, 0
    for layer in range(layers):
        if layer in drops:
            tokens = stage_count(n, lam, drops[layer])
        total += tokens
    return total / (layers * n)


@pytest.mark.parametrize("share", [1.0, 0.9, 0.469, 0.4, 0.333, 0.222, 0.2, 0.111, 0.07, 0.05, 0.01])
def test_budget_gives_the_layer_averaged_share(share: float) -> None:
    stage, lam = budget_schedule(share)
    assert 0 < stage <= 0.25 and 0 <= lam <= 1
    assert _counted_average(stage, lam) == pytest.approx(share, abs=2e-3)


def test_budget_keeps_the_release_shape_and_rises() -> None:
    assert budget_schedule(average_share(0.25, 0.5)) == pytest.approx((0.25, 0.5))
    assert budget_schedule(1.0) == pytest.approx((0.25, 1.0))
    assert budget_schedule(0.333)[1] == 0.5 and budget_schedule(0.222)[1] == 0.5  # earlier stages, same lambda
    assert budget_schedule(0.111)[0] == pytest.approx(1 / 16) and budget_schedule(0.111)[1] < 0.5
    shares = [i / 200 for i in range(1, 201)]
    averages = [_counted_average(*budget_schedule(s), layers=320, n=10 ** 5) for s in shares]
    assert all(b >= a - 1e-3 for a, b in zip(averages, averages[1:]))
    with pytest.raises(ValueError, match="share"):
        budget_schedule(0)


def _scanned(n: int, drops: dict[int, int], depth: int, share: float) -> float:
    """The nearest layer average any lambda on a fine grid reaches, counted layer by layer."""
    best = None
    for i in range(20001):
        lam, tokens, total = i / 20000, n, 0
        for layer in range(depth):
            if layer in drops:
                tokens = min(tokens, stage_count(n, lam, drops[layer]))
            total += tokens
        miss = abs(total / depth - share * n)
        best = miss if best is None else min(best, miss)
    assert best is not None
    return best


@pytest.mark.parametrize(("n", "depth"), [(576, 32), (36, 4), (2880, 28), (36, 32)])
@pytest.mark.parametrize("share", [0.333, 0.222, 0.111])
def test_fit_lambda_is_the_nearest_integer_schedule(n: int, depth: int, share: float) -> None:
    drops = stage_layers(budget_schedule(share)[0], 3, depth)
    lam = fit_lambda(n, drops, depth, share)
    counts = layer_counts(n, drops, depth, lam)
    assert abs(sum(counts) / depth - share * n) <= _scanned(n, drops, depth, share) + 1e-9
    assert counts == sorted(counts, reverse=True) and counts[0] == n


def test_layer_counts_and_the_shallow_floor() -> None:
    assert layer_counts(576, {8: 1, 16: 2, 24: 3}, 32, 0.5) == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    assert layer_counts(36, {1: 2, 2: 3}, 4, 0.5) == [36, 9, 4, 4]
    # 4 layers: layer 0 runs on all 36, so 0.222 cannot average below 9: every visual token goes after it
    assert layer_counts(36, {1: 3}, 4, fit_lambda(36, {1: 3}, 4, 0.222)) == [36, 0, 0, 0]
