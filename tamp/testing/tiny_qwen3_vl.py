"""The tiny random Qwen3-VL (`tiny-qwen3-vl`): the shared tiny language model shape, a 3-block vision tower whose
every block feeds DeepStack, and the stock processor with a numpy video part.

DeepStack adds a merged feature of each listed vision block to the visual tokens' states after the first decoder
layers (block k's after layer k): with blocks 0, 1 and 2 listed, layers 0-2 of the 4 receive one, so a token drop
before layer 0, 1 or 2 changes which tokens they land on (what the token-method tests check). Patch 16 x merge 2:
one language-model token per 32 x 32 pixels; a 64 x 64 image gives 4 visual tokens, as the other tiny Qwen models.
The tokenizer is the tiny Qwen2-VL recipe (the same special tokens and ChatML template); the processor writes each
video frame as its own `<t seconds><|vision_start|>...<|vision_end|>` run, as the real one does.
"""

from __future__ import annotations

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from tamp.processors import Qwen3VLVideoProcessorNumpy
from tamp.testing.tiny import _MROPE_SECTION, _TEXT_SHAPE
from tamp.testing.tiny_tokenizers import special_ids, token_id

TOKENIZER = "qwen2-vl"  # the tiny tokenizer recipe (tamp.testing.tiny_tokenizers) it shares
_MEAN = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1]
_FACTOR = 32  # patch 16 x spatial merge 2
_MIN_PIXELS = 64 * 64  # at least 2 x 2 tokens per image
_MAX_PIXELS = _FACTOR * _FACTOR * 64  # at most 64 tokens per image
# a video clip's pixel bounds (frames x frame area): 4 frames of 64 x 96 fit, larger clips shrink to them
_VIDEO_MIN_PIXELS = 2 * 64 * 64
_VIDEO_MAX_PIXELS = 4 * 64 * 128
_VISION: dict = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                     temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0, 1, 2])


def build_qwen3_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    heads = _TEXT_SHAPE["num_attention_heads"]
    text = dict(
        **_TEXT_SHAPE,
        **special_ids(tok, TOKENIZER),
        vocab_size=len(tok),
        head_dim=_TEXT_SHAPE["hidden_size"] // heads,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5, "mrope_section": list(_MROPE_SECTION),
                         "mrope_interleaved": True},
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(**_VISION, out_hidden_size=_TEXT_SHAPE["hidden_size"]),
        image_token_id=token_id(tok, "<|image_pad|>"),
        video_token_id=token_id(tok, "<|video_pad|>"),
        vision_start_token_id=token_id(tok, "<|vision_start|>"),
        vision_end_token_id=token_id(tok, "<|vision_end|>"),
        tie_word_embeddings=False,
    )
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS}, patch_size=16, temporal_patch_size=2,
        merge_size=2, image_mean=_MEAN, image_std=_MEAN,
    )
    video_processor = Qwen3VLVideoProcessorNumpy(
        size={"shortest_edge": _VIDEO_MIN_PIXELS, "longest_edge": _VIDEO_MAX_PIXELS}, patch_size=16,
        temporal_patch_size=2, merge_size=2, image_mean=_MEAN, image_std=_MEAN,
    )
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=tok.chat_template)
    return Qwen3VLForConditionalGeneration(config), processor
