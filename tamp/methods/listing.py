"""`tamp methods` (and `harness methods`): every registered method with its kind, composition, needs,
parameters and defaults, and the file that defines it; as a text table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tamp.methods.base import QuantMethod, TokenMethod, WeightMethod
from tamp.methods.registry import all_methods, compose_parts

# the depth a token method's plan is read at for its needs: the paper's 8B models' 32 decoder layers
PLAN_DEPTH = 32


def describe() -> list[dict[str, Any]]:
    """One plain dict per method, in table order."""
    rows = []
    for method in all_methods().values():
        row: dict[str, Any] = {"name": method.name, "kind": method.kind, "label": method.label,
                               "order": method.order, "summary": method.summary, "source": method.source}
        if isinstance(method, WeightMethod):
            parts = compose_parts(method.allocation, method.token_selection, method.scoring, nm_pattern=False)
            needs = parts.needs.names() if not method.keeps_every_weight else []
            row.update(method.composition(), needs=needs, keeps_every_weight=method.keeps_every_weight)
        elif isinstance(method, TokenMethod):
            row["needs"] = token_needs(method)
        elif isinstance(method, QuantMethod) and method.quantize is not None:
            row["needs"] = method.quantize.needs.names()
        row["params"] = [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                          **({"choices": list(p.choices)} if p.choices else {})} for p in method.params]
        rows.append(row)
    return rows


def token_needs(method: TokenMethod) -> list[str]:
    """What a token method needs at its defaults, read from its declaration: calibration data when it fits
    something at prune time (`fit` / `needs_fit`), attention when a drop of its plan asks for an attention
    score. A plan that cannot be drawn without a model (values fitted or read from the model's layers) shows
    only what the fit says: its drops are unknown here."""
    defaults = {p.name: p.default for p in method.params}
    needs = ["calibration"] if method.wants_fit(defaults) else []
    if method.plan is not None:
        try:
            drops = method.plan(defaults, PLAN_DEPTH).drops.values()
        except (ValueError, KeyError):
            drops = ()
        if any(d.score is not None for d in drops):
            needs.append("attention")
    return needs


def render(as_json: bool = False) -> str:
    rows = describe()
    if as_json:
        return json.dumps(rows, indent=2)
    table = [[r["name"], r["kind"], " + ".join(r[k] for k in ("allocation", "token_selection", "scoring"))
              if "scoring" in r else "", ", ".join(r.get("needs", [])) or "-",
              ", ".join(f"{p['name']}={p['default']}" for p in r["params"]) or "-", _short(r["source"])]
             for r in rows]
    return tabulate(table, headers=["method", "kind", "allocation + tokens + scoring", "needs", "parameters",
                                    "source"])


def _short(source: str) -> str:
    """A source file under the working directory, relative to it (the usual case: a checkout)."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return source
