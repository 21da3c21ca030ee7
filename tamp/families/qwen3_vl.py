"""Qwen3-VL: a ViT with patch 16 and 2 x 2 merging whose DeepStack features are added to the visual tokens after the
first decoder layers, interleaved 3-D multimodal RoPE, images and video (each frame its own timestamped run).

Token methods drop visual tokens with their DeepStack features (tamp.inference.sequence_edit cuts the visual
positions and the features to the tokens kept); each token keeps its own 3-D position.
"""

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
    name="qwen3-vl", model_type="qwen3_vl", model_class="Qwen3VLForConditionalGeneration", order=10,
    inputs=("image", "video"), registry_name="qwen3-vl-8b", hf_id="Qwen/Qwen3-VL-8B-Instruct",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=QWEN_VISION_PATHS,
    video_fallback=VideoFallback("Qwen3VLProcessor", "Qwen3VLVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny_qwen3_vl:build_qwen3_vl", tokenizer="qwen2-vl", order=10),
    evaluation=Evaluation("tamp_qwen3_vl", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS, order=10),
)
