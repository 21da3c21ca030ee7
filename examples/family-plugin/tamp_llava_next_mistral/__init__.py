"""LLaVA-NeXT with a Mistral-7B language model (llava-hf/llava-v1.6-mistral-7b-hf) as a tamp family of its own.

Its transformers classes are LLaVA-NeXT's (model_type ``llava_next``), so the family is told apart by name: the
registry names ``llava-next-mistral`` and ``tiny-llava-next-mistral`` are this family's, and so is a checkpoint
whose config.json claims it (``"tamp_family": "llava-next-mistral"``, as the tiny build writes). Every other
``llava_next`` checkpoint stays tamp's built-in ``llava-next`` family.

This module imports neither torch nor transformers: the tiny builder is named by string and imported only when
`tamp build-tiny --family llava-next-mistral` (or a first `tiny-llava-next-mistral` load) builds it.
"""

from __future__ import annotations

from tamp.families.base import PLUGIN_ORDER, Evaluation, Family, TinyBuild
from tamp.families.defaults import IMAGE_TASKS, LLAVA_VISION_PATHS, SHAREGPT4V, SMOKE_TASKS, VLM_TEXT_PATHS

NAME = "llava-next-mistral"

FAMILY = Family(
    name=NAME, model_type="llava_next", model_class="LlavaNextForConditionalGeneration", order=PLUGIN_ORDER,
    inputs=("image",), registry_name=NAME, hf_id="llava-hf/llava-v1.6-mistral-7b-hf",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=LLAVA_VISION_PATHS,
    tiny=TinyBuild("tamp_llava_next_mistral.tiny:build", tokenizer="llava-next", order=PLUGIN_ORDER),
    evaluation=Evaluation("tamp_llava_hf", SHAREGPT4V, IMAGE_TASKS, SMOKE_TASKS, order=PLUGIN_ORDER),
)
