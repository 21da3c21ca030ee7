"""The method registry: every module of this package that defines METHOD, plus plugins.

A plugin is any installed distribution with an entry point in the group `tamp.methods` whose value is a
Method (or a list of them); `tamp` and `harness` pick it up with no change here, as lmms-eval finds our
wrappers. Built-in methods' parameters are PruneConfig fields (pruning.json's format); a plugin's
parameters are kept in the config's `extra`, so installing a plugin changes no other method's artifact key.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import entry_points

import tamp.methods as package
from tamp.errors import TampError
from tamp.methods.base import (
    ALL_TOKENS,
    UNIFORM,
    Allocation,
    Method,
    Needs,
    Scoring,
    TokenSelection,
    WeightMethod,
)
from tamp.params import RUN_FIELDS, Param

ENTRY_POINT_GROUP = "tamp.methods"
_NOT_METHODS = {"base", "registry", "listing"}  # the machinery; every other module is one method


def _ordered(methods: list[Method]) -> dict[str, Method]:
    return {m.name: m for m in sorted(methods, key=lambda m: (m.order, m.name))}


@cache
def builtin_methods() -> dict[str, Method]:
    """The methods shipped in tamp/methods/, in table order."""
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_METHODS:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.append(replace(module.METHOD, source=module.__file__ or info.name))
    methods = _ordered(found)
    problems = [p for m in methods.values() for p in _composition_problems(m, methods)]
    if problems:
        raise AssertionError("; ".join(problems))  # a mistake in this package, caught by its tests
    return methods


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _composition_problems(method: Method, known: dict[str, Method]) -> list[str]:
    """A weight method must compose parts that exist: an allocation, token selection and scoring with hooks."""
    if not isinstance(method, WeightMethod):
        return []
    out = []
    for part, neutral, hook in (("allocation", UNIFORM, "allocate"), ("token_selection", ALL_TOKENS, "select"),
                                ("scoring", None, "score")):
        name = getattr(method, part)
        if name == neutral:
            continue
        owner = method if name == method.name else known.get(name)
        if not isinstance(owner, WeightMethod) or getattr(owner, hook) is None:
            out.append(f"method '{method.name}': {part} '{name}' is no registered method with a {hook} hook")
    return out


@cache
def all_methods() -> dict[str, Method]:
    """Built-in methods plus those of installed plugins (a broken plugin is skipped with a warning)."""
    methods = dict(builtin_methods())
    params = {p.name: p for m in methods.values() for p in m.params}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:  # any error inside a third-party package: report it, keep tamp usable
            _warn(f"method plugin '{ep.name}' ({ep.value}) failed to import ({type(exc).__name__}: {exc}); skipped")
            continue
        source = getattr(sys.modules.get(ep.module), "__file__", None) or ep.value
        for method in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
            problem = _plugin_problem(method, methods, params)
            if problem:
                _warn(f"method plugin '{ep.name}' ({ep.value}): {problem}; skipped")
                continue
            methods[method.name] = replace(method, source=source)
            params.update({p.name: p for p in method.params})
    return _ordered(list(methods.values()))


def _plugin_problem(method: object, methods: dict[str, Method], params: dict[str, Param]) -> str | None:
    if not isinstance(method, Method):
        return f"{method!r} is not a tamp.methods.base.Method"
    if method.name in methods:
        return f"the name '{method.name}' is taken by {methods[method.name].source}"
    for p in method.params:
        if p.name in RUN_FIELDS or (p.name in params and params[p.name] != p):
            return f"parameter '{p.name}' is already declared differently"
    problems = _composition_problems(method, {**methods, method.name: method})
    return problems[0] if problems else None


def get(name: str) -> Method:
    """The method registered under `name`; an unknown name is refused with the list of known ones."""
    methods = all_methods()
    if name not in methods:
        raise TampError(f"unknown method '{name}'; choose one of: {', '.join(methods)}")
    return methods[name]


def part_choices(part: str) -> tuple[str, ...]:
    """Valid values of a config's allocation / token_selection / scoring field."""
    hook = {"allocation": "allocate", "token_selection": "select", "scoring": "score"}[part]
    neutral = {"allocation": (UNIFORM,), "token_selection": (ALL_TOKENS,), "scoring": ()}[part]
    return neutral + tuple(n for n, m in all_methods().items()
                           if isinstance(m, WeightMethod) and getattr(m, hook) is not None)


@dataclass(frozen=True)
class Parts:
    """A config's composition resolved to hooks, and what running it needs."""

    allocation: Allocation | None
    selection: TokenSelection | None
    scoring: Scoring
    needs: Needs


def resolve(allocation: str, token_selection: str, scoring: str, nm_pattern: bool) -> Parts:
    """The hooks named by a composition. Under an N:M pattern the allocation is not used (every matrix is N/M)."""
    methods = all_methods()
    alloc = None if allocation == UNIFORM or nm_pattern else methods[allocation].allocate  # type: ignore[union-attr]
    select = None if token_selection == ALL_TOKENS else methods[token_selection].select  # type: ignore[union-attr]
    score = methods[scoring].score  # type: ignore[union-attr]
    assert score is not None
    needs = score.needs
    for part in (alloc, select):
        if part is not None:
            needs = needs | part.needs
    return Parts(alloc, select, score, needs)
