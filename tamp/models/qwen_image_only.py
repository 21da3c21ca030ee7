"""Qwen-VL processors without a video part, and making their saved files name the stock processor.

The stock Qwen2-VL / Qwen2.5-VL processors list ``video_processor`` among their parts, and transformers' video
processors need torchvision. The stand-ins here declare only ``(image_processor, tokenizer)``, so images and text
work on a torchvision-free install; the tiny Qwen-VL builds (``tamp.testing.tiny``) save through them.

They live here, not with the tiny builders, because the save path needs them too: ``tamp.artifacts`` calls
``restore_stock_processor_files`` whenever it saves a stand-in, so that an artifact never names a class that only
tamp has. The library must not import the test-model builders to do that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor

from tamp.processors import CLIP_MEAN, CLIP_STD

__all__ = [
    "IMAGE_ONLY_PROCESSORS",
    "QWEN_MIN_PIXELS",
    "QWEN_VIDEO_MAX_PIXELS",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "restore_stock_processor_files",
]

# Pixel bounds of the video processor written beside a stand-in. Stand-ins are only built for the tiny Qwen-VL
# checkpoints, so these are theirs (patch 14 x merge 2: one LM token per 28 x 28 pixels; at most 16 tokens per
# frame pair); tamp.testing.tiny reads them from here so that the two cannot drift apart.
QWEN_MIN_PIXELS = 56 * 56
QWEN_VIDEO_MAX_PIXELS = 28 * 28 * 16


class _QwenImageOnlyInit:
    """``__init__`` for Qwen-VL processors that have no video processor.

    The stock processors list ``video_processor`` among their parts, and video processors
    need torchvision; these subclasses declare only ``(image_processor, tokenizer)`` so
    images and text work on a torchvision-free install. Videos are not supported; they are
    only what the older tiny Qwen-VL builders save through (``load_processor`` now returns the
    stock class with a numpy video processor instead).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageOnlyProcessor(_QwenImageOnlyInit, Qwen2VLProcessor):
    """Qwen2-VL processor for images and text only (no torchvision needed)."""


class Qwen2_5_VLImageOnlyProcessor(_QwenImageOnlyInit, Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only (no torchvision needed)."""


# model_type -> (stock processor class name, torchvision-free stand-in)
IMAGE_ONLY_PROCESSORS: dict[str, tuple[str, type[ProcessorMixin]]] = {
    "qwen2_vl": ("Qwen2VLProcessor", Qwen2VLImageOnlyProcessor),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", Qwen2_5_VLImageOnlyProcessor),
}


def _qwen_video_processor_dict() -> dict[str, Any]:
    """What a ``Qwen2VLVideoProcessor`` would save (it cannot be built without torchvision)."""
    return {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_VIDEO_MAX_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }


def _rewrite_json(path: Path, updates: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def restore_stock_processor_files(out: Path, model_type: str) -> None:
    """Make the saved processor files name the stock Qwen processor and carry a video config."""
    stock_name = IMAGE_ONLY_PROCESSORS[model_type][0]
    _rewrite_json(
        out / "processor_config.json",
        {"processor_class": stock_name, "video_processor": _qwen_video_processor_dict()},
    )
    _rewrite_json(out / "tokenizer_config.json", {"processor_class": stock_name})
