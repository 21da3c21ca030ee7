"""`tamp methods` (and `harness methods`): every registered method with its kind, composition, needs,
parameters and defaults, and the file that defines it; as a text table or JSON. Below the table, each token
method that reads attention says which and how it gets it when the kernel (sdpa, flash attention) returns no
weights (`TokenMethod.attention`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tamp.errors import TampError
from tamp.families.registry import depth, family_of
from tamp.methods.base import QuantMethod, TokenMethod, WeightMethod
from tamp.methods.registry import all_methods, compose_parts
from tamp.models.sources import disk_config

# the depth a token method's plan is read at for its needs: the paper's 8B models' 32 decoder layers
PLAN_DEPTH = 32


def runs_on(method: TokenMethod, model: str) -> bool:
    """Whether the token method, at its defaults, runs on `model` (from its config.json on disk: family, depth and
    the method's own config rule), as `harness run` decides before loading."""
    from tamp.token_transform import TokenTransform

    config = disk_config(model)
    if config is None:
        raise TampError(f"tamp methods --for {model}: no config.json of that model on disk (a local folder, a tiny "
                        "or shipped build, or the Hugging Face cache); build or download it first")
    family = family_of(config)
    if family is None:
        raise TampError(f"tamp methods --for {model}: its config.json is of no registered family")
    return TokenTransform.build(method.name, {}).model_problem(family.name, depth(config), config) is None


def describe(model: str | None = None) -> list[dict[str, Any]]:
    """One plain dict per method, in table order; with `model`, the token methods that cannot run on it left out."""
    rows = []
    for method in all_methods().values():
        if model is not None and isinstance(method, TokenMethod) and not runs_on(method, model):
            continue
        row: dict[str, Any] = {"name": method.name, "kind": method.kind, "label": method.label,
                               "order": method.order, "summary": method.summary, "source": method.source}
        if isinstance(method, WeightMethod):
            parts = compose_parts(method.allocation, method.token_selection, method.scoring, nm_pattern=False)
            needs = parts.needs.names() if not method.keeps_every_weight else []
            row.update(method.composition(), needs=needs, keeps_every_weight=method.keeps_every_weight)
        elif isinstance(method, TokenMethod):
            row["needs"] = token_needs(method)
            row["attention"] = method.attention
        elif isinstance(method, QuantMethod) and method.quantize is not None:
            row["needs"] = method.quantize.needs.names()
        row["params"] = [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                          **({"choices": list(p.choices)} if p.choices else {})} for p in method.params]
        rows.append(row)
    return rows


def token_needs(method: TokenMethod) -> list[str]:
    """What a token method needs at its defaults, read from its declaration: calibration data when it fits
    something at prune time (`fit` / `needs_fit`), attention when a drop of its plan asks for an attention
    score, and what its installs name in their `needs`. A plan that cannot be drawn without a model (values
    fitted or read from the model's layers) shows only what the fit says: its drops are unknown here."""
    defaults = {p.name: p.default for p in method.params}
    needs = ["calibration"] if method.wants_fit(defaults) else []
    if method.plan is not None:
        try:
            plan = method.plan(defaults, PLAN_DEPTH)
            drops, installs = plan.drops.values(), plan.installs
        except (ValueError, KeyError):
            drops, installs = (), ()
        if any(d.score is not None for d in drops):
            needs.append("attention")
        # an install may name what it reads (the vision encoder's [CLS] attention: VisionZip, VisPruner)
        needs += [n for part in installs for n in getattr(part, "needs", ()) if n not in needs]
    return needs


def render(as_json: bool = False, model: str | None = None) -> str:
    rows = describe(model)
    if as_json:
        return json.dumps(rows, indent=2)
    table = [[r["name"], r["kind"], " + ".join(r[k] for k in ("allocation", "token_selection", "scoring"))
              if "scoring" in r else "", ", ".join(r.get("needs", [])) or "-",
              ", ".join(f"{p['name']}={p['default']}" for p in r["params"]) or "-", _short(r["source"])]
             for r in rows]
    text = tabulate(table, headers=["method", "kind", "allocation + tokens + scoring", "needs", "parameters",
                                    "source"])
    reads = [f"  {r['name']}: {r['attention']}" for r in rows if r.get("attention")]
    if reads:
        text += "\n\nAttention the token methods read (under sdpa / flash attention, where no weights are returned):\n"
        text += "\n".join(reads)
    return text


def _short(source: str) -> str:
    """A source file under the working directory, relative to it (the usual case: a checkout)."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return source
