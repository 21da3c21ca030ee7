"""A run's token part: a token method as applied to one artifact, its name and parameters validated against
the registry (this glue knows the registry; the sequence-editing core in tamp/inference/ knows no method).

`tamp+fastv` is a weight method composed with a token method: the weights are pruned with tamp, and FastV
runs whenever the artifact is evaluated. pruning.json records the transform in its `transform` section; the
loader (`install`) re-applies it, so lmms-eval through our wrappers evaluates it with no extra flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tamp.artifacts import PRUNING_JSON, TRANSFORM, TransformInvalid, transform_problem
from tamp.errors import TampError
from tamp.families.registry import families
from tamp.inference.sequence_edit import VISUAL, SequenceEditor
from tamp.methods import registry
from tamp.methods.base import TOKEN_BUDGET, TokenMethod
from tamp.models.adapters import get_adapter
from tamp.params import resolve_params
from tamp.schema import SchemaError, check

SECTION = TRANSFORM  # pruning.json's key for it (its schema: tamp.artifacts.TransformSection)


def as_config(config: Any) -> Any:
    """A transformers config from a config.json dict read off disk (defaults filled in, nested vision / text
    configs built, as loading would), the config itself when it is one; None when transformers does not know its
    model type (the loaded model is checked again at install)."""
    if not isinstance(config, dict):
        return config
    from transformers import AutoConfig

    data = dict(config)
    try:
        return AutoConfig.for_model(str(data.pop("model_type", "")), **data)
    except (ValueError, KeyError, TypeError):
        return None


def _method_schema(method: TokenMethod) -> type:
    """The section's params and fitted as the method declares them, as a schema (tamp.schema): each parameter may
    be absent (its default fills it), of its Param's type when present (null only where the default is); fitted
    as the method's `fitted_schema` says."""
    params = make_dataclass(f"{method.name}_params", [(p.name, p.type if p.default is not None else p.type | None,
                                                       field(default=None)) for p in method.params])
    return make_dataclass(f"{method.name}_transform", [("params", params, field(default=None)),
                                                       ("fitted", method.fitted_schema or dict[str, Any],
                                                        field(default=None))])


