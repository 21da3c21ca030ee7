"""lmms-eval hooks of the held-out picture tasks: draw a row's picture, build the prompt, score."""

from __future__ import annotations

from typing import Any

from PIL import Image

from harness.task_hooks import doc_to_text, normalize, process_results  # shared with the other picture task
from tamp.calibration.pictures import render, scene_of

__all__ = ["doc_to_text", "doc_to_visual", "normalize", "process_results"]  # the names the task yamls call


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [render(scene_of(doc))]
