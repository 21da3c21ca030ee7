"""The tiny SmolVLM build (Idefics3 architecture): a SigLIP-like tower, pixel-shuffle connector, Llama text model.

Shaped as HuggingFaceTB/SmolVLM-256M-Instruct, small: the processor splits every image as the real one does (resized
to a longest edge of 2 tiles, cut into up to 2 x 2 tiles of 32 px, plus the whole image as a global tile; the real one:
512 px tiles, up to 4 x 4), each tile is 8 x 8 patches of 4 px that the connector pixel-shuffles (scale 2, the real
one 4) into 4 x 4 = 16 language-model tokens, between the tiles' <fake_token_around_image> / <row_r_col_c> /
<global-img> text tokens. The language model is the shared tiny shape (`tamp.testing.tiny`), under model.text_model.
"""

from __future__ import annotations

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from tamp.models.smolvlm_processor import SmolVLMProcessorNoVideo
from tamp.testing import tiny
from tamp.testing.tiny_tokenizers import SMOLVLM_MAX_TILES, special_ids, token_id

TILE = 32  # px per tile (the vision tower's image_size)
PATCH = 4
SCALE = 2  # pixel shuffle: SCALE x SCALE patches -> one token
TOKENS_PER_TILE = (TILE // PATCH) ** 2 // SCALE ** 2  # 16: a 4 x 4 grid
_VISION: dict = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     image_size=TILE, patch_size=PATCH)
_MEAN = [0.5, 0.5, 0.5]  # SmolVLM normalises to [-1, 1]


def build_smolvlm(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, SmolVLMProcessorNoVideo]:
    text = dict(model_type="llama", **tiny._TEXT_SHAPE, **special_ids(tok, "smolvlm"), vocab_size=len(tok))
    config = SmolVLMConfig(text_config=text, vision_config=_VISION, scale_factor=SCALE,
                           image_token_id=token_id(tok, "<image>"), pad_token_id=tok.pad_token_id,
                           tie_word_embeddings=False)
    image_processor = SmolVLMImageProcessorPil(
        do_resize=True, size={"longest_edge": SMOLVLM_MAX_TILES * TILE}, do_image_splitting=True,
        max_image_size={"longest_edge": TILE}, image_mean=_MEAN, image_std=_MEAN,
    )
    processor = SmolVLMProcessorNoVideo(image_processor, tok, image_seq_len=TOKENS_PER_TILE,
                                        chat_template=tok.chat_template)
    return SmolVLMForConditionalGeneration(config), processor
