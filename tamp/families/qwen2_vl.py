"""Qwen2-VL: a ViT with 2 x 2 patch merging, 3-D multimodal RoPE, images and video."""

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
    name="qwen2-vl", model_type="qwen2_vl", model_class="Qwen2VLForConditionalGeneration", order=3,
    inputs=("image", "video"), registry_name="qwen2-vl", hf_id="Qwen/Qwen2-VL-7B-Instruct",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=QWEN_VISION_PATHS,
    video_fallback=VideoFallback("Qwen2VLProcessor", "QwenVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny:build_qwen2_vl", tokenizer="qwen2-vl", order=2),
    evaluation=Evaluation("tamp_qwen2_vl", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS, order=3),
)
