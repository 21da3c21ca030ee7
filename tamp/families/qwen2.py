"""Qwen2 causal LMs (text only): pruned with `tamp prune`; lmms-eval's wrappers need a processor, so no evaluation."""

from __future__ import annotations

from tamp.families.base import Family, TinyBuild

FAMILY = Family(
    name="qwen2", model_type="qwen2", model_class="Qwen2ForCausalLM", order=8,
    text_model_paths=("model",), text_config_paths=("",), vision_layer_paths=(),
    tiny=TinyBuild("tamp.testing.tiny:build_qwen2", tokenizer="qwen2", order=5),
)
