"""LLaVA-NeXT: LLaVA with any-resolution tiles (the paper's model: llava-hf's conversion of llama3-llava-next-8b).

Its tiny build is also the one trained and shipped as `tiny-trained-llava-next` (tamp/testing/trained/).
"""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild
from tamp.families.defaults import (
    IMAGE_TASKS,
    LLAVA_VISION_PATHS,
    SHAREGPT4V,
    SMOKE_TASKS,
    VIDEO_TASKS,
    VLM_TEXT_PATHS,
)

FAMILY = Family(
    name="llava-next", model_type="llava_next", model_class="LlavaNextForConditionalGeneration", order=1,
    inputs=("image", "video"), registry_name="llava-next", hf_id="llava-hf/llama3-llava-next-8b-hf",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=LLAVA_VISION_PATHS,
    tiny=TinyBuild("tamp.testing.tiny:build_llava_next", tokenizer="llava-next", order=1, trained=True),
    evaluation=Evaluation("tamp_llava_hf", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS, order=0),
)
