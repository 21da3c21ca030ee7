"""The tiny Gemma 3 (`tiny-gemma3`): a SigLIP tower, 16 soft tokens per image, a 4-layer Gemma 3 text model whose
layers alternate sliding-window (window 24) and global attention.

The window is shorter than the tiny prompt (about 35 tokens), so the sliding layers really cut the past, and
longer than the text after the image, so a token drop inside the image changes what a sliding layer caches: the
token-method tests see both. Pan-and-scan is off (the processor's default): one 32 px view per image.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from tamp.testing.tiny_tokenizers import MAX_LENGTH, special_ids, token_id

IMAGE_SIDE = 32  # 4 x 4 patches of 8 px -> 16 soft tokens (the projector's pooling kernel is 1)
IMAGE_TOKENS = 16
SLIDING_WINDOW = 24
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
_MEAN = (0.5, 0.5, 0.5)
_PROJECTION_STD = 0.05  # soft tokens about as large as the text embeddings (sqrt(64) x 0.02 per channel)


def build_gemma3(tok: PreTrainedTokenizerFast) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    text = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=MAX_LENGTH, rms_norm_eps=1e-6, sliding_window=SLIDING_WINDOW,
        layer_types=list(LAYER_TYPES), tie_word_embeddings=False, **special_ids(tok, "gemma3"),
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                patch_size=8, image_size=IMAGE_SIDE, vision_use_head=False)
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=IMAGE_TOKENS,
        boi_token_index=token_id(tok, "<start_of_image>"), eoi_token_index=token_id(tok, "<end_of_image>"),
        image_token_index=token_id(tok, "<image_soft_token>"), tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_mean=list(_MEAN), image_std=list(_MEAN),
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template,
                                image_seq_length=IMAGE_TOKENS)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers starts the projection at zero: every image token would be the same vector
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=_PROJECTION_STD)
    return model, processor
