"""tamp_qwen3_vl: lmms-eval's qwen3_vl (Qwen3-VL checkpoints) for tamp artifacts.

The stock wrapper imports without qwen-vl-utils (it logs a warning) but then calls its `process_vision_info`
for every request; where that is missing, a replacement stands in that resizes each image to multiples of 32
pixels (patch 16 x merge 2) within the request's pixel bounds, as qwen-vl-utils does, and decodes each video with
decord (`nframes` evenly spread frames, an even count; or `fps` frames a second within 4 .. max_frames), each frame
resized within the request's per-frame bounds, with the metadata (fps, frame indices) the processor's timestamps
need. Its processor is built by `tamp.processors.load_processor` (a numpy video part where torchvision is missing)
with the pixel bounds the stock call passes. Multiple choice goes through the mixin's `loglikelihood` (the stock
one raises NotImplementedError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmms_eval.models.simple.qwen3_vl as stock_qwen3_vl
import numpy as np
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL
from PIL import Image

from harness.wrappers.qwen_vl import _open_image, _QwenVLMixin, media_items
from tamp.processors import qwen_smart_resize

FRAME_FACTOR = 2  # frames come in temporal patches of two
MIN_FRAMES = 4


def _frame_indices(total: int, video_fps: float, item: dict[str, Any]) -> list[int]:
    """Which frames to decode: `nframes` of them, else `fps` a second (4 .. max_frames), an even count, evenly spread."""
    if "nframes" in item:
        wanted = float(item["nframes"])
    else:
        fps = float(item.get("fps", 2.0))
        wanted = min(max(total / video_fps * fps, MIN_FRAMES), float(item.get("max_frames", 768)), total)
    count = max(FRAME_FACTOR, round(wanted / FRAME_FACTOR) * FRAME_FACTOR)
    return [int(round(x)) for x in np.linspace(0, total - 1, count)]


def _video(item: dict[str, Any], factor: int) -> tuple[Any, dict[str, Any]]:
    """A video entry -> ((T, C, H, W) float tensor of sampled, resized frames, their metadata)."""
    import decord
    import torch

    value = item.get("video")
    if not isinstance(value, (str, Path)):
        raise RuntimeError("without qwen-vl-utils, video entries must be file paths")
    reader = decord.VideoReader(str(value).removeprefix("file://"), ctx=decord.cpu(0), num_threads=1)
    total, fps = len(reader), float(reader.get_avg_fps()) or 24.0
    indices = _frame_indices(total, fps, item)
    frames = reader.get_batch(indices).asnumpy()
    low = int(item.get("min_pixels", 128 * factor * factor))
    high = int(item.get("max_pixels", 768 * factor * factor))
    if "total_pixels" in item:  # the clip's budget shared by its frames
        high = max(min(high, int(item["total_pixels"]) * FRAME_FACTOR // len(indices)), int(low * 1.05))
    h, w = qwen_smart_resize(frames.shape[1], frames.shape[2], factor, low, high)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
    metadata = {"total_num_frames": total, "fps": fps, "frames_indices": indices, "height": h, "width": w}
    return torch.from_numpy(resized).permute(0, 3, 1, 2).float(), metadata


def vision_info_without_qwen_vl_utils(conversations: list[Any], return_video_kwargs: bool = False,
                                      image_patch_size: int = 16, return_video_metadata: bool = False,
                                      **_: Any) -> tuple[Any, ...]:
    """`qwen_vl_utils.process_vision_info` as the stock Qwen3-VL wrapper calls it: (images, videos, video kwargs),
    each video a (frames, metadata) pair when `return_video_metadata`."""
    factor = image_patch_size * 2
    images, videos = [], []
    for kind, item in media_items(conversations):
        if kind == "video":
            frames, metadata = _video(item, factor)
            videos.append((frames, metadata) if return_video_metadata else frames)
        else:
            image = _open_image(item.get("image", item.get("image_url"))).convert("RGB")
            h, w = qwen_smart_resize(image.height, image.width, factor, int(item.get("min_pixels", 64 * 64)),
                                     int(item.get("max_pixels", factor * factor * 1280)))
            images.append(image.resize((w, h), Image.BICUBIC))
    out: tuple[Any, ...] = (images or None, videos or None)
    return (*out, {"do_sample_frames": False}) if return_video_kwargs else out


if getattr(stock_qwen3_vl, "process_vision_info", None) is None:
    stock_qwen3_vl.process_vision_info = vision_info_without_qwen_vl_utils


class TampQwen3VL(_QwenVLMixin, Qwen3_VL):
    """`pretrained` = an artifact directory (or any Qwen3-VL checkpoint, evaluated as dense)."""

    _stock_module = stock_qwen3_vl
