"""Every pruning hyperparameter in one object, with the reference value as default.

A method is a composition: allocation x token selection x scoring x pattern. Presets name the
compositions people compare (magnitude, wanda, sparsegpt, ...); later presets extend PRESETS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tamp.errors import TampError

ALLOCATIONS = ("uniform", "owl", "ecoflap", "das")
TOKEN_SELECTIONS = ("all", "amia")
SCORINGS = ("magnitude", "wanda", "sparsegpt")

# preset name -> the composition it stands for
PRESETS: dict[str, dict[str, str]] = {
    "dense": {"allocation": "uniform", "token_selection": "all", "scoring": "magnitude"},
    "magnitude": {"allocation": "uniform", "token_selection": "all", "scoring": "magnitude"},
    "wanda": {"allocation": "uniform", "token_selection": "all", "scoring": "wanda"},
    "sparsegpt": {"allocation": "uniform", "token_selection": "all", "scoring": "sparsegpt"},
    "owl": {"allocation": "owl", "token_selection": "all", "scoring": "wanda"},
    "ecoflap": {"allocation": "ecoflap", "token_selection": "all", "scoring": "wanda"},
    "das": {"allocation": "das", "token_selection": "all", "scoring": "wanda"},
    "amia": {"allocation": "uniform", "token_selection": "amia", "scoring": "wanda"},
    "tamp": {"allocation": "das", "token_selection": "amia", "scoring": "wanda"},
}
DAS_MODES = ("released", "paper")
AMIA_SCOPES = ("module", "layer")


def preset(method: str) -> dict[str, str]:
    """The composition a method name stands for; an unknown name is refused with the list of known ones."""
    if method not in PRESETS:
        raise TampError(f"unknown method '{method}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[method]


def check_sparsity(value: float, flag: str = "--sparsity", dense_ok: bool = True) -> float:
    """The one rule for a sparsity value: in [0, 1) (in (0, 1) where the dense model is added separately)."""
    if not 0.0 <= value < 1.0 or (value == 0 and not dense_ok):
        interval = "[0, 1)" if dense_ok else "(0, 1) (the dense model is always included)"
        raise TampError(f"{flag} must be in {interval}, got {value}")
    return value


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
    # OWL (reference luuyin/OWL: M = 5, lambda = 0.08; one ratio per decoder block)
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    owl_released_sign: bool = False  # True: TAMP's copy (more outliers -> MORE sparsity)
    # ECoFLaP zeroth-order block scores (eps = 1e-3, one noise draw per batch, max = target + 0.1)
    ecoflap_eps: float = 1e-3
    ecoflap_samples: int = 128
    ecoflap_max_delta: float = 0.1
    # DAS (released: diversity of each linear's output tokens, keep budget by score, max = target + 0.1)
    das_mode: str = "released"  # released | paper (per-layer output diversity, sparsity ~ 1 / importance)
    das_max_delta: float = 0.1
    das_positive_only: bool = True  # released: within-modality means over positive similarities only
    allocation_overshoot_bug: bool = False  # True: the released keep-budget fix-up that adds instead of removing
    # AMIA (released constants: k = 3, edge exp(-1.0 d), suppression exp(-0.2 d), MMD^2 < 0.1 sqrt(1 - density))
    amia_k: int = 3
    amia_edge_temp: float = 1.0
    amia_suppress_temp: float = 0.2
    amia_mmd_factor: float = 0.1
    amia_sigma: float = 1.0
    amia_scope: str = "module"  # module (released: per linear output) | layer (one selection per block)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_preset(cls, method: str, **overrides: Any) -> "PruneConfig":
        """Build a config from a preset name plus explicit overrides (None values are ignored).

        `dense` keeps every weight: it takes no sparsity or 0, and anything else is refused rather than ignored.
        """
        values: dict[str, Any] = {"method": method, **preset(method)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if method == "dense":
            if values.get("sparsity", 0.0) != 0:
                raise TampError(f"--method dense keeps every weight (the unpruned model); it takes --sparsity 0, "
                                f"not {values['sparsity']}")
            values["sparsity"] = 0.0
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        check_sparsity(self.sparsity)
        if self.allocation not in ALLOCATIONS:
            raise TampError(f"unknown allocation '{self.allocation}'; choose one of: {', '.join(ALLOCATIONS)}")
        if self.token_selection not in TOKEN_SELECTIONS:
            raise TampError(f"unknown token selection '{self.token_selection}'; choose one of: {', '.join(TOKEN_SELECTIONS)}")
        if self.scoring not in SCORINGS:
            raise TampError(f"unknown scoring '{self.scoring}'; choose one of: {', '.join(SCORINGS)}")
        if self.das_mode not in DAS_MODES:
            raise TampError(f"unknown das_mode '{self.das_mode}'; choose one of: {', '.join(DAS_MODES)}")
        if self.amia_scope not in AMIA_SCOPES:
            raise TampError(f"unknown amia_scope '{self.amia_scope}'; choose one of: {', '.join(AMIA_SCOPES)}")
        if self.amia_k < 1:
            raise TampError(f"amia_k must be at least 1, got {self.amia_k}")
        if self.nsamples < 1:
            raise TampError(f"--nsamples must be at least 1, got {self.nsamples}")
        if self.seqlen < 2:
            raise TampError(f"--seqlen must be at least 2, got {self.seqlen}")
        if self.blocksize < 1:
            raise TampError(f"--blocksize must be at least 1, got {self.blocksize}")
        if self.percdamp <= 0:
            # 0 leaves the Hessian of any unused input column singular, and SparseGPT's Cholesky step fails
            raise TampError(f"--percdamp must be positive (the reference uses 0.01), got {self.percdamp}")
        if self.amia_sigma <= 0:
            raise TampError(f"amia_sigma must be positive, got {self.amia_sigma}")
        from tamp.algorithms.masks import parse_pattern

        try:
            nm = parse_pattern(self.pattern)
        except ValueError as exc:
            raise TampError(str(exc)) from None
        if nm is not None and self.sparsity not in (0.0,) and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise TampError(
                f"pattern {self.pattern} fixes the sparsity at {nm[0] / nm[1]:g}; pass --sparsity {nm[0] / nm[1]:g}"
            )
        if nm is not None and self.scoring == "sparsegpt" and self.blocksize % nm[1]:
            raise TampError(f"--blocksize {self.blocksize} must be a multiple of {nm[1]} for the {self.pattern} pattern "
                            "(SparseGPT must not split an N:M group between blocks)")

    @property
    def nm(self) -> tuple[int, int] | None:
        from tamp.algorithms.masks import parse_pattern

        return parse_pattern(self.pattern)

    @classmethod
    def parse_overrides(cls, items: list[str]) -> dict[str, Any]:
        """`FIELD=VALUE` strings (from `--set`) -> typed values; unknown fields are a clear error."""
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "extra"}
        out: dict[str, Any] = {}
        for item in items:
            if "=" not in item:
                raise TampError(f"--set expects FIELD=VALUE, got '{item}'")
            key, raw = (part.strip() for part in item.split("=", 1))
            if key not in types:
                raise TampError(f"unknown config field '{key}'; fields: {', '.join(sorted(types))}")
            kind = str(types[key])
            try:
                if kind == "bool":
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(raw)
                    out[key] = raw.lower() in ("true", "1", "yes")
                elif kind == "int":
                    out[key] = int(raw)
                elif kind == "float":
                    out[key] = float(raw)
                else:
                    out[key] = raw
            except ValueError:
                raise TampError(f"--set {key}: '{raw}' is not a valid {kind}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
