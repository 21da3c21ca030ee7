"""Qwen2.5-VL: Qwen2-VL with windowed attention in most vision blocks."""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild, VideoFallback
from tamp.families.defaults import (
    IMAGE_TASKS,
    QWEN_VISION_PATHS,
    SHAREGPT4V,
    SMOKE_TASKS,
    VIDEO_TASKS,
    VLM_TEXT_PATHS,
)

FAMILY = Family(
    name="qwen2.5-vl", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration", order=4,
    inputs=("image", "video"), registry_name="qwen2.5-vl", hf_id="Qwen/Qwen2.5-VL-7B-Instruct",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=QWEN_VISION_PATHS,
    video_fallback=VideoFallback("Qwen2_5_VLProcessor", "QwenVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny:build_qwen2_5_vl", tokenizer="qwen2.5-vl", order=3),
    evaluation=Evaluation("tamp_qwen2_5_vl", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS, order=4),
)
