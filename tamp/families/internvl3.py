"""InternVL3 (transformers' native `-hf` conversions): an InternViT tower, pixel shuffle (each LM token is a 2 x 2
merge of patches), dynamic tiles (an image cropped to up to 12 tiles plus a thumbnail), a Qwen2.5 language model.

Image only: the stock video processor needs torchvision, and InternVL feeds a video's frames as images (one tile
each, the same image token), so a video is nothing the token methods could tell apart from a row of images. The
numpy video stand-in is named only so that the stock processor can be built without torchvision.
"""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild, VideoFallback
from tamp.families.defaults import IMAGE_TASKS, SHAREGPT4V, SMOKE_TASKS, VLM_TEXT_PATHS

FAMILY = Family(
    name="internvl3", model_type="internvl", model_class="InternVLForConditionalGeneration", order=11,
    inputs=("image",), registry_name="internvl3-8b", hf_id="OpenGVLab/InternVL3-8B-hf",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=("model.vision_tower.encoder.layer",),
    video_fallback=VideoFallback("InternVLProcessor", "InternVLVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny_internvl3:build_internvl3", tokenizer="internvl3", order=11),
    evaluation=Evaluation("tamp_internvl3", SHAREGPT4V, IMAGE_TASKS, SMOKE_TASKS, order=11),
)
