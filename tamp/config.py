"""Every pruning hyperparameter in one object, with the reference value as default.

A method is a composition: allocation x token selection x scoring x pattern. Presets name the
compositions people compare (magnitude, wanda, sparsegpt, ...); later presets extend PRESETS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tamp.errors import TampError

ALLOCATIONS = ("uniform",)
TOKEN_SELECTIONS = ("all",)
SCORINGS = ("magnitude", "wanda", "sparsegpt")

# preset name -> the composition it stands for
PRESETS: dict[str, dict[str, str]] = {
    "dense": {"allocation": "uniform", "token_selection": "all", "scoring": "magnitude"},
    "magnitude": {"allocation": "uniform", "token_selection": "all", "scoring": "magnitude"},
    "wanda": {"allocation": "uniform", "token_selection": "all", "scoring": "wanda"},
    "sparsegpt": {"allocation": "uniform", "token_selection": "all", "scoring": "sparsegpt"},
}


@dataclass
class PruneConfig:
    """The full recipe of one pruning run; serialised whole into pruning.json."""

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"  # unstructured | N:M (N zeroed of every M input columns)
    allocation: str = "uniform"
    token_selection: str = "all"
    scoring: str = "wanda"
    # calibration
    calib: str = "synthetic"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 42
    # SparseGPT (reference: 128-column blocks, 1% dampening)
    blocksize: int = 128
    percdamp: float = 0.01
    # scope: only the language model's decoder linears by default
    prune_vision: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_preset(cls, method: str, **overrides: Any) -> "PruneConfig":
        """Build a config from a preset name plus explicit overrides (None values are ignored)."""
        if method not in PRESETS:
            raise TampError(f"unknown method '{method}'; choose one of: {', '.join(PRESETS)}")
        values: dict[str, Any] = {"method": method, **PRESETS[method]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        if method == "dense":
            cfg.sparsity = 0.0
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise TampError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.allocation not in ALLOCATIONS:
            raise TampError(f"unknown allocation '{self.allocation}'; choose one of: {', '.join(ALLOCATIONS)}")
        if self.token_selection not in TOKEN_SELECTIONS:
            raise TampError(f"unknown token selection '{self.token_selection}'; choose one of: {', '.join(TOKEN_SELECTIONS)}")
        if self.scoring not in SCORINGS:
            raise TampError(f"unknown scoring '{self.scoring}'; choose one of: {', '.join(SCORINGS)}")
        if self.nsamples < 1:
            raise TampError(f"--nsamples must be at least 1, got {self.nsamples}")
        if self.seqlen < 2:
            raise TampError(f"--seqlen must be at least 2, got {self.seqlen}")
        from tamp.algorithms.masks import parse_pattern

        try:
            nm = parse_pattern(self.pattern)
        except ValueError as exc:
            raise TampError(str(exc)) from None
        if nm is not None and self.sparsity not in (0.0,) and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise TampError(
                f"pattern {self.pattern} fixes the sparsity at {nm[0] / nm[1]:g}; pass --sparsity {nm[0] / nm[1]:g}"
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        from tamp.algorithms.masks import parse_pattern

        return parse_pattern(self.pattern)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
