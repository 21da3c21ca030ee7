"""LLaVA-format JSON (the ShareGPT4V subset of LLaVA-NeXT-Data) plus an image folder.

Sample choice follows the released TAMP code: numpy's legacy RandomState(seed).choice without
replacement, one whole conversation per sample, batch size 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tamp.calibration.chat import render, to_messages
from tamp.errors import TampError


def parse_llava_spec(spec: str) -> tuple[Path, Path]:
    """`FILE.json` or `FILE.json:IMAGE_DIR` (default image folder: the JSON's folder)."""
    if ":" in spec and not spec.endswith(".json"):
        json_part, image_dir = spec.rsplit(":", 1)
        return Path(json_part), Path(image_dir)
    path = Path(spec)
    return path, path.parent


def load_llava_json(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TampError(f"calibration file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TampError(f"calibration file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list) or not data:
        raise TampError(f"calibration file {path} holds no samples (expected a non-empty JSON list)")
    for i, sample in enumerate(data):
        if not isinstance(sample, dict) or not isinstance(sample.get("conversations"), list) or not sample["conversations"]:
            raise TampError(f"calibration sample {i} in {path} has no 'conversations' list")
    return data


def llava_batches(spec: str, processor: Any, tokenizer: Any, nsamples: int, seed: int) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Draw `nsamples` conversations with `seed` and render each with the model's processor."""
    json_path, image_dir = parse_llava_spec(spec)
    data = load_llava_json(json_path)
    n = min(nsamples, len(data))
    order = np.random.RandomState(seed).choice(len(data), n, replace=False)
    batches, without_media = [], 0
    for index in order:
        sample = data[int(index)]
        names = sample.get("image") or []
        names = [names] if isinstance(names, str) else list(names)
        images = []
        for name in names:
            image_path = image_dir / name
            if not image_path.is_file():
                raise TampError(f"image '{name}' of calibration sample {sample.get('id', index)} not found under {image_dir}")
            images.append(Image.open(image_path).convert("RGB"))
        if not images:
            without_media += 1
        messages = to_messages(sample["conversations"], len(images))
        batches.append(render(processor, tokenizer, messages, images))
    details = {"json": str(json_path), "image_dir": str(image_dir), "available": len(data), "drawn": n,
               "indices": [int(i) for i in order], "samples_without_media": without_media}
    return batches, details
