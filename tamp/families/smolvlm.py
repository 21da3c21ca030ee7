"""SmolVLM (Idefics3 architecture): a SigLIP-like tower whose features a pixel-shuffle connector folds into fewer
tokens, a Llama (SmolLM2) language model under model.text_model; the laptop-sized VLM (256M to 2.2B).

Each image is split into up to N x N tiles plus a global (downscaled whole) image; each tile becomes its own run of
image tokens (a square, row-major grid after the pixel shuffle), between text tokens (<fake_token_around_image>,
<row_r_col_c>, <global-img>). Token methods therefore see one group per tile (docs/models.md). Images only: the
stock processor's video path needs num2words and torchvision (`tamp.models.smolvlm_processor`).
"""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild
from tamp.families.defaults import IMAGE_TASKS, SHAREGPT4V, SMOKE_TASKS

FAMILY = Family(
    name="smolvlm", model_type="smolvlm", model_class="SmolVLMForConditionalGeneration", order=13,
    inputs=("image",), registry_name="smolvlm-256m", hf_id="HuggingFaceTB/SmolVLM-256M-Instruct",
    text_model_paths=("model.text_model",), vision_layer_paths=("model.vision_model.encoder.layers",),
    processor_loader="tamp.models.smolvlm_processor:load_smolvlm_processor",
    tiny=TinyBuild("tamp.testing.tiny_smolvlm:build_smolvlm", tokenizer="smolvlm", order=13),
    evaluation=Evaluation("tamp_smolvlm", SHAREGPT4V, IMAGE_TASKS, SMOKE_TASKS, order=13),
)
