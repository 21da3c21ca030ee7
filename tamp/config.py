"""Every pruning hyperparameter in one object, with the reference value as default.

PruneConfig's fields are the run-level ones (tamp.params.RUN_PARAMS) plus the parameters each built-in
method declares in its own file; a plugin method's parameters live in `extra`. A method name stands for a
composition (allocation x token selection x scoring), which the registry resolves; `--set` may override
any field, a part included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, make_dataclass
from typing import Any

from tamp.algorithms.masks import parse_pattern
from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import WeightMethod
from tamp.params import RUN_PARAMS, Param


def check_sparsity(value: float, flag: str = "--sparsity", dense_ok: bool = True) -> float:
    """The one rule for a sparsity value: in [0, 1) (in (0, 1) where the dense model is added separately)."""
    if not 0.0 <= value < 1.0 or (value == 0 and not dense_ok):
        interval = "[0, 1)" if dense_ok else "(0, 1) (the dense model is always included)"
        raise TampError(f"{flag} must be in {interval}, got {value}")
    return value


def _unique(params: list[Param]) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for p in params:
        out.setdefault(p.name, p)  # a parameter two methods share (the keep-budget fix-up) is one field
    return out


FIELD_PARAMS: dict[str, Param] = _unique([*RUN_PARAMS, *(p for m in registry.builtin_methods().values()
                                                          if isinstance(m, WeightMethod) for p in m.params)])


def plugin_params() -> dict[str, Param]:
    """Parameters of installed plugin weight methods (kept in PruneConfig.extra)."""
    return _unique([p for m in registry.all_methods().values() if isinstance(m, WeightMethod)
                    for p in m.params if p.name not in FIELD_PARAMS])


def all_params() -> dict[str, Param]:
    """Every parameter `--set` accepts: config fields, plugin weight methods', and token methods' (which the
    caller hands to the token transform, tamp.inference.transform)."""
    tokens = {p.name: p for m in registry.all_methods().values() if not isinstance(m, WeightMethod) for p in m.params}
    return {**FIELD_PARAMS, **plugin_params(), **tokens}


class _ConfigBehaviour:
    """PruneConfig's methods; its fields are generated from the registry below."""

    @classmethod
    def from_preset(cls, method: str, **overrides: Any) -> Any:
        """Build a config from a method name plus explicit overrides (None values are ignored).

        A method that keeps every weight (dense) takes no sparsity or 0; anything else is refused, not ignored.
        """
        chosen = registry.get(method)
        if not isinstance(chosen, WeightMethod):
            raise TampError(f"method '{method}' is a {chosen.kind} method; tamp prune takes weight methods")
        values: dict[str, Any] = {"method": method, **chosen.composition()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if chosen.keeps_every_weight:
            if values.get("sparsity", 0.0) != 0:
                raise TampError(f"--method {method} keeps every weight (the unpruned model); it takes --sparsity 0, "
                                f"not {values['sparsity']}")
            values["sparsity"] = 0.0
        extras = plugin_params()
        unknown = [k for k in values if k not in FIELD_PARAMS and k not in extras and k != "extra"]
        if unknown:
            raise TampError(f"unknown config field '{unknown[0]}'; fields: {', '.join(sorted(all_params()))}")
        extra = dict(values.pop("extra", {}) or {})
        used = {values.get(part, getattr(chosen, part)) for part in ("allocation", "token_selection", "scoring")}
        for name in {method, *used}:
            part = registry.all_methods().get(name)
            for p in part.params if part is not None else ():
                if p.name in extras:
                    extra.setdefault(p.name, p.default)
        extra.update({k: values.pop(k) for k in list(values) if k in extras})
        cfg = cls(**values, extra=extra)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        check_sparsity(self.sparsity)
        for part in ("allocation", "token_selection", "scoring"):
            choices = registry.part_choices(part)
            if getattr(self, part) not in choices:
                label = part.replace("_", " ")
                raise TampError(f"unknown {label} '{getattr(self, part)}'; choose one of: {', '.join(choices)}")
        extras = plugin_params()
        for p in FIELD_PARAMS.values():
            _raise(p.problem(getattr(self, p.name)))
        for name, value in self.extra.items():
            if name in extras:
                _raise(extras[name].problem(value))
        try:
            nm = parse_pattern(self.pattern)
        except ValueError as exc:
            raise TampError(str(exc)) from None
        if nm is not None and self.sparsity not in (0.0,) and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise TampError(
                f"pattern {self.pattern} fixes the sparsity at {nm[0] / nm[1]:g}; pass --sparsity {nm[0] / nm[1]:g}"
            )
        methods = registry.all_methods()
        for name in dict.fromkeys((self.method, self.allocation, self.token_selection, self.scoring)):
            part = methods.get(name)
            if isinstance(part, WeightMethod) and part.check is not None:
                _raise(part.check(self))

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def param(self, name: str) -> Any:
        """A parameter's value: a field, or a plugin parameter from `extra` (its default when unset)."""
        if name in FIELD_PARAMS:
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        extras = plugin_params()
        if name in extras:
            return extras[name].default
        raise KeyError(name)

    @classmethod
    def parse_overrides(cls, items: list[str]) -> dict[str, Any]:
        """`FIELD=VALUE` strings (from `--set`) -> typed values; unknown fields are a clear error."""
        params = all_params()
        out: dict[str, Any] = {}
        for item in items:
            if "=" not in item:
                raise TampError(f"--set expects FIELD=VALUE, got '{item}'")
            key, raw = (part.strip() for part in item.split("=", 1))
            if key not in params:
                raise TampError(f"unknown config field '{key}'; fields: {', '.join(sorted(params))}")
            kind = params[key].type.__name__
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
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _raise(problem: str | None) -> None:
    if problem:
        raise TampError(problem)


PruneConfig = make_dataclass(
    "PruneConfig",
    [(p.name, p.type, field(default=p.default)) for p in FIELD_PARAMS.values()]
    + [("extra", dict, field(default_factory=dict))],
    bases=(_ConfigBehaviour,),
    namespace={"__doc__": "The full recipe of one pruning run; serialised whole into pruning.json.",
               "__module__": __name__},
)
