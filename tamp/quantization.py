"""A run's quantization part: a quantizer as applied to one artifact, its name and parameters validated against
the registry (this glue knows the registry; the engine receives only the resolved hook, a QuantStep).

`tamp+gptq` prunes the weights with tamp and rounds them with GPTQ in the same engine pass. pruning.json records
the part in its `quantization` section; the weights saved are the rounded ones (scale x integer), so any loader
evaluates them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tamp.engine.parts import QuantStep
from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import QuantMethod, grid_label
from tamp.params import resolve_params

SECTION = "quantization"  # pruning.json's key for it


@dataclass(frozen=True)
class Quantization:
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, method: str, overrides: dict[str, Any] | None = None) -> Quantization:
        """Defaults of the quantizer, overridden; each value checked by its Param."""
        chosen = cls._quantizer(method)
        params = resolve_params(method, chosen.params, dict(overrides or {}))
        return cls(method, params)

    @staticmethod
    def _quantizer(method: str) -> QuantMethod:
        chosen = registry.get(method)
        if not isinstance(chosen, QuantMethod) or chosen.quantize is None:
            raise TampError(f"'{method}' is a {chosen.kind} method, not a quantizer")
        return chosen

    @property
    def label(self) -> str:
        """The grid as tables show it: `w4g128`."""
        return grid_label(self.params)

    @property
    def needs_calibration(self) -> bool:
        return self.step().hook.needs.calibration

    def step(self) -> QuantStep:
        hook = self._quantizer(self.method).quantize
        assert hook is not None
        return QuantStep(hook, dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "grid": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantization:
        return cls.build(str(data["method"]), dict(data.get("params") or {}))
