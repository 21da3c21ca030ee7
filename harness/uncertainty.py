"""How sure a score is: a bootstrap interval of a mean of per-document scores, and a paired test against dense.

A table cell is the mean of per-document scores over the documents a run scored. Two cells a question apart on 80
questions are noise, not a ranking, so every cell carries

- a 95% percentile bootstrap interval of its mean: RESAMPLES resamples of its documents drawn with replacement by
  numpy's default generator seeded with SEED (fixed, so a table rewrites the same numbers);
- a paired test against the dense run on the documents both runs scored (matched by document id): the exact
  McNemar test (two-sided binomial test of the discordant pairs at 1/2, computed with integers) when every score
  is 0 or 1, else a paired bootstrap of the mean difference (two-sided percentile p-value).

A cell is "indistinguishable from dense" when that p-value is at least ALPHA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
ALPHA = 0.05
_BLOCK = 2**22  # indices drawn per block of resamples (32 MiB of int64), so 5000-document tasks fit in memory


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Blocks of bootstrap indices, one row per resample: `default_rng(seed).integers(0, n, (rows, n))` block after
    block (a single block, the whole (resamples, n) draw, whenever resamples * n <= 2**22)."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // max(n, 1))
    done = 0
    while done < resamples:
        take = min(rows, resamples - done)
        yield rng.integers(0, n, size=(take, n))
        done += take


def bootstrap_means(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The mean of every bootstrap resample of ``scores`` (the resampling distribution of the mean)."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap needs a non-empty list of scores")
    return np.concatenate([values[idx].mean(axis=1) for idx in resample_indices(len(values), resamples, seed)])


def percentile_interval(means: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` of a resampling distribution (numpy's linear interpolation between order statistics)."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``scores``."""
    return percentile_interval(bootstrap_means(scores, resamples, seed), level)


def binary(scores: Sequence[float]) -> bool:
    """Every score is exactly 0 or 1 (exact match, accuracy): McNemar applies."""
    return all(s in (0.0, 1.0) for s in scores)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (right in one run only, right in the other only):
    P(a split at least as uneven as this one | each discordant pair goes either way with probability 1/2),
    summed over binomial coefficients as integers, rounded to a float once."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_bootstrap_p(differences: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided percentile-bootstrap p-value of a mean paired difference: twice the smaller share of resampled
    means on either side of 0 (at most 1); the smallest level at which the percentile interval excludes 0."""
    means = bootstrap_means(differences, resamples, seed)
    below, above = float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0))
    return min(1.0, 2.0 * min(below, above))


@dataclass(frozen=True)
class Paired:
    """A run against dense on the documents both scored."""

    n_docs: int
    p_value: float
    test: str  # "mcnemar" or "bootstrap"

    @property
    def indistinguishable(self) -> bool:
        return self.p_value >= ALPHA


def paired_test(run: dict[int, float], dense: dict[int, float]) -> Paired | None:
    """The run's per-document scores against dense's, on the document ids both have; None when they share none."""
    common = sorted(set(run) & set(dense))
    if not common:
        return None
    a = [run[d] for d in common]
    b = [dense[d] for d in common]
    if binary(a) and binary(b):
        only_run = sum(1 for x, y in zip(a, b) if x == 1.0 and y == 0.0)
        only_dense = sum(1 for x, y in zip(a, b) if x == 0.0 and y == 1.0)
        return Paired(len(common), mcnemar_exact(only_run, only_dense), "mcnemar")
    return Paired(len(common), paired_bootstrap_p([x - y for x, y in zip(a, b)]), "bootstrap")


def mean_of_means_interval(tasks: Sequence[Sequence[float]], weights: Sequence[float], resamples: int = RESAMPLES,
                           seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Interval of a weighted mean over tasks of each task's mean score (the table's Avg): each task's documents
    resampled on their own (task i with seed + i), the resampled means combined resample by resample."""
    combined = sum(w * bootstrap_means(s, resamples, seed + i) for i, (s, w) in enumerate(zip(tasks, weights)))
    return percentile_interval(np.asarray(combined) / len(tasks), level)
