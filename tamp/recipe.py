"""A run's recipe: what one run does, parsed once from any front end, resolved once, keyed once.

`tamp prune`, `harness run`, `harness sweep` and every grid cell describe a run the same way: a method string
(`WEIGHT`, `TOKEN` or `WEIGHT+TOKEN`), a sparsity and pattern, `--set FIELD=VALUE` overrides, the calibration
draw, the dtype. `build_recipe` turns them into a `Recipe` with one set of rules and error texts: the weight part
(a PruneConfig holding only the parameters of the methods it uses), the token part, the composition resolved to
engine hooks, and whether calibration data is needed. The pipeline, the engine and the harness take the Recipe;
nothing downstream parses a method name again. `code_versions` is what the artifact key covers of tamp's code:
the declared versions of what the recipe runs, not its source text.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import tamp.algorithms
import tamp.calibration
import tamp.engine
import tamp.inference
from tamp.artifacts import FORMAT_VERSION
from tamp.config import PruneConfig, check_sparsity
from tamp.engine.parts import Parts
from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import (
    ALL_TOKENS,
    TOKEN_BUDGET,
    UNIFORM,
    Method,
    QuantMethod,
    TokenMethod,
    WeightMethod,
    parse_grid,
)
from tamp.overrides import split_item, typed_value, unknown_field
from tamp.params import RUN_PARAMS, Param
from tamp.quantization import SECTION as QUANT_SECTION
from tamp.quantization import Quantization
from tamp.token_transform import TokenTransform

DENSE = "dense"
_PARTS = ("allocation", "token_selection", "scoring")
_RUN = {p.name: p for p in RUN_PARAMS}


def compose(name: str) -> tuple[str, str | None, str | None]:
    """`tamp+gptq-w4g128+fastv` -> ('tamp', 'fastv', 'gptq-w4g128'): the weight method (dense when none is named),
    the token method and the quantizer (with its grid, when the name gives one), at most one of each kind, each
    registered under its kind."""
    parts = [p.strip() for p in name.split("+")]
    if any(not p for p in parts):
        raise TampError(f"--method '{name}': empty part; compose as WEIGHT+QUANT+TOKEN, e.g. tamp+fastv or tamp+gptq")
    kinds: dict[str, list[str]] = {"weight": [], "token": [], "quant": []}
    for part in parts:
        method = registry.get(_quantizer_name(part))
        if method.kind not in kinds:
            raise TampError(f"--method: '{part}' is a {method.kind} method, which does not compose yet")
        kinds[method.kind].append(part)
    if any(len(v) > 1 for v in kinds.values()):
        raise TampError(f"--method '{name}': at most one weight method, one quantizer and one token method, "
                        "e.g. tamp+gptq+fastv")
    weight = kinds["weight"][0] if kinds["weight"] else DENSE
    return weight, next(iter(kinds["token"]), None), next(iter(kinds["quant"]), None)


def _quantizer_name(part: str) -> str:
    """`gptq-w4g128` -> `gptq` (a registered quantizer and a grid label); any other part as it is."""
    head, _, grid = part.partition("-")
    if grid and isinstance(registry.all_methods().get(head), QuantMethod):
        if parse_grid(grid) is None:
            raise TampError(f"--method: '{grid}' in '{part}' is no grid; write it as w<bits>[g<group>][-asym], "
                            "e.g. gptq-w4g128, rtn-w8")
        return head
    return part


def _quantization(part: str, sets: dict[str, Any]) -> Quantization:
    """The quantizer of a method name's part, its grid from the name (`gptq-w4g128`) and `--set`, which agree."""
    head, _, grid = part.partition("-")
    named = parse_grid(grid) if grid else {}
    assert named is not None
    clash = sorted(k for k in named if k in sets and sets[k] != named[k])
    if clash:
        raise TampError(f"--set {clash[0]}={sets[clash[0]]} contradicts the grid '{grid}' in --method; give one")
    return Quantization.build(head, {**named, **sets})


