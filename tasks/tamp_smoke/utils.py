"""lmms-eval hooks of the tamp smoke tasks: draw the picture of a row, build the prompt, score."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

from harness.task_hooks import doc_to_text, normalize, process_results  # shared with the other picture task

__all__ = ["doc_to_text", "doc_to_visual", "normalize", "process_results", "render"]  # the names the task yamls call

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
