"""The method registry: every module of this package that defines METHOD, plus plugins.

A plugin is any installed distribution with an entry point in the group `tamp.methods` whose value is a
Method (or a list of them); `tamp` and `harness` pick it up with no change here, as lmms-eval finds our
wrappers. A run's config holds the parameters of the methods it uses only (nested under each one's name), so
installing a plugin changes no other method's artifact key.
"""

from __future__ import annotations

from dataclasses import replace

import tamp.methods as package
from tamp.engine.parts import Parts
from tamp.methods.base import (
    ALL_TOKENS,
    UNIFORM,
    Method,
    WeightMethod,
)
from tamp.params import RUN_FIELDS
from tamp.plugins import Registry

ENTRY_POINT_GROUP = "tamp.methods"


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


def _plugin_problem(method: Method, known: dict[str, Method]) -> str | None:
    params = {p.name: p for m in known.values() for p in m.params}
    for p in method.params:
        if p.name in RUN_FIELDS or (p.name in params and params[p.name] != p):
            return f"parameter '{p.name}' is already declared differently"
    problems = _composition_problems(method, {**known, method.name: method})
    return problems[0] if problems else None


REGISTRY: Registry[Method] = Registry(
    kind="method", package=package.__name__, attribute="METHOD", group=ENTRY_POINT_GROUP, entry_type=Method,
    with_source=lambda m, source: replace(m, source=source), order=lambda m: (m.order, m.name),
    skip=frozenset({"base", "registry", "listing"}),
    builtin_problems=lambda known: [p for m in known.values() for p in _composition_problems(m, known)],
    plugin_problem=_plugin_problem,
)


def builtin_methods() -> dict[str, Method]:
    """The methods shipped in tamp/methods/, in table order."""
    return REGISTRY.builtin()


def all_methods() -> dict[str, Method]:
    """Built-in methods plus those of installed plugins (a broken plugin is skipped with a warning)."""
    return REGISTRY.all()


def get(name: str) -> Method:
    """The method registered under `name`; an unknown name is refused with the list of known ones."""
    return REGISTRY.get(name)


def part_choices(part: str) -> tuple[str, ...]:
    """Valid values of a config's allocation / token_selection / scoring field."""
    hook = {"allocation": "allocate", "token_selection": "select", "scoring": "score"}[part]
    neutral = {"allocation": (UNIFORM,), "token_selection": (ALL_TOKENS,), "scoring": ()}[part]
    return neutral + tuple(n for n, m in all_methods().items()
                           if isinstance(m, WeightMethod) and getattr(m, hook) is not None)


def compose_parts(allocation: str, token_selection: str, scoring: str, nm_pattern: bool) -> Parts:
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
