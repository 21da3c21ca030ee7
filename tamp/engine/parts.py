"""The hooks the engine calls, as the engine declares them: a method implements them, the engine names no method.

A weight method's composition (allocation x token selection x scoring) is resolved once, by the recipe, into
`Parts`; the engine receives them. What running a composition needs (calibration data, column norms, a Hessian,
attention, a dense-model sweep) is the union of its hooks' declared `Needs`, never listed by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from tamp.engine.stats import InputStats, TokenSelector

if TYPE_CHECKING:
    from tamp.algorithms.quantize import Quantized
    from tamp.config import PruneConfig
    from tamp.engine.context import Context


@dataclass(frozen=True)
class Needs:
    """What running a hook requires of the engine."""

    calibration: bool = False  # calibration data runs through the model
    col_norms: bool = False  # per input column sum of x^2 (Wanda's statistic)
    hessian: bool = False  # X^T X per linear (SparseGPT)
    attention: bool = False  # each block's last-row attention (AMIA's token scores)
    dense_sweep: bool = False  # a pass over the dense model before anything is pruned

    def __or__(self, other: Needs) -> Needs:
        return Needs(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Allocation:
    """Fills the per-matrix sparsity map: {full matrix name: sparsity}, from the engine Context."""

    fn: Callable[[Context], dict[str, float]]
    needs: Needs = Needs(calibration=True, dense_sweep=True)


@dataclass(frozen=True)
class TokenSelection:
    """Builds the selector that picks which tokens feed the statistics (per batch and linear). With a scoring
    that needs no statistic, the engine feeds the selected tokens to Wanda's column norms."""

    make: Callable[[PruneConfig], TokenSelector]
    needs: Needs = Needs(calibration=True)


@dataclass(frozen=True)
class Scoring:
    """Prunes one weight matrix to a sparsity (or the config's N:M pattern) from its input statistics."""

    prune: Callable[[torch.Tensor, InputStats | None, float, PruneConfig], torch.Tensor]
    needs: Needs = Needs()


# prune and round one matrix in one pass: (weight, stats, sparsity, config, the quantizer's params) -> (quantized,
# mask; True = pruned)
JointPass = Callable[[torch.Tensor, InputStats | None, float, "PruneConfig", dict[str, Any]],
                     tuple["Quantized", torch.Tensor]]


@dataclass(frozen=True)
class Quantize:
    """Rounds one weight matrix to an integer grid after it is pruned (or unpruned): (weight, its input stats,
    the weights held at zero or None, the quantizer's params) -> Quantized. `joint`: scoring name -> a pass that
    prunes as that scoring does and rounds in the same pass (GPTQ with SparseGPT: one Hessian, the SparseGPT
    paper's joint compression), used instead of pruning then rounding."""

    fn: Callable[[torch.Tensor, InputStats | None, torch.Tensor | None, dict[str, Any]], Quantized]
    needs: Needs = Needs()
    joint: Mapping[str, JointPass] = field(default_factory=dict)


@dataclass(frozen=True)
class QuantStep:
    """A run's quantizer as the engine receives it: the hook and its params (resolved by the recipe)."""

    hook: Quantize
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Parts:
    """A composition resolved to hooks, and what running it needs. `allocation` is None for the uniform
    allocation (and under an N:M pattern, where every matrix is N/M); `selection` None feeds every token."""

    allocation: Allocation | None
    selection: TokenSelection | None
    scoring: Scoring
    needs: Needs
