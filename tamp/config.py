"""PruneConfig: the weight part of a run's recipe, as a plain dataclass.

Run-level fields are written out here (their defaults, help and checks are owned by tamp.params.RUN_PARAMS);
each method's parameters sit under its name in `params`, for the methods the composition uses only, so an
artifact's pruning.json and key hold nothing another method declared. Built by tamp.recipe (which knows the
registry); this module imports no method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tamp.errors import TampError
from tamp.params import RUN_PARAMS, parse_pattern

_RUN = {p.name: p for p in RUN_PARAMS}


def check_sparsity(value: float, flag: str = "--sparsity", dense_ok: bool = True) -> float:
    """The one rule for a sparsity value: in [0, 1) (in (0, 1) where the dense model is added separately)."""
    if not 0.0 <= value < 1.0 or (value == 0 and not dense_ok):
        interval = "[0, 1)" if dense_ok else "(0, 1) (the dense model is always included)"
        raise TampError(f"{flag} must be in {interval}, got {value}")
    return value


@dataclass
class PruneConfig:
    """How the weights are pruned: the composition, the target, the calibration draw, each used method's params."""

    method: str = _RUN["method"].default
    sparsity: float = _RUN["sparsity"].default
    pattern: str = _RUN["pattern"].default
    allocation: str = _RUN["allocation"].default
    token_selection: str = _RUN["token_selection"].default
    scoring: str = _RUN["scoring"].default
    calib: str = _RUN["calib"].default
    nsamples: int = _RUN["nsamples"].default
    seqlen: int = _RUN["seqlen"].default
    seed: int = _RUN["seed"].default
    prune_vision: bool = _RUN["prune_vision"].default
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name -> {parameter: value}

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def prunes(self) -> bool:
        """Whether any weight is zeroed (sparsity 0 without a pattern is the dense model)."""
        return self.sparsity != 0 or self.nm is not None

    def param(self, name: str) -> Any:
        """A method parameter's value, from whichever used method declares it (they agree on shared ones)."""
        for values in self.params.values():
            if name in values:
                return values[name]
        raise KeyError(f"{name} is no parameter of the methods this config uses ({', '.join(self.params) or '-'})")

    def check_run_fields(self) -> None:
        """The run-level rules (ranges, the pattern's grammar and its fixed sparsity); the registry-level ones
        (which methods exist, each method's own checks) are the recipe's."""
        for p in RUN_PARAMS:
            problem = p.problem(getattr(self, p.name))
            if problem:
                raise TampError(problem)
        check_sparsity(self.sparsity)
        try:
            nm = parse_pattern(self.pattern)
        except ValueError as exc:
            raise TampError(str(exc)) from None
        if nm is not None and self.sparsity != 0.0 and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise TampError(
                f"pattern {self.pattern} fixes the sparsity at {nm[0] / nm[1]:g}; pass --sparsity {nm[0] / nm[1]:g}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """A config as pruning.json holds it; one written before methods' parameters were nested (every
        built-in method's parameters flat beside the run fields, plugins' in `extra`) reads as its run fields."""
        run = {k: data[k] for k in _RUN if k in data}
        params = data.get("params")
        return cls(**run, params={str(m): dict(v) for m, v in params.items()} if isinstance(params, dict) else {})
