"""A tiny multimodal model and one image prompt per family, for the token-method tests."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tamp.models.adapters import get_adapter

FAMILIES = ("llava", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl3", "gemma3", "smolvlm")
YOPO_FAMILIES = tuple(f for f in FAMILIES if f != "gemma3")  # Gemma 3 refuses YOPO (docs/models.md)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """family -> (model, processor inputs, media token ids), cached per module."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            path = tiny_model(family)
            model = AutoModelForImageTextToText.from_pretrained(path).eval()
            proc = load_processor(path)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
            prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            image = Image.new("RGB", (64, 64), (200, 30, 30))
            image.paste((20, 180, 40), (0, 0, 32, 32))
            inputs = dict(proc(text=[prompt], images=[image], return_tensors="pt"))
            media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
            cache[family] = (model, inputs, media)
        return cache[family]

    return get


def attn(model, implementation: str):
    model.set_attn_implementation(implementation)
    return model


__all__ = ["FAMILIES", "YOPO_FAMILIES", "attn", "torch"]


# a batch with mixed image sizes and prompt lengths (left-padded, as generation pads): (width, height), question
NESTED_IMAGES = ("gemma3", "smolvlm")
BATCH_ITEMS = (((64, 64), "What is red?"), ((96, 48), "Describe the picture in detail please."),
               ((40, 80), "Hi"), ((56, 56), "Which colour is in the corner of this picture?"))


@pytest.fixture(scope="module")
def loaded_batch(tiny_model):
    """family -> (model, batch inputs of `size` samples, [each sample's own inputs], media token ids): the samples
    cycle through BATCH_ITEMS, so one batch mixes image sizes (a different number of visual tokens per sample)."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    cache: dict[tuple[str, int], tuple] = {}

    def get(family: str, size: int = 8):
        if (family, size) not in cache:
            path = tiny_model(family)
            model = AutoModelForImageTextToText.from_pretrained(path).eval()
            proc = load_processor(path)
            proc.tokenizer.padding_side = "left"
            prompts, images = [], []
            for k in range(size):
                (w, h), question = BATCH_ITEMS[k % len(BATCH_ITEMS)]
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
                prompts.append(proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
                image = Image.new("RGB", (w, h), (200, 30 + 20 * k, 30))
                image.paste((20, 180, 40), (0, 0, w // 2, h // 2))
                images.append(image)
            # Gemma 3's and SmolVLM's processors take a batch's images as one list per sample
            per_sample = [[i] for i in images] if family in NESTED_IMAGES else images
            batch = dict(proc(text=prompts, images=per_sample, return_tensors="pt", padding=True))
            singles = [dict(proc(text=[p], images=[i], return_tensors="pt")) for p, i in zip(prompts, images)]
            media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
            cache[(family, size)] = (model, batch, singles, media)
        return cache[(family, size)]

    return get
