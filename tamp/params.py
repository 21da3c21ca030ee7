"""Typed parameters: the fields every pruning run has, the type methods declare their own with, and the
pattern grammar. Torch-free, as is tamp.config's PruneConfig built on them.

The method registry refuses a plugin parameter that reuses a run field's name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tamp.errors import TampError


@dataclass(frozen=True)
class Param:
    """One typed parameter with its reference default; `check` returns an error message or None."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None. A float must be finite: NaN passes every comparison a bound check
        makes (`not v > 0` aside) and inf turns scores into NaN, so neither ever reaches a method."""
        if self.type is float and isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{self.name} must be a finite number, got {value}"
        if self.choices and value not in self.choices:
            return f"unknown {self.name} '{value}'; choose one of: {', '.join(self.choices)}"
        return self.check(value) if self.check is not None else None


def resolve_params(owner: str, declared: Sequence[Param], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters `owner` declares, at their defaults unless overridden; a name it does not declare, or a value
    its Param refuses, is one error (a token method's or a quantizer's part of a recipe)."""
    own = {p.name: p for p in declared}
    foreign = sorted(set(overrides) - set(own))
    if foreign:
        raise TampError(f"{', '.join(foreign)} is no parameter of {owner}; its parameters: {', '.join(own) or '-'}")
    params = {name: overrides.get(name, p.default) for name, p in own.items()}
    for name, value in params.items():
        problem = own[name].problem(value)
        if problem:
            raise TampError(problem)
    return params


def _at_least(flag: str, low: int) -> Callable[[Any], str | None]:
    return lambda v: f"{flag} must be at least {low}, got {v}" if v < low else None


# method, allocation, token_selection and scoring are checked against the registry by PruneConfig.validate
RUN_PARAMS: tuple[Param, ...] = (
    Param("method", str, "wanda", "the registered method (a composition of the three parts below)"),
    Param("sparsity", float, 0.5, "fraction of weights to zero, in [0, 1)"),
    Param("pattern", str, "unstructured", "unstructured | N:M (N zeroed of every M input columns)"),
    Param("allocation", str, "uniform", "how the sparsity is spread over matrices"),
    Param("token_selection", str, "all", "which calibration tokens feed the statistics"),
    Param("scoring", str, "wanda", "how one matrix is scored and pruned"),
    Param("calib", str, "synthetic", "calibration data spec"),
    Param("nsamples", int, 128, "calibration samples", check=_at_least("--nsamples", 1)),
    Param("seqlen", int, 2048, "tokens per text calibration segment", check=_at_least("--seqlen", 2)),
    Param("seed", int, 42, "seed of the calibration draw and of every random step"),
    Param("prune_vision", bool, False, "also prune the vision tower (default: the language model's decoder only)"),
)
RUN_FIELDS = frozenset(p.name for p in RUN_PARAMS) | {"extra"}

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """Parse a sparsity pattern string: ``"unstructured"`` -> ``None``, ``"2:4"`` -> ``(2, 4)``."""
    text = str(pattern).strip()
    if text.lower() == "unstructured":
        return None
    match = _PATTERN_RE.match(text)
    if match is not None:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return n, m
    raise ValueError(f"bad sparsity pattern {pattern!r}: accepted forms are 'unstructured' or 'N:M' with 0<N<M (e.g. 2:4, 4:8)")
