"""tamp.overrides reads the built-in methods' parameters from their source, before torch loads: held equal to
what the registry declares, name and type, so the early `--set` check never refuses what the recipe accepts."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import tamp.overrides as overrides
from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import TOKEN_BUDGET
from tamp.params import RUN_PARAMS
from tamp.recipe import method_params


def test_source_read_fields_are_the_registrys() -> None:
    declared = {p.name: p.type.__name__ for p in (*RUN_PARAMS, TOKEN_BUDGET)}
    declared.update({name: p.type.__name__ for name, (p, _) in method_params().items()})
    assert overrides.declared_fields() == declared
    assert overrides.PLUGIN_GROUP == registry.ENTRY_POINT_GROUP


def test_with_a_plugin_installed_an_unknown_name_is_the_registrys_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TampError, match="unknown config field 'normpow_p'"):
        overrides.precheck(["normpow_p=2"])
    plugin = EntryPoint("normpow", "tamp_normpow:METHOD", overrides.PLUGIN_GROUP)
    monkeypatch.setattr(overrides, "entry_points", lambda group: [plugin] if group == overrides.PLUGIN_GROUP else [])
    overrides.precheck(["normpow_p=2"])  # left to the registry, which imports the plugin
    with pytest.raises(TampError, match="--set amia_k: 'x' is not a valid int"):
        overrides.precheck(["amia_k=x"])  # a built-in field is still checked
