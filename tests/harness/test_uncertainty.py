"""The statistics of harness/uncertainty.py against plain restatements: a loop bootstrap over the same indices, the
exact McNemar p-value from binomial coefficients."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest

from harness.uncertainty import (
    ALPHA,
    bootstrap_interval,
    mcnemar_exact,
    mean_of_means_interval,
    paired_test,
    resample_indices,
)

# Same indices, same arithmetic up to the order of a sum: numpy's pairwise sum and Python's left-to-right sum of
# n <= 50 numbers in [-1, 1] differ by at most about n * 2**-53 ~ 6e-15, far below this tolerance.
TOL = 1e-12
SCORES = [0.0, 0.3, 1.0, 0.6, 1.0, 0.0, 0.25, 1.0, 0.9, 0.5, 0.1, 1.0, 0.75, 0.0, 0.4, 1.0, 0.8, 0.2, 1.0, 0.65,
          0.33, 0.0, 1.0]


def loop_percentile(values: list[float], q: float) -> float:
    """The q-th percentile of `values` with linear interpolation between order statistics, written out."""
    ordered = sorted(values)
    pos = q / 100 * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def loop_means(scores: list[float], resamples: int, seed: int) -> list[float]:
    """Each resample drawn as one (resamples, n) draw of numpy's default generator, its mean summed by hand."""
    rows = np.random.default_rng(seed).integers(0, len(scores), size=(resamples, len(scores)))
    return [sum(scores[i] for i in row) / len(scores) for row in rows.tolist()]


def test_bootstrap_interval_is_the_plain_loop_over_the_same_draws() -> None:
    means = loop_means(SCORES, 3000, 7)
    low, high = bootstrap_interval(SCORES, resamples=3000, seed=7)
    assert low == pytest.approx(loop_percentile(means, 2.5), abs=TOL)
    assert high == pytest.approx(loop_percentile(means, 97.5), abs=TOL)
    assert low < sum(SCORES) / len(SCORES) < high
    # 0/1 scores: every resampled mean is k/n exactly in both, so the bounds agree exactly
    binary = [1.0] * 70 + [0.0] * 10
    means = loop_means(binary, 10_000, 0)
    assert bootstrap_interval(binary) == (loop_percentile(means, 2.5), loop_percentile(means, 97.5))


def test_large_tasks_are_drawn_in_blocks_of_the_same_stream() -> None:
    n = 5000  # 838 resamples per block of 2**22 indices
    blocks = list(resample_indices(n, resamples=2000, seed=3))
    assert [len(b) for b in blocks] == [838, 838, 324] and all(b.shape[1] == n for b in blocks)
    first = np.random.default_rng(3).integers(0, n, size=(838, n))
    assert np.array_equal(blocks[0], first)
    assert min(int(b.min()) for b in blocks) == 0 and max(int(b.max()) for b in blocks) == n - 1


def hand_mcnemar(b: int, c: int) -> float:
    """Sum of P(X = i) over every outcome of X ~ Binomial(b + c, 1/2) no more likely than the one seen."""
    n = b + c
    seen = math.comb(n, b)
    return float(Fraction(sum(math.comb(n, i) for i in range(n + 1) if math.comb(n, i) <= seen), 2**n))


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (0, 5), (3, 3), (2, 8), (8, 2), (12, 3), (40, 61), (0, 100)])
def test_mcnemar_is_the_exact_binomial_sum(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == hand_mcnemar(b, c)
    if b + c:  # scipy's two-sided binomial test, in floating point
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_paired_test_uses_the_documents_both_runs_scored() -> None:
    dense = {i: 1.0 for i in range(30)} | {30: 0.0, 31: 0.0}
    run = {i: 1.0 for i in range(2, 30)} | {0: 0.0, 1: 0.0, 30: 1.0, 31: 0.0, 99: 1.0}  # doc 99: dense never saw it
    result = paired_test(run, dense)
    assert result is not None and result.test == "mcnemar" and result.n_docs == 32
    # discordant: docs 0, 1 right only with dense, doc 30 right only pruned
    assert result.p_value == hand_mcnemar(1, 2) == 1.0 and result.indistinguishable
    far = paired_test({i: 0.0 for i in range(32)}, dense)
    assert far is not None and far.p_value == hand_mcnemar(0, 30) and not far.indistinguishable
    assert paired_test({100: 1.0}, dense) is None


def test_paired_bootstrap_for_graded_scores() -> None:
    dense = {i: s for i, s in enumerate(SCORES)}
    run = {i: max(0.0, s - 0.2 * (i % 3)) for i, s in enumerate(SCORES)}
    result = paired_test(run, dense)
    assert result is not None and result.test == "bootstrap" and result.n_docs == len(SCORES)
    diffs = [run[i] - dense[i] for i in range(len(SCORES))]
    means = loop_means(diffs, 10_000, 0)
    below = sum(m <= 0 for m in means) / len(means)
    above = sum(m >= 0 for m in means) / len(means)
    assert result.p_value == pytest.approx(min(1.0, 2 * min(below, above)), abs=TOL)
    assert result.indistinguishable == (result.p_value >= ALPHA)
    same = paired_test(dense, dense)
    assert same is not None and same.test == "bootstrap" and same.p_value == 1.0


def test_interval_of_an_average_over_tasks() -> None:
    a, b = SCORES, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    means = [(100 * x + 50 * y) / 2 for x, y in zip(loop_means(a, 2000, 4), loop_means(b, 2000, 5))]
    low, high = mean_of_means_interval([a, b], [100.0, 50.0], resamples=2000, seed=4)
    assert low == pytest.approx(loop_percentile(means, 2.5), abs=1e-9)
    assert high == pytest.approx(loop_percentile(means, 97.5), abs=1e-9)
