"""Deterministic random images, videos, tones and prompts: calibration for tiny models and smoke runs.

Each multimodal sample carries one item of every medium in ``SYNTHETIC_MEDIA`` for the model type (one image
otherwise): audio for Qwen2-Audio, image + video for LLaVA-OneVision, audio + video (the audio-visual case)
for Qwen2.5-Omni, so every modality's masks and cross terms are exercised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from tamp.calibration.chat import render
from tamp.calibration.media import media_modalities, synthetic_audio, synthetic_video

# model_type -> media in each synthetic sample (default: one image)
SYNTHETIC_MEDIA: dict[str, tuple[str, ...]] = {
    "qwen2_audio": ("audio",),
    "llava_onevision": ("image", "video"),
    "qwen2_5_omni": ("audio", "video"),
}
SYNTHETIC_VIDEO_FRAMES = 4

_WORDS = ("red blue green small large cat dog tree house car river sky cloud bird road light dark "
          "what where which how many color shape left right top bottom image picture shows describe").split()


def synthetic_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Blocks of random colour: cheap, deterministic, and not constant (constant images give degenerate stats)."""
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(_WORDS, size=n)).capitalize() + "."


def synthetic_batches(processor: Any, tokenizer: Any, multimodal: bool, nsamples: int, seqlen: int, seed: int,
                      image_size: int = 64, vocab_size: int | None = None,
                      model_type: str = "") -> list[dict[str, torch.Tensor]]:
    """`nsamples` one-sample batches: media + question + answer for multimodal models, else random text."""
    rng = np.random.default_rng(seed)
    media = SYNTHETIC_MEDIA.get(model_type, ("image",))
    if multimodal:
        accepted = media_modalities(processor)
        media = tuple(m for m in media if m in accepted) or accepted[:1]
    batches = []
    for _ in range(nsamples):
        if multimodal:
            # draw order (question, answer, then media) keeps the image-only families' data as it always was
            question, answer = _sentence(rng, 8), _sentence(rng, 12)
            images = [synthetic_image(rng, image_size)] if "image" in media else []
            videos = [synthetic_video(rng, SYNTHETIC_VIDEO_FRAMES, image_size)] if "video" in media else []
            audio = []
            if "audio" in media:
                audio = [synthetic_audio(rng, int(processor.feature_extractor.sampling_rate))]
            items = [{"type": kind} for kind, got in (("image", images), ("video", videos), ("audio", audio)) if got]
            messages = [
                {"role": "user", "content": [*items, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
            metadata = [{"total_num_frames": SYNTHETIC_VIDEO_FRAMES, "fps": 2.0,
                         "frames_indices": list(range(SYNTHETIC_VIDEO_FRAMES))}] if videos else None
            batches.append(render(processor, tokenizer, messages, images, videos, audio, metadata))
        else:
            words = _sentence(rng, max(4, seqlen))  # at least one token a word: enough for seqlen tokens
            # the tokenizer stops at seqlen tokens (the same ids as cutting the whole sentence): it never sees the
            # ~2.3 tokens a word of the full sentence, which ran past small models' model_max_length and warned
            ids = tokenizer(words, return_tensors="pt", add_special_tokens=False, truncation=True,
                            max_length=seqlen)["input_ids"]
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches
