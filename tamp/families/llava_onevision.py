"""LLaVA-OneVision: a SigLIP tower, any-resolution images and pooled video frames, a Qwen2 language model."""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild, VideoFallback
from tamp.families.defaults import (
    IMAGE_TASKS,
    LLAVA_VISION_PATHS,
    SHAREGPT4V,
    SMOKE_TASKS,
    SMOKE_VIDEO,
    VIDEO_TASKS,
    VLM_TEXT_PATHS,
)

FAMILY = Family(
    name="llava-onevision", model_type="llava_onevision", model_class="LlavaOnevisionForConditionalGeneration",
    order=2, inputs=("image", "video"), registry_name="llava-onevision", hf_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=LLAVA_VISION_PATHS,
    video_fallback=VideoFallback("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny:build_llava_onevision", tokenizer="llava-onevision", order=7),
    evaluation=Evaluation("tamp_llava_hf", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), (*SMOKE_TASKS, *SMOKE_VIDEO),
                          order=2),
)
