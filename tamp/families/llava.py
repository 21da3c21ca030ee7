"""LLaVA-1.5 (llava-hf conversions): a CLIP tower, one 336 px tile per image, a Llama / Vicuna language model."""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild
from tamp.families.defaults import LLAVA_VISION_PATHS, SHAREGPT4V, SMOKE_TASKS, VLM_TEXT_PATHS

FAMILY = Family(
    name="llava", model_type="llava", model_class="LlavaForConditionalGeneration", order=0, inputs=("image",),
    registry_name="llava-1.5", hf_id="llava-hf/llava-1.5-7b-hf",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=LLAVA_VISION_PATHS,
    tiny=TinyBuild("tamp.testing.tiny:build_llava", tokenizer="llava", order=0),
    evaluation=Evaluation("tamp_llava_hf", SHAREGPT4V,
                          ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img",
                           "gqa"),
                          SMOKE_TASKS, order=1),
)
