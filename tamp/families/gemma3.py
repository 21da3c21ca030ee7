"""Gemma 3 (`gemma3`): a SigLIP tower pooled to 256 soft tokens per image (optionally pan-and-scan crops, each
its own image block), image tokens attending to their own image bidirectionally, and a language model whose
layers are mostly sliding-window (5 local : 1 global, each with its own rotary base)."""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild
from tamp.families.defaults import LLAVA_VISION_PATHS, SHAREGPT4V, SMOKE_TASKS, VLM_TEXT_PATHS

FAMILY = Family(
    name="gemma3", model_type="gemma3", model_class="Gemma3ForConditionalGeneration", order=12, inputs=("image",),
    registry_name="gemma-3-4b", hf_id="google/gemma-3-4b-it",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=LLAVA_VISION_PATHS,
    tiny=TinyBuild("tamp.testing.tiny_gemma3:build_gemma3", tokenizer="gemma3", order=12),
    evaluation=Evaluation("tamp_gemma3", SHAREGPT4V,
                          ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img",
                           "muirbench"),
                          SMOKE_TASKS, order=12),
    refused_token_methods=(("yopo", "its visual-attention and sliced-MLP rewrites are not validated against "
                                    "Gemma 3's blocks (q/k norms, sandwich norms, image blocks); choose another "
                                    "token method"),),
)
