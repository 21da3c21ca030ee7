"""Deterministic random images and prompts: calibration for tiny models and smoke runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from tamp.calibration.chat import render

_WORDS = ("red blue green small large cat dog tree house car river sky cloud bird road light dark "
          "what where which how many color shape left right top bottom image picture shows describe").split()


def synthetic_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Blocks of random colour: cheap, deterministic, and not constant (constant images give degenerate stats)."""
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(_WORDS, size=n)).capitalize() + "."


def synthetic_batches(processor: Any, tokenizer: Any, multimodal: bool, nsamples: int, seqlen: int, seed: int,
                      image_size: int = 64, vocab_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """`nsamples` one-sample batches: an image + question + answer for multimodal models, else random text."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(nsamples):
        if multimodal:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _sentence(rng, 8)}]},
                {"role": "assistant", "content": [{"type": "text", "text": _sentence(rng, 12)}]},
            ]
            batches.append(render(processor, tokenizer, messages, [synthetic_image(rng, image_size)]))
        else:
            words = _sentence(rng, max(4, seqlen))
            ids = tokenizer(words, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :seqlen]
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches
