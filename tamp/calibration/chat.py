"""Render one conversation with the model's own processor and chat template."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from PIL import Image

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = "<image>"
# LLaVA / VideoLLaMA2 / AVInstruct placeholders -> chat content item type
PLACEHOLDERS = {"<image>": "image", "<video>": "video", "<audio>": "audio"}
_SPLIT = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")")


def to_messages(conversations: list[dict[str, str]], n_images: int, n_videos: int = 0,
                n_audios: int = 0) -> list[dict[str, Any]]:
    """LLaVA-format turns -> chat messages; `<image>` / `<video>` / `<audio>` placeholders become media items.

    Placeholders beyond the sample's media are dropped; media the text never references go in front of the
    first user turn (images, then videos, then audio), as LLaVA does for images.
    """
    available = {"image": n_images, "video": n_videos, "audio": n_audios}
    placed = {"image": 0, "video": 0, "audio": 0}
    messages = []
    for turn in conversations:
        role = ROLE_MAP.get(turn.get("from", turn.get("role", "")))
        if role is None:
            raise ValueError(f"unknown speaker '{turn.get('from')}' (expected human/gpt)")
        text = str(turn.get("value", turn.get("content", "")))
        pieces = _SPLIT.split(text)
        has_placeholder = len(pieces) > 1
        content: list[dict[str, Any]] = []
        for piece in pieces:
            kind = PLACEHOLDERS.get(piece)
            if kind is not None:
                if placed[kind] < available[kind]:
                    content.append({"type": kind})
                    placed[kind] += 1
                continue
            piece = piece.strip("\n") if has_placeholder else piece
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": content})
    missing = [{"type": kind} for kind in ("image", "video", "audio") for _ in range(available[kind] - placed[kind])]
    if missing:
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] = missing + first_user["content"]
    return messages


def render(processor: Any, tokenizer: Any, messages: list[dict[str, Any]], images: list[Image.Image],
           videos: list[np.ndarray] | None = None, audio: list[np.ndarray] | None = None,
           video_metadata: list[dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """Whole conversation (questions and answers) -> model inputs for one sample."""
    if images or videos or audio:
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
            if video_metadata is not None:
                kwargs["video_metadata"] = video_metadata
        if audio:
            kwargs["audio"] = audio
            kwargs["sampling_rate"] = processor.feature_extractor.sampling_rate
        inputs = processor(text=[prompt], return_tensors="pt", **kwargs)
    else:
        text_messages = [
            {"role": m["role"], "content": "".join(c.get("text", "") for c in m["content"])} for m in messages
        ]
        ids = tokenizer.apply_chat_template(text_messages, tokenize=True, add_generation_prompt=False,
                                            return_tensors="pt", return_dict=True)
        inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    return {k: v for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}
