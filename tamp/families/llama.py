"""Llama causal LMs (text only): pruned with `tamp prune`; lmms-eval's wrappers need a processor, so no evaluation."""

from __future__ import annotations

from tamp.families.base import Family, TinyBuild

FAMILY = Family(
    name="llama", model_type="llama", model_class="LlamaForCausalLM", order=7,
    text_model_paths=("model",), text_config_paths=("",), vision_layer_paths=(),
    tiny=TinyBuild("tamp.testing.tiny:build_llama", tokenizer="llama", order=4),
)
