"""tamp_qwen2_vl / tamp_qwen2_5_vl: lmms-eval's qwen2_vl and qwen2_5_vl for tamp artifacts.

Two gaps of a torchvision-free install are filled here (a GPU install with torchvision and
qwen-vl-utils keeps the stock behaviour):
- the stock processor always builds a video processor, which needs torchvision: the wrappers build
  it through `tamp.processors.load_processor`, with the pixel bounds the stock call passes;
- `qwen_vl_utils.process_vision_info` imports torchvision: when it is missing, a replacement stands in that
  resizes images with the same rule and decodes videos with decord (frames sampled at 2 fps, 4 to 768 of
  them, an even count, as qwen-vl-utils does; each frame resized within the video pixel bounds).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmms_eval.models.simple.qwen2_5_vl as stock_qwen2_5_vl
import lmms_eval.models.simple.qwen2_vl as stock_qwen2_vl
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
from lmms_eval.models.simple.qwen2_vl import Qwen2_VL
from PIL import Image

from harness.wrappers.common import TampWrapperMixin, patched, pick_device
from tamp.calibration.media import decode_video
from tamp.processors import load_processor, qwen_smart_resize

FACTOR = 28  # patch 14 x spatial merge 2: one language-model token per 28 x 28 pixels


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """The size Qwen-VL resizes an image to: multiples of `factor`, area within [min_pixels, max_pixels]."""
    return qwen_smart_resize(height, width, factor, min_pixels, max_pixels)


def _open_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str) and value.startswith("data:image"):
        return Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1])))
    if isinstance(value, str):
        return Image.open(Path(value.removeprefix("file://")))
    raise ValueError(f"unsupported image input of type {type(value).__name__}")


VIDEO_MIN_PIXELS = 128 * 28 * 28  # qwen-vl-utils' defaults for video frames
VIDEO_MAX_PIXELS = 768 * 28 * 28


def _video_frames(item: dict[str, Any]) -> Any:
    """A video entry -> (T, C, H, W) float tensor of sampled, resized frames (what qwen-vl-utils returns)."""
    from types import SimpleNamespace

    import numpy as np
    import torch


    value = item.get("video")
    if not isinstance(value, (str, Path)):
        raise RuntimeError("without torchvision, video entries must be file paths")
    sampling = SimpleNamespace(video_processor=SimpleNamespace(
        temporal_patch_size=2, fps=item.get("fps", 2.0), min_frames=item.get("min_frames", 4),
        max_frames=item.get("max_frames", 768)))
    frames, _ = decode_video(Path(str(value).removeprefix("file://")), sampling)
    h, w = smart_resize(frames.shape[1], frames.shape[2], item.get("min_pixels", VIDEO_MIN_PIXELS),
                        item.get("max_pixels", VIDEO_MAX_PIXELS))
    resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).float()


def media_items(conversations: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("video" | "image", entry) for every media entry of one conversation or a list of them, in order: what
    `qwen_vl_utils.process_vision_info` reads."""
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    for messages in conversations:
        for message in messages:
            content = message.get("content")
            for item in content if isinstance(content, list) else []:
                if "video" in item or item.get("type") == "video":
                    yield "video", item
                elif "image" in item or "image_url" in item:
                    yield "image", item


def vision_info_without_torchvision(conversations: list[Any], **_: Any) -> tuple[list[Image.Image] | None, list[Any] | None]:
    """`qwen_vl_utils.process_vision_info` without torchvision: decode and resize every image and video entry."""
    images, videos = [], []
    for kind, item in media_items(conversations):
        if kind == "video":
            videos.append(_video_frames(item))
        else:
            image = _open_image(item.get("image", item.get("image_url"))).convert("RGB")
            h, w = smart_resize(image.height, image.width, item.get("min_pixels", 56 * 56),
                                item.get("max_pixels", 28 * 28 * 1280))
            images.append(image.resize((w, h), Image.BICUBIC))
    return (images or None), (videos or None)


for _module in (stock_qwen2_vl, stock_qwen2_5_vl):
    if getattr(_module, "process_vision_info", None) is None:
        _module.process_vision_info = vision_info_without_torchvision


class _ProcessorLoader:
    """Stands in for AutoProcessor inside the stock wrappers' __init__."""

    @staticmethod
    def from_pretrained(path: str, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs: Any) -> Any:

        processor = load_processor(path, revision=kwargs.get("revision"))
        image_processor = processor.image_processor
        size = dict(getattr(image_processor, "size", None) or {})
        if min_pixels:
            size["shortest_edge"] = min_pixels
            if hasattr(image_processor, "min_pixels"):
                image_processor.min_pixels = min_pixels
        if max_pixels:
            size["longest_edge"] = max_pixels
            if hasattr(image_processor, "max_pixels"):
                image_processor.max_pixels = max_pixels
        image_processor.size = size
        return processor


class _QwenVLMixin(TampWrapperMixin):
    _stock_module: Any = None  # the lmms-eval module whose AutoProcessor is swapped for our loader

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        dev = pick_device(device)
        with patched(self._stock_module, "AutoProcessor", _ProcessorLoader):
            super().__init__(pretrained=pretrained, device=dev, device_map=device_map or dev, **kwargs)
        # the stock loop batches with padding=True: left padding, as generation needs (batch size 1 pads nothing)
        self.processor.tokenizer.padding_side = "left"
        self._tamp_after_load()

    def _mc_prompt(self, context: str, n_images: int) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _mc_processor(self) -> Any:
        return self.processor


class TampQwen2VL(_QwenVLMixin, Qwen2_VL):
    """`pretrained` = an artifact directory (or any Qwen2-VL checkpoint, evaluated as dense)."""

    _stock_module = stock_qwen2_vl


class TampQwen2_5VL(_QwenVLMixin, Qwen2_5_VL):
    """`pretrained` = an artifact directory (or any Qwen2.5-VL checkpoint, evaluated as dense)."""

    _stock_module = stock_qwen2_5_vl
