"""The tiny InternVL3 build (`tamp build-tiny --family internvl3`): an InternViT tower of width 32 over 32 px tiles
of 4 px patches (8 x 8 patches, pixel-shuffled to 4 x 4 = 16 LM tokens per tile), images cropped to up to 6 tiles
plus a thumbnail, and the tiny models' common Qwen2 language model. A 64 x 64 image is 2 x 2 tiles + a thumbnail:
80 image tokens in 5 grids of 4 x 4, which is what the token methods' per-tile grids are tested on.
"""

from __future__ import annotations

import torch
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    PreTrainedTokenizerFast,
)

from tamp.processors import InternVLVideoProcessorNumpy
from tamp.testing.tiny import _qwen_text_kwargs
from tamp.testing.tiny_tokenizers import token_id

TILE = 32  # pixels per tile side
PATCH = 4  # pixels per patch side: 8 x 8 patches per tile
DOWNSAMPLE = 0.5  # pixel shuffle: 2 x 2 patches per LM token
TOKENS_PER_TILE = int((TILE // PATCH * DOWNSAMPLE) ** 2)  # 16
MAX_TILES = 6
# InternVL normalises with ImageNet's statistics
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POSITION_STD = 0.2  # spread of the tower's random position embeddings (of the order of its patch embeddings)


def build_internvl3(tok: PreTrainedTokenizerFast) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=TILE, patch_size=PATCH),
        text_config=dict(model_type="qwen2", **_qwen_text_kwargs(tok, "internvl3", mrope=False)),
        image_token_id=token_id(tok, "<IMG_CONTEXT>"),
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=DOWNSAMPLE,
        tie_word_embeddings=False,
    )
    side = {"height": TILE, "width": TILE}
    image_processor = GotOcr2ImageProcessorPil(size=side, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES,
                                               image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    video_processor = InternVLVideoProcessorNumpy(size=side, image_mean=list(IMAGENET_MEAN),
                                                  image_std=list(IMAGENET_STD))
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                  image_seq_length=TOKENS_PER_TILE, chat_template=tok.chat_template)
    model = InternVLForConditionalGeneration(config)
    # transformers initialises InternViT's position embeddings (and CLS token) to zeros: every patch of a flat tile
    # would then be the same token, a tie everywhere for the methods that compare tokens; a trained tower's differ
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        torch.nn.init.normal_(embeddings.position_embeddings, std=POSITION_STD)
        torch.nn.init.normal_(embeddings.cls_token, std=POSITION_STD)
    return model, processor