def split_method(name: str) -> tuple[str, str | None]:
    """`tamp+fastv` -> ('tamp', 'fastv'); `fastv` -> ('dense', 'fastv'); `wanda` -> ('wanda', None) (any quantizer
    in the name is checked and left out: `compose` has it)."""
    weight, token, _ = compose(name)
    return weight, token


def method_params() -> dict[str, tuple[Param, list[str]]]:
    """Every method parameter `--set` accepts: name -> (its Param, the methods declaring it)."""
    out: dict[str, tuple[Param, list[str]]] = {}
    for method in registry.all_methods().values():
        for p in method.params:
            out.setdefault(p.name, (p, []))[1].append(method.name)
    return out


def quant_params() -> set[str]:
    """The names of every quantizer's parameters."""
    return {p.name for m in registry.all_methods().values() if isinstance(m, QuantMethod) for p in m.params}


def token_params() -> set[str]:
    """The names of every token method's parameters, and the common token budget."""
    return {TOKEN_BUDGET.name} | {p.name for m in registry.all_methods().values() if isinstance(m, TokenMethod)
                                  for p in m.params}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`FIELD=VALUE` strings (from `--set` or a grid's overrides) -> typed values; an unknown field is refused."""
    params = {**_RUN, TOKEN_BUDGET.name: TOKEN_BUDGET, **{name: p for name, (p, _) in method_params().items()}}
    out: dict[str, Any] = {}
    for item in items:
        key, raw = split_item(item)
        if key not in params:
            raise unknown_field(key, params)
        out[key] = typed_value(key, raw, params[key].type.__name__)
    return out


def _check_parts(values: Mapping[str, Any]) -> None:
    for part in _PARTS:
        choices = registry.part_choices(part)
        if values[part] not in choices:
            label = part.replace("_", " ")
            raise TampError(f"unknown {label} '{values[part]}'; choose one of: {', '.join(choices)}")


def used_methods(cfg_values: Mapping[str, Any]) -> list[WeightMethod]:
    """The registered weight methods a composition runs: the named method and each part's owner."""
    methods = registry.all_methods()
    names = dict.fromkeys([cfg_values["method"], *(cfg_values[p] for p in _PARTS)])
    return [m for n in names if n not in (UNIFORM, ALL_TOKENS) and isinstance(m := methods.get(n), WeightMethod)]


def weight_config(method: str, **overrides: Any) -> PruneConfig:
    """The PruneConfig of weight method `method` with run fields and method parameters overridden (None values
    are ignored); every value checked. A method that keeps every weight (dense) takes no sparsity, or 0."""
    chosen = registry.get(method)
    if not isinstance(chosen, WeightMethod):
        raise TampError(f"method '{method}' is a {chosen.kind} method; tamp prune takes weight methods")
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {"method": method, **chosen.composition()}
    values.update({k: given.pop(k) for k in list(given) if k in _RUN and k != "method"})
    if chosen.keeps_every_weight:
        if values.get("sparsity", 0.0) != 0:
            raise TampError(f"--method {method} keeps every weight (the unpruned model); it takes --sparsity 0, "
                            f"not {values['sparsity']}")
        values["sparsity"] = 0.0
    known = method_params()
    unknown = [k for k in given if k not in known]
    if unknown:
        raise unknown_field(unknown[0], {*_RUN, *known})
    cfg = PruneConfig(**values)
    _check_parts(values)
    used = used_methods(values)
    declared = {p.name for m in used for p in m.params}
    foreign = [k for k in given if k not in declared]
    if foreign:
        owners = ", ".join(known[foreign[0]][1])
        raise TampError(f"--set {foreign[0]}: a parameter of {owners}, which --method {method} does not use "
                        f"(its parts: {', '.join(m.name for m in used)}); parameters it takes: "
                        f"{', '.join(sorted(declared)) or '-'}")
    cfg.params = {m.name: {p.name: given.get(p.name, p.default) for p in m.params} for m in used if m.params}
    cfg.check_run_fields()
    for m in used:
        for p in m.params:
            _raise(p.problem(cfg.params[m.name][p.name]))
    for m in used:
        if m.check is not None:
            _raise(m.check(cfg))
    return cfg


def _type_problem(param: Param, value: Any) -> str | None:
    """A value of the wrong type (a grid file's `seed: abc`), said as the flag it stands for."""
    kind = param.type
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    return None if ok else f"--{param.name}: {value!r} is not a valid {kind.__name__}"


def _raise(problem: str | None) -> None:
    if problem:
        raise TampError(problem)


def resolve_parts(cfg: PruneConfig) -> Parts | None:
    """The engine hooks of `cfg`'s composition; None when it zeroes nothing."""
    if not cfg.prunes:
        return None
    return registry.compose_parts(cfg.allocation, cfg.token_selection, cfg.scoring, nm_pattern=cfg.nm is not None)


@dataclass(frozen=True)
class Recipe:
    """What one run does. `parts` and `needs_calibration` are resolved when it is built, never again."""

    weight: PruneConfig
    token: TokenTransform | None = None
    dtype: str = "auto"
    parts: Parts | None = None
    needs_calibration: bool = False
    methods: tuple[Method, ...] = field(default=(), repr=False)  # the registered methods it runs
    quant: Quantization | None = None

    @property
    def name(self) -> str:
        """What a run is filed and tabulated under: the weight method, the quantizer with its grid and the token
        method that it runs (`tamp+fastv`, `tamp+gptq-w4g128`, `rtn-w8`), the dense model named only alone;
        `--method` reads it back as the same recipe."""
        named = [self.weight.method if self.weight.method != DENSE else "",
                 f"{self.quant.method}-{self.quant.label}" if self.quant else "", self.token.method if self.token else ""]
        return "+".join(n for n in named if n) or DENSE

    @property
    def sparsity(self) -> float:
        return self.weight.sparsity

    @property
    def pattern(self) -> str:
        return self.weight.pattern

    def key_inputs(self) -> dict[str, Any]:
        """What of the recipe shapes an artifact: the configs as recorded, the dtype, the code's versions."""
        return {"config": self.weight.to_dict(), "transform": self.token.to_dict() if self.token else None,
                "dtype": self.dtype, "code": code_versions(self),
                **({QUANT_SECTION: self.quant.to_dict()} if self.quant else {})}


def build_recipe(method: str, sparsity: float | None = None, *, pattern: str = "unstructured",
                 overrides: Sequence[str] | Mapping[str, Any] = (), calib: str | None = None,
                 nsamples: int | None = None, seqlen: int | None = None, seed: int | None = None,
                 prune_vision: bool = False, dtype: str = "auto", sparsity_required: bool = False) -> Recipe:
    """The one parser of a run's settings (tamp prune, harness run, sweeps, grid cells).

    Sparsity 0 (without an N:M pattern) and a method that keeps every weight are the dense model; a token method
    alone keeps every weight; `--set` names a parameter of a method the run uses. `sparsity=None` takes the
    config's default, unless `sparsity_required` (harness run: the sparsity is part of what a record is)."""
    weight, token, quantizer = compose(method)
    values = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
    tokens, quants = token_params(), quant_params()
    token_sets = {k: v for k, v in values.items() if k in tokens}
    quant_sets = {k: v for k, v in values.items() if k in quants}
    weight_sets = {k: v for k, v in values.items() if k not in tokens and k not in quants}
    if token_sets and token is None:
        raise TampError(f"--set {', '.join(token_sets)}: parameters of a token method; add it to --method, "
                        f"e.g. {method}+fastv")
    if quant_sets and quantizer is None:
        raise TampError(f"--set {', '.join(quant_sets)}: parameters of a quantizer; add it to --method, "
                        f"e.g. {method}+gptq")
    transform = TokenTransform.build(token, token_sets) if token is not None else None
    quant = _quantization(quantizer, quant_sets) if quantizer is not None else None
    keeps_every_weight = getattr(registry.get(weight), "keeps_every_weight", False)
    if keeps_every_weight and sparsity:
        if token is None and quant is None:
            raise TampError(f"--method {method} keeps every weight (the unpruned model); it takes --sparsity 0, "
                            f"not {sparsity}")
        added = token or quant.method  # type: ignore[union-attr]
        raise TampError(f"--method {method} keeps every weight; it takes --sparsity 0 (or compose it with a weight "
                        f"method, e.g. tamp+{added})")
    if sparsity is None and sparsity_required and not keeps_every_weight:
        raise TampError("--sparsity is required (0 evaluates the dense model)")
    if sparsity is not None:
        check_sparsity(sparsity)
    draw = {"calib": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}
    for name in ("nsamples", "seqlen", "seed"):  # checked when given, even where the run draws no data
        if draw[name] is not None:
            _raise(_type_problem(_RUN[name], draw[name]) or _RUN[name].problem(draw[name]))
    if keeps_every_weight or sparsity == 0:
        if pattern != "unstructured":
            keeper = f"--method {method}" if keeps_every_weight else "--sparsity 0"
            raise TampError(f"--pattern {pattern} prunes weights, but {keeper} keeps every weight: drop --pattern, "
                            "or prune with a weight method (e.g. --method wanda --sparsity 0.5)")
        if weight_sets and not keeps_every_weight:  # a pruning method's parameters, checked, then moot at 0
            weight_config(weight, sparsity=0.5, **weight_sets)
        elif weight_sets:
            weight_config(weight, **weight_sets)  # refused: the dense model takes no parameters
        draws = (transform is not None and transform.wants_fit()) or (quant is not None and quant.needs_calibration)
        cfg = weight_config(DENSE, sparsity=0.0, prune_vision=prune_vision, **(draw if draws else {}))
    else:
        cfg = weight_config(weight, sparsity=sparsity, pattern=pattern, prune_vision=prune_vision, **draw,
                            **weight_sets)
    return recipe_for(cfg, transform, dtype, quant)


def recipe_for(cfg: PruneConfig, token: TokenTransform | None = None, dtype: str = "auto",
               quant: Quantization | None = None) -> Recipe:
    """The recipe of an already checked weight config (and token and quantization parts): its parts and needs
    resolved."""
    parts = resolve_parts(cfg)
    fit = token is not None and token.wants_fit()
    needs = fit or (parts is not None and parts.needs.calibration) or (quant is not None and quant.needs_calibration)
    used: list[Method] = list(used_methods(cfg.to_dict())) if cfg.prunes else []
    if quant is not None:
        used.append(registry.get(quant.method))
    if token is not None:
        used.append(registry.get(token.method))
    return Recipe(cfg, token, dtype, parts, needs, tuple(used), quant)


# ------------------------------------------------------------------ what of the code an artifact key covers


def _algorithm_modules(module: ModuleType, seen: set[str]) -> None:
    """The tamp.algorithms modules whose functions or classes `module` uses, transitively."""
    for value in vars(module).values():
        owner = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if not isinstance(owner, str) or not owner.startswith(f"{tamp.algorithms.__name__}.") or owner in seen:
            continue
        seen.add(owner)
        _algorithm_modules(importlib.import_module(owner), seen)


def _module_of(method: Method) -> ModuleType | None:
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == method.source and getattr(module, "METHOD", None) is not None:
            return module
    return None


def code_versions(recipe: Recipe) -> dict[str, Any]:
    """The versions of the code that made an artifact: each method the recipe runs (and each algorithm module
    its file uses), the engine when weights are pruned, the calibration code when data is drawn, the
    sequence-editing core when a token method runs, the artifact format. A docstring edit changes none of them;
    a change of what a method computes bumps its version (the golden checks in tests/golden fail until it does)."""
    seen: set[str] = set()
    for method in recipe.methods:
        module = _module_of(method)
        if module is not None:
            _algorithm_modules(module, seen)
    out: dict[str, Any] = {"artifact_format": FORMAT_VERSION,
                           "methods": {m.name: m.version for m in recipe.methods},
                           "algorithms": {name.rsplit(".", 1)[1]: importlib.import_module(name).VERSION
                                          for name in sorted(seen)}}
    if recipe.parts is not None or recipe.quant is not None:
        out["engine"] = tamp.engine.VERSION
    if recipe.needs_calibration:
        out["calibration"] = tamp.calibration.VERSION
    if recipe.token is not None:
        out["inference"] = tamp.inference.VERSION
    return out
