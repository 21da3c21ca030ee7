"""lmms-eval hooks of the tamp smoke tasks: draw the picture of a row, build the prompt, score."""

from __future__ import annotations

import re
from typing import Any

from PIL import Image, ImageDraw, ImageFont

RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 205, 20)}
SIZE = 64


def render(doc: dict[str, Any]) -> Image.Image:
    """The row's picture: its shape in its colour, its word in black underneath (deterministic)."""
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fill = RGB[doc["colour"]]
    box = (16, 4, 48, 36)
    if doc["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif doc["shape"] == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(32, 4), (48, 36), (16, 36)], fill=fill)
    draw.text((SIZE // 2, 50), doc["word"], fill=(0, 0, 0), anchor="mm", font=ImageFont.load_default())
    return img


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [render(doc)]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def normalize(text: str) -> str:
    """Lower case, first line, surrounding spaces and punctuation removed."""
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return re.sub(r"^[\W_]+|[\W_]+$", "", text.lower())


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the normalised answer with the expected word: 1.0 or 0.0."""
    pred = normalize(results[0] if results else "")
    return {"exact_match": float(pred == doc["answer"])}
