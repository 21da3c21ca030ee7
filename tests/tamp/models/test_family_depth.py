"""The family registry owns where a checkpoint's config.json keeps its language model's depth (`depth`): each
family says where its language model's config sits, and `harness run` / `tamp prune` read the depth through it,
before any model is loaded."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest

from tamp import plugins
from tamp.families import registry
from tamp.families.base import PLUGIN_ORDER
from tamp.families.llava_next import FAMILY as LLAVA_NEXT


@pytest.mark.parametrize("name", list(registry.families()))
def test_each_family_reads_the_depth_where_transformers_puts_it(name: str) -> None:
    """Against transformers' own answer: the decoder config `get_text_config` finds, set to a depth no other part
    of the config has (Qwen2.5-Omni's talker and token2wav have layers of their own)."""
    import transformers

    family = registry.get(name)
    config = getattr(transformers, family.model_class).config_class()
    config.get_text_config(decoder=True).num_hidden_layers = 7
    as_json = json.loads(config.to_json_string())
    assert registry.depth(as_json) == 7


def test_layouts_beside_the_current_one() -> None:
    # Qwen2-VL checkpoints written before transformers nested a text_config keep the depth at the top level
    assert registry.depth({"model_type": "qwen2_vl", "num_hidden_layers": 28}) == 28
    assert registry.depth({"model_type": "qwen2_vl", "text_config": {"num_hidden_layers": 36}, "num_hidden_layers": 1}) == 36
    # Qwen2.5-Omni: the thinker's language model, never the talker's layers
    assert registry.depth({"model_type": "qwen2_5_omni", "talker_config": {"num_hidden_layers": 24},
                           "thinker_config": {"text_config": {"num_hidden_layers": 28}}}) == 28
    # a text-only LM at the top level only: a text_config there is not its language model
    assert registry.depth({"model_type": "llama", "num_hidden_layers": 16, "text_config": {"num_hidden_layers": 3}}) == 16


@pytest.mark.parametrize("config", [
    {"model_type": "mistral", "num_hidden_layers": 32},  # no family claims it
    {"model_type": "llava_next", "text_config": {}},  # the depth left to the default: known only once loaded
    {"model_type": "llava_next", "text_config": {"num_hidden_layers": True}},
    {"model_type": "llava_next", "text_config": {"num_hidden_layers": "32"}},
    {"model_type": "qwen2_5_omni", "thinker_config": "broken"},
    {"num_hidden_layers": 4},
], ids=["unknown-family", "omitted", "bool", "text", "not-a-mapping", "no-model-type"])
def test_no_depth_when_the_config_does_not_say(config: dict) -> None:
    assert registry.depth(config) is None


# a plugin family with LLaVA-NeXT's classes and its language model's config under a key of its own
NESTED = replace(LLAVA_NEXT, name="llava-next-nested", order=PLUGIN_ORDER, registry_name=None, hf_id=None,
                 evaluation=None, tiny=None, text_config_paths=("llm.config",))


@pytest.fixture()
def with_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [EntryPoint("nested", f"{__name__}:NESTED", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    registry.REGISTRY.clear()
    yield
    registry.REGISTRY.clear()


def test_a_family_declares_its_layout_and_the_harness_reads_it(with_nested: None, tmp_path: Path) -> None:
    """One rule, in the registry: `harness run`'s plan-time depth follows a plugin family's own layout."""
    from harness.run import model_depth

    config = {"model_type": "llava_next", "tamp_family": "llava-next-nested", "llm": {"config": {"num_hidden_layers": 5}},
              "text_config": {"num_hidden_layers": 9}}
    assert registry.depth(config) == 5
    assert registry.depth({**config, "tamp_family": "llava-next"}) == 9  # the built-in's layout for its checkpoints
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_depth(SimpleNamespace(source=str(tmp_path))) == 5
    (tmp_path / "config.json").write_text("{ not json")
    assert model_depth(SimpleNamespace(source=str(tmp_path))) is None
