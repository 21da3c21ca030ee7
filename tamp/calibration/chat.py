"""Render one conversation with the model's own processor and chat template."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = "<image>"


def to_messages(conversations: list[dict[str, str]], n_images: int) -> list[dict[str, Any]]:
    """LLaVA-format turns -> chat messages; `<image>` placeholders become image content items."""
    messages = []
    placed = 0
    for turn in conversations:
        role = ROLE_MAP.get(turn.get("from", turn.get("role", "")))
        if role is None:
            raise ValueError(f"unknown speaker '{turn.get('from')}' (expected human/gpt)")
        text = str(turn.get("value", turn.get("content", "")))
        content: list[dict[str, Any]] = []
        parts = text.split(IMAGE_PLACEHOLDER)
        for j, part in enumerate(parts):
            if j > 0 and placed < n_images:
                content.append({"type": "image"})
                placed += 1
            part = part.strip("\n") if j > 0 or len(parts) > 1 else part
            if part:
                content.append({"type": "text", "text": part})
        messages.append({"role": role, "content": content})
    # images the text never referenced go in front of the first user turn, as LLaVA does
    if placed < n_images:
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] = [{"type": "image"}] * (n_images - placed) + first_user["content"]
    return messages


def render(processor: Any, tokenizer: Any, messages: list[dict[str, Any]], images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Whole conversation (questions and answers) -> model inputs for one sample."""
    if images:
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        inputs = processor(text=[prompt], images=images, return_tensors="pt")
    else:
        text_messages = [
            {"role": m["role"], "content": "".join(c.get("text", "") for c in m["content"])} for m in messages
        ]
        ids = tokenizer.apply_chat_template(text_messages, tokenize=True, add_generation_prompt=False,
                                            return_tensors="pt", return_dict=True)
        inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    return {k: v for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}
