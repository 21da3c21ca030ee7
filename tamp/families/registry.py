"""The family registry: every module of ``tamp.families`` that defines FAMILY, plus plugins (entry-point group
``tamp.families``), and the views the rest of tamp reads (by model_type, tiny and trained builds, HF models).

A checkpoint's family is the one its config claims (``"tamp_family": NAME`` in config.json, for a family of the
same model_type), else the first family in table order with its model_type. So a plugin family may reuse a built-in
family's transformers classes and model_type: its own checkpoints claim it, while every other checkpoint of that
model_type stays the built-in family's (installing a plugin never changes what an existing checkpoint is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import tamp.families as package
from tamp.families.base import Family
from tamp.plugins import Registry

ENTRY_POINT_GROUP = "tamp.families"
# the config.json key by which a checkpoint names its family (needed only where a model_type has several families)
CLAIM_KEY = "tamp_family"


def _builtin_problems(known: dict[str, Family]) -> list[str]:
    """Bugs of the built-in table: two families on one model_type, one short name or one tiny position."""
    out = []
    for what, values in (("model_type", [f.model_type for f in known.values()]),
                         ("registry name", [f.registry_name for f in known.values() if f.registry_name]),
                         ("tiny order", [f.tiny.order for f in known.values() if f.tiny])):
        out += [f"two built-in families share the {what} {v!r}" for v in set(values) if values.count(v) > 1]
    out += [f"family '{f.name}' has an evaluation but no default HF model" for f in known.values()
            if f.evaluation and not (f.registry_name and f.hf_id)]
    return out


def _plugin_problem(family: Family, known: dict[str, Family]) -> str | None:
    taken = {f.registry_name: f.name for f in known.values() if f.registry_name}
    if family.registry_name in taken:
        return f"registry name '{family.registry_name}' is taken by family '{taken[family.registry_name]}'"
    if family.evaluation and not (family.registry_name and family.hf_id) and not family.tiny:
        return "an evaluated family needs a default HF model (registry_name, hf_id) or a tiny build"
    return None


REGISTRY: Registry[Family] = Registry(
    kind="family", package=package.__name__, attribute="FAMILY", group=ENTRY_POINT_GROUP, entry_type=Family,
    with_source=lambda f, source: replace(f, source=source), order=lambda f: (f.order, f.name),
    skip=frozenset({"base", "registry", "defaults"}),
    builtin_problems=_builtin_problems, plugin_problem=_plugin_problem,
)


def families() -> dict[str, Family]:
    """Every family (built-ins, then installed plugins), in table order."""
    return REGISTRY.all()


def get(name: str) -> Family:
    """The family registered under `name`; an unknown name is refused with the list of known ones."""
    return REGISTRY.get(name)


def by_model_type(model_type: str) -> Family | None:
    """The first family in table order whose checkpoints have this model_type (None: no family claims it)."""
    return next((f for f in families().values() if f.model_type == model_type), None)


def _field(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def family_of(config: Any) -> Family | None:
    """The family of a checkpoint with this config (a transformers config, or config.json as a dict): the one it
    claims, else its model_type's first."""
    model_type = _field(config, "model_type")
    claim = _field(config, CLAIM_KEY)
    claimed = families().get(claim) if isinstance(claim, str) else None
    if claimed is not None and claimed.model_type == model_type:
        return claimed
    return by_model_type(model_type)


def depth(config: Mapping[str, Any]) -> int | None:
    """The decoder layers of a checkpoint's language model from its config.json (a dict: checked before any load),
    where its family says the language model's config sits; None when no family claims it or the config omits it
    (the loaded model is checked again)."""
    family = family_of(config)
    return None if family is None else family.depth(config)


def tiny_families() -> tuple[str, ...]:
    """Families with a tiny random build (`tiny-<name>`), in the order they were added: messages, `tamp build-tiny`
    errors, `harness models` and the tests list them in this order."""
    return tuple(f.name for f in sorted((f for f in families().values() if f.tiny), key=lambda f: f.tiny.order))


def trained_families() -> tuple[str, ...]:
    """Families with a trained tiny build shipped in the package (`tiny-trained-<name>`): a few million parameters
    trained on generated picture questions, so pruning it changes scores (a random tiny model scores 0)."""
    return tuple(name for name in tiny_families() if families()[name].tiny.trained)  # type: ignore[union-attr]


def evaluated_families() -> tuple[Family, ...]:
    """Families lmms-eval can run (multimodal: the wrappers need a processor), in `harness models` order."""
    return tuple(sorted((f for f in families().values() if f.evaluation), key=lambda f: f.evaluation.order))
