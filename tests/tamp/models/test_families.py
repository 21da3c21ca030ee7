"""The family registry: one module per family in tamp.families, plugins by entry point, and the views the rest
of tamp reads (names and listing orders as before the registry, model classes as transformers' Auto mappings)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest

from tamp import plugins
from tamp.errors import TampError
from tamp.families import registry
from tamp.families.base import PLUGIN_ORDER, TinyBuild
from tamp.families.llava_next import FAMILY as LLAVA_NEXT

BUILTIN = ("llava", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen2-audio", "qwen2.5-omni", "llama",
           "qwen2", "qwen3-vl", "internvl3", "gemma3", "smolvlm")
NEW_VLMS = ("qwen3-vl", "internvl3", "gemma3", "smolvlm")  # issue 26's families, in their listing order


def test_builtin_families_and_their_listing_orders() -> None:
    assert tuple(registry.families()) == BUILTIN
    assert registry.tiny_families() == ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llama", "qwen2",
                                        "qwen2-audio", "llava-onevision", "qwen2.5-omni", *NEW_VLMS)
    assert registry.trained_families() == ("llava-next",)
    assert [f.name for f in registry.evaluated_families()] == ["llava-next", "llava", "llava-onevision", "qwen2-vl",
                                                               "qwen2.5-vl", "qwen2-audio", "qwen2.5-omni", *NEW_VLMS]
    assert all(Path(f.source).name == f"{f.name.replace('-', '_').replace('.', '_')}.py"
               for f in registry.families().values())
    with pytest.raises(TampError, match=r"^unknown family 'nope'; choose one of: llava, llava-next, llava-onevision"):
        registry.get("nope")


def test_model_class_is_what_the_auto_mapping_loaded_before() -> None:
    """The loader now takes each family's class; for the built-ins it is the class the Auto mapping picked."""
    from transformers.models.auto import modeling_auto

    for family in registry.families().values():
        mapping = (modeling_auto.MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES if family.multimodal
                   else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        assert mapping[family.model_type] == family.model_class, family.name


def test_video_fallbacks_name_a_stock_processor_and_a_stand_in() -> None:
    import transformers

    from tamp import processors

    fallbacks = {f.name: f.video_fallback for f in registry.families().values() if f.video_fallback}
    assert sorted(fallbacks) == ["internvl3", "llava-onevision", "qwen2-vl", "qwen2.5-omni", "qwen2.5-vl", "qwen3-vl"]
    for fallback in fallbacks.values():
        assert hasattr(transformers, fallback.processor_class)
        assert fallback.video_processor in processors._STAND_INS


@pytest.mark.parametrize("family", registry.tiny_families())
def test_each_tiny_model_gets_its_familys_adapter(tiny_model, family: str) -> None:
    from tamp.models.adapters import get_adapter
    from tamp.models.loading import load_model

    row = registry.get(family)
    model = load_model(str(tiny_model(family))).model
    adapter = get_adapter(model)
    assert adapter.family == family and adapter.forward_path == row.forward_path
    assert adapter.language_stack(model).name in {p + ".layers" for p in row.text_model_paths}
    vision = adapter.vision_stack(model)
    assert (vision is not None) == ("image" in row.inputs) and (vision is None or vision.name in row.vision_layer_paths)
    # a media token per input, except LLaVA-NeXT's video (its frames go in as images)
    assert set(adapter.media_token_ids) <= set(row.inputs) and bool(adapter.media_token_ids) == row.multimodal


# a plugin family: LLaVA-NeXT's classes under another name (what examples/family-plugin installs for real)
PLUGIN = replace(LLAVA_NEXT, name="llava-next-other", order=PLUGIN_ORDER, registry_name="llava-next-other",
                 hf_id="org/other", tiny=TinyBuild("tamp.testing.tiny:build_llava_next", "llava-next", PLUGIN_ORDER))
CLASH = replace(PLUGIN, name="llava-next-clash", registry_name="llava-next")
NO_BUILDER = replace(PLUGIN, name="llava-next-nobuilder", registry_name=None, hf_id=None, evaluation=None,
                     tiny=TinyBuild("no_such_module_xyz:build", "llava-next", PLUGIN_ORDER + 1))


@pytest.fixture()
def with_plugins(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """The registry with PLUGIN, CLASH, NO_BUILDER and a broken plugin installed; returns what it warned."""
    eps = [EntryPoint("other", f"{__name__}:PLUGIN", registry.ENTRY_POINT_GROUP),
           EntryPoint("nobuilder", f"{__name__}:NO_BUILDER", registry.ENTRY_POINT_GROUP),
           EntryPoint("clash", f"{__name__}:CLASH", registry.ENTRY_POINT_GROUP),
           EntryPoint("broken", "no_such_module_xyz:FAMILY", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    registry.REGISTRY.clear()
    registry.families()
    yield capsys.readouterr().err
    registry.REGISTRY.clear()


def test_plugins_list_after_the_builtins_and_bad_ones_are_skipped(with_plugins: str) -> None:
    assert tuple(registry.families()) == (*BUILTIN, "llava-next-nobuilder", "llava-next-other")
    assert registry.tiny_families()[-2:] == ("llava-next-other", "llava-next-nobuilder")
    assert registry.families()["llava-next-other"].source.endswith("test_families.py")
    assert "family plugin 'clash' (tests.tamp.models.test_families:CLASH): registry name 'llava-next' is taken by " \
           "family 'llava-next'; skipped" in with_plugins
    assert "family plugin 'broken' (no_such_module_xyz:FAMILY) failed to import (ModuleNotFoundError" in with_plugins


def test_a_tiny_builder_that_cannot_be_imported_is_one_error_line(with_plugins: str, tmp_path: Path) -> None:
    from tamp.testing.tiny import build_tiny

    with pytest.raises(TampError, match=r"^family 'llava-next-nobuilder': its tiny builder 'no_such_module_xyz:build' "
                                        r"cannot be imported \(No module named 'no_such_module_xyz'\)$"):
        build_tiny("llava-next-nobuilder", tmp_path / "out")


def test_a_checkpoint_claims_its_family_else_its_model_type_decides(with_plugins: str) -> None:
    def config(model_type: str, **claim: str) -> SimpleNamespace:
        return SimpleNamespace(model_type=model_type, **claim)

    assert registry.family_of(config("llava_next")).name == "llava-next"  # the built-in stays the default
    assert registry.family_of(config("llava_next", tamp_family="llava-next-other")).name == "llava-next-other"
    # a claim of a family of another model_type, or of one not installed, is not taken
    assert registry.family_of(config("qwen2_vl", tamp_family="llava-next-other")).name == "qwen2-vl"
    assert registry.family_of(config("llava_next", tamp_family="not-installed")).name == "llava-next"
    assert registry.family_of(config("mistral")) is None


NEW_FAMILY = '''
"""mistral: Mistral causal LMs, with a tiny build of the same shape as tamp's tiny Llama."""
from tamp.families.base import Family, TinyBuild


def build(tok):
    from transformers import MistralConfig, MistralForCausalLM
    from tamp.testing.tiny_tokenizers import special_ids

    config = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=len(tok), sliding_window=None,
                           tie_word_embeddings=False, **special_ids(tok, "llama"))
    return MistralForCausalLM(config), None


FAMILY = Family(name="mistral", model_type="mistral", model_class="MistralForCausalLM", order=9,
                text_model_paths=("model",), vision_layer_paths=(),
                tiny=TinyBuild("tamp.families.mistral:build", tokenizer="llama", order=9))
'''


def test_a_new_family_is_one_file(tmp_path: Path) -> None:
    """Drop one file into the families folder (here: a second folder of the package's search path, so the
    checkout is not touched): `tamp build-tiny` builds it and `tamp prune` prunes its tiny model by name."""
    extra_dir = tmp_path / "more_families"
    extra_dir.mkdir()
    (extra_dir / "mistral.py").write_text(NEW_FAMILY)
    out = tmp_path / "artifact"
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["TAMP_CACHE"] = {str(tmp_path / "cache")!r}
        import tamp.families
        tamp.families.__path__.append({str(extra_dir)!r})
        from tamp.cli import main
        assert main(["build-tiny", "--family", "mistral", "--out", {str(tmp_path / "built")!r}]) == 0
        sys.exit(main(["prune", "--model", "tiny-mistral", "--method", "magnitude", "--sparsity", "0.5",
                       "--device", "cpu", "--out", {str(out)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "built" / "config.json").read_text())["model_type"] == "mistral"
    info = json.loads((out / "pruning.json").read_text())
    assert info["model"]["family"] == "mistral" and info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