@dataclass(frozen=True)
class TokenTransform:
    """`fitted`: what the method chose at prune time from calibration statistics (YOPO's heads, with the statistic
    that chose them); empty for methods without a fit. Recorded beside the params, never set by hand."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    budget: float | None = None  # the common token budget the params were set from (`token_budget`), if any

    @classmethod
    def build(cls, method: str, overrides: dict[str, Any] | None = None) -> TokenTransform:
        """Defaults of the token method, overridden; each value checked by its Param. `token_budget` sets the
        method's own parameters through its `budget` mapping (naming one of those as well is refused)."""
        chosen = registry.get(method)
        if not isinstance(chosen, TokenMethod):
            raise TampError(f"'{method}' is a {chosen.kind} method, not a token method")
        overrides = dict(overrides or {})
        budget = overrides.pop(TOKEN_BUDGET.name, None)
        if budget is not None:
            overrides = {**cls._from_budget(chosen, budget, overrides), **overrides}
        params = resolve_params(method, chosen.params, overrides)
        return cls(method, params, budget=None if budget is None else float(budget))

    @staticmethod
    def _from_budget(chosen: TokenMethod, budget: Any, overrides: dict[str, Any]) -> dict[str, Any]:
        """The method's own parameters for a token budget, checked."""
        problem = TOKEN_BUDGET.problem(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) \
            else f"token_budget must be a number in (0, 1], got {budget!r}"
        if problem:
            raise TampError(problem)
        if chosen.budget is None:
            with_budget = sorted(m.name for m in registry.all_methods().values()
                                 if isinstance(m, TokenMethod) and m.budget is not None)
            raise TampError(f"--set token_budget: {chosen.name} sets no retained-token count, so it takes no token "
                            f"budget; set its own parameters, or use one of: {', '.join(with_budget)}")
        mapped = chosen.budget(float(budget))
        both = sorted(set(mapped) & set(overrides))
        if both:
            raise TampError(f"--set token_budget sets {', '.join(both)} of {chosen.name}; give one or the other")
        return mapped

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), **({"fitted": dict(self.fitted)} if self.fitted else {}),
                **({"budget": self.budget} if self.budget is not None else {})}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = PRUNING_JSON) -> TokenTransform:
        """The transform a pruning.json section records, held against its schema (tamp.artifacts.TransformSection,
        then the method's `fitted_schema`) and the registry; raises TransformInvalid (a TampError), one line naming
        ``source`` (the pruning.json it came from) and what is wrong."""
        problem = transform_problem(data, source)
        if problem is not None:
            raise TransformInvalid(problem, Path(source))
        where = f"{source}: its {SECTION} section"
        try:
            chosen = registry.get(data["method"])
        except TampError as exc:  # a plugin's method, the plugin not installed here
            raise TransformInvalid(f"{where}: {exc}", Path(source),
                                   "install the plugin that registers it, or prune the artifact again") from None
        fitted = dict(data.get("fitted") or {})
        try:
            if isinstance(chosen, TokenMethod):  # each recorded value of the type its Param / fit declares
                check(_method_schema(chosen), {"params": data.get("params") or {}, **({"fitted": fitted} if fitted else {})},
                      where)
            built = cls.build(chosen.name, dict(data.get("params") or {}))
            if not fitted and isinstance(chosen, TokenMethod) and chosen.wants_fit(built.params):
                raise TampError(f"field 'fitted' is missing (what {chosen.name} chooses at prune time)")
        except TampError as exc:  # a value of the wrong type or out of range, a weight method's name
            raise TransformInvalid(str(exc) if isinstance(exc, SchemaError) else f"{where}: {exc}", Path(source)) from None
        budget = data.get("budget")
        return cls(built.method, built.params, fitted, None if budget is None else float(budget))

    def _method(self) -> TokenMethod:
        chosen = registry.get(self.method)
        if not isinstance(chosen, TokenMethod) or chosen.plan is None:
            raise TampError(f"'{self.method}' is no token method with a plan")
        return chosen

    def wants_fit(self) -> bool:
        """The method chooses something from calibration data at prune time, and has not yet."""
        return not self.fitted and self._method().wants_fit(self.params)

    def fit(self, model: nn.Module, batches: list[dict[str, Any]], device: torch.device) -> TokenTransform:
        """The transform with the method's fit recorded (itself when the method needs none)."""
        chosen = self._method()
        if not self.wants_fit():
            return self
        problem = self.model_problem(get_adapter(model).family, config=model.config)  # before the fit's passes
        if problem is not None:
            raise TampError(problem)
        assert chosen.fit is not None
        return TokenTransform(self.method, self.params,
                              chosen.fit(self.params, model, get_adapter(model), batches, device), self.budget)

    def model_problem(self, family: str, num_layers: int | None = None, config: Any = None) -> str | None:
        """Why a model of `family` with `num_layers` decoder layers (None: not known yet) cannot run this transform,
        or None. The composition rules against the model, in one place, asked at plan time (`harness run`, from the
        config) and again at install (from the loaded model): a token method chooses among visual tokens, so a
        model with no image or video input would run it as a no-op; a drop layer must lie inside the model."""
        takes = families()[family].inputs if family in families() else None
        if takes is not None and not set(takes) & set(VISUAL):
            return (f"--method {self.method}: {self.method} removes visual tokens, but a {family} model takes "
                    f"{' and '.join(takes) + ' and text' if takes else 'text only'} (no image or video input), so it "
                    "would change nothing; choose a model with image or video input, or drop it from --method")
        refused = dict(families()[family].refused_token_methods) if family in families() else {}
        if self.method in refused:
            return f"--method {self.method}: not on {family} models: {refused[self.method]}"
        chosen = self._method()
        built = as_config(config) if config is not None and chosen.config_problem is not None else None
        if built is not None:
            problem = chosen.config_problem(built)
            if problem is not None:
                return f"--method {self.method}: {problem}"
        if num_layers is None:
            return None
        asked = chosen.depth_problem(dict(self.params), num_layers) if chosen.depth_problem is not None else None
        if asked is not None:
            return f"--method {self.method}: {asked}"
        if chosen.model_defaults is not None:  # such a plan needs the layers themselves: its depth_problem says
            return None
        try:
            drops = chosen.plan(dict(self.params), num_layers).drops
        except ValueError as exc:
            return f"--method {self.method}: {exc}"
        beyond = sorted(i for i in drops if i >= num_layers)
        if not beyond:
            return None
        named = [k for k, v in self.params.items() if isinstance(v, int) and not isinstance(v, bool) and v in beyond]
        what = f"{named[0]} {self.params[named[0]]}" if named else f"drop layer {beyond[0]}"
        return (f"--method {self.method}: {what} is beyond this model's {num_layers} decoder layers; set it to at "
                f"most {num_layers - 1}")

    def install(self, model: nn.Module) -> SequenceEditor:
        """Apply the transform to a loaded model (until `.remove()` on the returned editor): the method's plan for
        this model's depth, carried out by the sequence editor."""
        chosen = self._method()
        adapter = get_adapter(model)
        layers = list(adapter.language_stack(model).layers)
        problem = self.model_problem(adapter.family, config=model.config)
        if problem is not None:
            raise TampError(problem)
        params = {**self.params, **self.fitted}
        try:
            params = chosen.model_defaults(params, layers) if chosen.model_defaults is not None else params
            return SequenceEditor(model, adapter, chosen.plan(params, len(layers)))
        except ValueError as exc:  # e.g. a drop layer the model does not have
            raise TampError(f"--method {self.method}: {exc}") from None
