"""What a method declares: its parameters, its place in tables, what it needs, and its hooks.

A weight method is a composition of three parts (allocation x token selection x scoring) named by method:
`tamp` composes DAS's allocation, AMIA's token selection and Wanda's scoring. A method that brings a part of
its own attaches the hook for it (`allocate`, `select`, `score`); each hook says what it needs, so what a
composition needs (calibration data, column norms, a Hessian, attention, a dense-model sweep) is derived,
never listed by hand. The engine only calls hooks; it names no method.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tamp.engine.parts import Allocation, Needs, Quantize, Scoring, TokenSelection
from tamp.params import Param

if TYPE_CHECKING:
    from tamp.config import PruneConfig
    from tamp.inference.sequence_edit import TokenPlan
    from tamp.models.adapters import ModelAdapter

__all__ = ["ALL_TOKENS", "GRID_PARAMS", "KINDS", "TOKEN_BUDGET", "UNIFORM", "Allocation", "Method", "Needs", "Param",
           "QuantMethod", "Quantize", "Scoring", "TokenMethod", "TokenSelection", "WeightMethod", "grid_label"]

KINDS = ("weight", "token", "quant")  # shape-changing structured pruners are the next kind
UNIFORM, ALL_TOKENS = "uniform", "all"  # the neutral allocation and token selection: no hook


def _share(v: float) -> str | None:
    return None if 0 < v <= 1 else f"token_budget must be in (0, 1], got {v}"


# one budget for every token method: `--set token_budget=0.222` keeps 22.2% of the visual tokens whatever the method
# (each maps it to its own parameters, TokenMethod.budget); recorded in the transform beside the params it set
TOKEN_BUDGET = Param("token_budget", float, None, "share of the visual tokens kept, the same for every token method "
                     "(e.g. 0.333, 0.222, 0.111 = 192, 128, 64 of LLaVA-1.5's 576)", check=_share)


@dataclass(frozen=True)
class Method:
    """Any registered method: name, kind, table label and order, one-line summary, parameters."""

    name: str
    label: str
    order: int
    summary: str
    params: tuple[Param, ...] = ()
    # bumped whenever what the method computes changes (its artifacts' cache key covers it, not its source text)
    version: int = 1
    source: str = ""  # the file that defines it (filled in by the registry)
    kind: ClassVar[str]


@dataclass(frozen=True)
class WeightMethod(Method):
    """Prunes weights once, before evaluation; the composition is named by method, hooks are its own parts."""

    allocation: str = UNIFORM
    token_selection: str = ALL_TOKENS
    scoring: str = "magnitude"
    allocate: Allocation | None = None
    select: TokenSelection | None = None
    score: Scoring | None = None
    keeps_every_weight: bool = False  # the dense baseline: only sparsity 0
    check: Callable[[PruneConfig], str | None] | None = None  # checks across fields (e.g. N:M vs block size)
    kind: ClassVar[str] = "weight"

    def composition(self) -> dict[str, str]:
        return {"allocation": self.allocation, "token_selection": self.token_selection, "scoring": self.scoring}


@dataclass(frozen=True)
class TokenMethod(Method):
    """Reduces the tokens a model computes on at inference, weights untouched. The artifact records it with its
    parameters and tamp's loader re-applies it, so any evaluation of the artifact runs it. Composes with a
    weight method (`tamp+fastv`). A token method is one file: `plan(params, num_layers)` returns the TokenPlan of
    tamp.inference.sequence_edit (its drops before layers, with their choosers and attention scores, and whatever
    else it installs), and each part declares the FLOPs its own work costs or saves (docs/methods.md)."""

    plan: Callable[[dict, int], TokenPlan] | None = None
    # model-dependent defaults (e.g. YOPO's layer from a compute budget): (params, decoder layers) -> params
    model_defaults: Callable[[dict, list], dict] | None = None
    # what such a method's params ask of the model's depth, checkable from its config before loading (its plan needs
    # the loaded layers, so the generic check cannot plan it): (params, decoder layers) -> the problem, or None
    depth_problem: Callable[[dict, int], str | None] | None = None
    # choices made once at prune time from calibration statistics (YOPO's inactive visual heads): (params, model,
    # adapter, calibration batches, device) -> what install needs besides the params, recorded in pruning.json
    fit: Callable[[dict, nn.Module, ModelAdapter, list, torch.device], dict] | None = None
    needs_fit: Callable[[dict], bool] | None = None  # whether these params need a fit (None: whenever fit is set)
    # the common token budget (`--set token_budget=SHARE`): the method's own params that retain SHARE of the visual
    # tokens the way its paper sets them for an equal-token comparison; None: the method sets no token count
    budget: Callable[[float], dict[str, Any]] | None = None
    # the schema (a dataclass, tamp.schema) of what `fit` returns: pruning.json's `fitted` is held against it on load
    fitted_schema: type | None = None
    # which attention weights it reads and how it gets them under sdpa / flash attention ("": none), for `tamp methods`
    attention: str = ""
    # why a model with this config (a transformers config) cannot run it (no [CLS] token, no video grid), or None:
    # asked from the config on disk at plan time, so a run, a sweep or a dry run refuses it before loading
    config_problem: Callable[[Any], str | None] | None = None
    kind: ClassVar[str] = "token"

    def wants_fit(self, params: dict) -> bool:
        return self.fit is not None and (self.needs_fit is None or self.needs_fit(params))


def _bits(v: int) -> str | None:
    return None if 2 <= v <= 8 else f"quant_bits must be in 2..8, got {v}"


def _group(v: int) -> str | None:
    return None if v == -1 or v >= 1 else f"quant_group must be a positive number of columns or -1 (one per row), got {v}"


# the integer grid every quantizer rounds to (tamp.algorithms.quantize): one set of names, shared by every quantizer
GRID_PARAMS: tuple[Param, ...] = (
    Param("quant_bits", int, 4, "bits per weight (4: int4, 8: int8)", check=_bits),
    Param("quant_group", int, 128, "input columns sharing one scale and zero point (-1: one per output row)",
          check=_group),
    Param("quant_sym", bool, True, "symmetric grid (zero point in the middle, what vLLM's int4 kernels take)"),
)


def grid_label(params: dict[str, Any]) -> str:
    """`w4g128` (`w8`: one grid per row; `-asym` for an asymmetric grid): how run names and tables show a grid,
    and what `parse_grid` reads back."""
    group = int(params["quant_group"])
    return f"w{params['quant_bits']}{'' if group == -1 else f'g{group}'}{'' if params['quant_sym'] else '-asym'}"


_GRID = re.compile(r"^w(\d+)(?:g(\d+))?(-asym)?$")


def parse_grid(text: str) -> dict[str, Any] | None:
    """`w4g128` -> {quant_bits: 4, quant_group: 128, quant_sym: True}; None if `text` is no grid label."""
    match = _GRID.match(text)
    if match is None:
        return None
    return {"quant_bits": int(match.group(1)), "quant_group": int(match.group(2)) if match.group(2) else -1,
            "quant_sym": match.group(3) is None}


@dataclass(frozen=True)
class QuantMethod(Method):
    """Rounds the weights to an integer grid once, in the engine's pass, right after each matrix is pruned (or
    alone, on the dense model); composes with a weight and a token method (`tamp+gptq+fastv`). The pruned weights
    stay exactly zero; the grid (GRID_PARAMS) and the method's own params are recorded in pruning.json."""

    quantize: Quantize | None = None
    kind: ClassVar[str] = "quant"
