"""Video processors that work without torchvision, and ``load_processor`` that uses them when it must.

transformers' video processors (``BaseVideoProcessor``) need torchvision, which cannot be installed next to
this project's CPU torch. Without a video processor the stock Qwen2-VL / Qwen2.5-VL / Qwen2.5-Omni and
LLaVA-OneVision processors cannot even be constructed. The two small classes here redo what those video
processors do for already-decoded frames, with numpy and PIL:

* ``QwenVideoProcessorNumpy``: resize every frame to the Qwen "smart" size (multiples of patch x merge, area
  within the min/max pixel bounds), rescale, normalise, repeat the last frame up to a multiple of the temporal
  patch, and flatten into the ``pixel_values_videos`` / ``video_grid_thw`` layout of ``Qwen2VLVideoProcessor``;
  ``Qwen3VLVideoProcessorNumpy`` is its Qwen3-VL variant (patch 16, pixel bounds over the whole clip);
* ``LlavaOnevisionVideoProcessorNumpy``: resize every frame to the fixed square size, rescale, normalise,
  giving ``pixel_values_videos`` of shape (videos, frames, 3, H, W).

Both only take frames (arrays, tensors or PIL images); decoding and frame sampling are the caller's job
(``tamp.calibration.media``). Resizing is PIL bicubic, where torchvision's antialiased bicubic differs in the
last bits. They save themselves under the stock class name, so a checkpoint written with them loads the
stock processor wherever torchvision is installed; they are used only where it is not.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import transformers.processing_utils
from PIL import Image
from transformers import AutoConfig, AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import make_batched_metadata, make_batched_videos

from tamp.errors import TampError
from tamp.families.base import VideoFallback
from tamp.families.registry import family_of

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "InternVLVideoProcessorNumpy",
    "LlavaOnevisionVideoProcessorNumpy",
    "Qwen3VLVideoProcessorNumpy",
    "QwenVideoProcessorNumpy",
    "load_processor",
    "qwen_smart_resize",
]

# ProcessorMixin checks a video processor against ``transformers.VideoProcessorMixin``, which transformers only
# exports where torchvision is installed; without it no processor that has a video part can be built at all.
# processing_utils looks it up on its own handle of the package, which need not be ``sys.modules["transformers"]``.
for _package in (transformers, transformers.processing_utils.transformers_module):
    if not hasattr(_package, "VideoProcessorMixin"):
        _package.VideoProcessorMixin = VideoProcessorMixin

# CLIP's normalisation, which the Qwen-VL processors use too
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def qwen_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's target size: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height} x {width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _frames_hwc(video: Any) -> np.ndarray:
    """One video -> uint8-or-float (T, H, W, 3) array; channel-first input is transposed."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    arr = np.asarray(video)
    if arr.ndim != 4:
        raise ValueError(f"a video must be 4-D (frames, height, width, channels), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def _to_pil(frame: np.ndarray) -> Image.Image:
    if frame.dtype != np.uint8:  # float frames in [0, 1] (or already 0..255 floats)
        scale = 255.0 if frame.max() <= 1.0 else 1.0
        frame = np.clip(frame * scale + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(frame, "RGB")


class _NumpyVideoProcessor(VideoProcessorMixin):
    """Shared parts: batching, rescale + normalise, saving under the stock class name."""

    stock_type = ""
    image_mean = list(CLIP_MEAN)
    image_std = list(CLIP_STD)
    rescale_factor = 1 / 255
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = False

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["video_processor_type"] = self.stock_type
        return out

    def _normalise(self, frames: list[Image.Image]) -> np.ndarray:
        """PIL frames -> float32 (T, 3, H, W), rescaled and normalised as the stock processors do."""
        arr = np.stack([np.asarray(f, dtype=np.float32) for f in frames])
        if self.do_rescale:
            arr = arr * np.float32(self.rescale_factor)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)
            std = np.asarray(self.image_std, dtype=np.float32)
            arr = (arr - mean) / std
        return arr.transpose(0, 3, 1, 2).astype(np.float32)

    def preprocess(self, videos: Any, **kwargs: Any) -> BatchFeature:
        batch = make_batched_videos(videos)
        if any(isinstance(v, (str, Path)) for v in batch):
            raise ValueError(f"{type(self).__name__} takes decoded frames, not file names; decode the video first")
        frames = [_frames_hwc(v) for v in batch]
        out = self._process(frames, kwargs)
        if kwargs.get("return_metadata"):  # Qwen2.5-VL's processor reads the sampled fps from it
            out["video_metadata"] = make_batched_metadata(frames, kwargs.get("video_metadata"))
        return out

    def _process(self, videos: list[np.ndarray], kwargs: dict[str, Any]) -> BatchFeature:
        raise NotImplementedError


class QwenVideoProcessorNumpy(_NumpyVideoProcessor):
    """``Qwen2VLVideoProcessor`` for decoded frames, without torchvision (Qwen2-VL, Qwen2.5-VL, Qwen2.5-Omni)."""

    stock_type = "Qwen2VLVideoProcessor"
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    fps = 2.0
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, **kwargs: Any) -> None:
        size = dict(kwargs.pop("size", None) or self.size)
        if (low := kwargs.pop("min_pixels", None)) is not None:
            size["shortest_edge"] = low
        if (high := kwargs.pop("max_pixels", None)) is not None:
            size["longest_edge"] = high
        super().__init__(size=size, **kwargs)

    def _process(self, videos: list[np.ndarray], kwargs: dict[str, Any]) -> BatchFeature:
        size = dict(kwargs.get("size") or self.size)
        low = kwargs.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
        high = kwargs.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
        p, m, tp = int(self.patch_size), int(self.merge_size), int(self.temporal_patch_size)
        patches, grids = [], []
        for video in videos:
            t, h, w = video.shape[:3]
            if t == 0:
                raise ValueError("a video has no frames")
            rh, rw = self._frame_size(t, h, w, p * m, int(low), int(high))
            frames = [_to_pil(f) for f in video]
            if self.do_resize:
                frames = [f.resize((rw, rh), Image.BICUBIC) for f in frames]
            arr = self._normalise(frames)  # (T, C, H, W)
            if pad := -arr.shape[0] % tp:
                arr = np.concatenate([arr, np.repeat(arr[-1:], pad, axis=0)])
            flat, grid = qwen_patchify(arr, p, m, tp)
            patches.append(flat)
            grids.append(grid)
        data = {"pixel_values_videos": torch.from_numpy(np.concatenate(patches)),
                "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
        return BatchFeature(data, tensor_type=kwargs.get("return_tensors"))

    def _frame_size(self, frames: int, height: int, width: int, factor: int, low: int, high: int) -> tuple[int, int]:
        """Every frame's target size: Qwen2-VL bounds each frame's area."""
        return qwen_smart_resize(height, width, factor, low, high)


class Qwen3VLVideoProcessorNumpy(QwenVideoProcessorNumpy):
    """``Qwen3VLVideoProcessor`` for decoded frames, without torchvision: patch 16, mean / std 0.5, and the pixel
    bounds hold the whole clip (its frames rounded to the temporal patch, times the frame area), not one frame."""

    stock_type = "Qwen3VLVideoProcessor"
    size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}
    patch_size = 16
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def _frame_size(self, frames: int, height: int, width: int, factor: int, low: int, high: int) -> tuple[int, int]:
        if height < factor or width < factor:  # a side under one merged patch is first scaled up to it
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
        temporal = int(self.temporal_patch_size)
        clip = max(temporal, round(frames / temporal) * temporal)
        h, w = round(height / factor) * factor, round(width / factor) * factor
        if clip * h * w > high:
            beta = math.sqrt(frames * height * width / high)
            return max(factor, math.floor(height / beta / factor) * factor), \
                max(factor, math.floor(width / beta / factor) * factor)
        if clip * h * w < low:
            beta = math.sqrt(low / (frames * height * width))
            return math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return h, w


def qwen_patchify(frames: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(T, C, H, W) with T % temporal == 0 -> (t*h*w, C*temporal*patch*patch) in Qwen's merge-window order."""
    t, c, h, w = frames.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * temporal * patch * patch)), (gt, gh, gw)


class LlavaOnevisionVideoProcessorNumpy(_NumpyVideoProcessor):
    """``LlavaOnevisionVideoProcessor`` for decoded frames, without torchvision: every frame resized to ``size``."""

    stock_type = "LlavaOnevisionVideoProcessor"
    size = {"height": 384, "width": 384}
    num_frames = 32  # what lmms-eval's llava_onevision samples; the stock processor samples nothing itself
    model_input_names = ["pixel_values_videos"]

    def _process(self, videos: list[np.ndarray], kwargs: dict[str, Any]) -> BatchFeature:
        size = dict(kwargs.get("size") or self.size)
        height, width = int(size["height"]), int(size["width"])
        out = []
        for video in videos:
            frames = [_to_pil(f) for f in video]
            if self.do_resize:
                frames = [f.resize((width, height), Image.BICUBIC) for f in frames]
            out.append(self._normalise(frames))
        if len({v.shape for v in out}) != 1:
            raise ValueError("videos in one batch must have the same number of frames")
        data = {"pixel_values_videos": torch.from_numpy(np.stack(out))}
        return BatchFeature(data, tensor_type=kwargs.get("return_tensors"))


class InternVLVideoProcessorNumpy(LlavaOnevisionVideoProcessorNumpy):
    """``InternVLVideoProcessor`` for decoded frames, without torchvision: the same fixed-size resize, saved under
    InternVL's name (InternVL3 takes no video here; the stock processor cannot be built without a video part)."""

    stock_type = "InternVLVideoProcessor"
    size = {"height": 448, "width": 448}


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------

# the numpy stand-ins a family's VideoFallback names (tamp.families)
_STAND_INS: dict[str, type[_NumpyVideoProcessor]] = {
    cls.__name__: cls for cls in (QwenVideoProcessorNumpy, LlavaOnevisionVideoProcessorNumpy, Qwen3VLVideoProcessorNumpy,
                                  InternVLVideoProcessorNumpy)
}
_VIDEO_KEYS = {"size", "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
               "image_std", "rescale_factor", "do_resize", "do_rescale", "do_normalize", "do_convert_rgb",
               "min_frames", "max_frames", "fps", "num_frames"}


def _read_json(path: str | Path, name: str, revision: str | None) -> dict[str, Any]:
    """A JSON file of a local folder or a cached Hub repo ({} when absent)."""
    from transformers.utils import cached_file

    try:
        resolved = cached_file(str(path), name, revision=revision, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return {}
    if resolved is None:
        return {}
    return json.loads(Path(resolved).read_text(encoding="utf-8"))


def _video_settings(path: str | Path, revision: str | None) -> dict[str, Any]:
    """The saved video processor settings: processor_config.json, else video_preprocessor_config.json,
    else the image processor's (older Qwen repos derive the video processor from it)."""
    saved = _read_json(path, "processor_config.json", revision).get("video_processor")
    if not saved:
        saved = _read_json(path, "video_preprocessor_config.json", revision)
    if not saved:
        saved = _read_json(path, "preprocessor_config.json", revision)
    return {k: v for k, v in (saved or {}).items() if k in _VIDEO_KEYS}


def _chat_template(path: str | Path, revision: str | None, tokenizer: Any) -> str | None:
    from transformers.utils import cached_file

    try:
        resolved = cached_file(str(path), "chat_template.jinja", revision=revision,
                               _raise_exceptions_for_missing_entries=False)
    except OSError:
        resolved = None
    if resolved is not None:
        return Path(resolved).read_text(encoding="utf-8")
    saved = _read_json(path, "processor_config.json", revision).get("chat_template")
    return saved or getattr(tokenizer, "chat_template", None)


def _build_with_fallback_video(path: str | Path, fallback: VideoFallback, revision: str | None) -> Any:
    """The stock processor class, with every part loaded normally except the video processor."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    processor_cls = getattr(transformers, fallback.processor_class)
    video_cls = _STAND_INS[fallback.video_processor]
    saved = _read_json(path, "processor_config.json", revision)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    parts: dict[str, Any] = {"tokenizer": tokenizer, "video_processor": video_cls(**_video_settings(path, revision))}
    attributes = processor_cls.get_attributes()
    if "image_processor" in attributes:
        parts["image_processor"] = AutoImageProcessor.from_pretrained(path, revision=revision)
    if "feature_extractor" in attributes:
        parts["feature_extractor"] = AutoFeatureExtractor.from_pretrained(path, revision=revision)
    extra = {k: v for k, v in saved.items() if k not in attributes and k not in ("processor_class", "chat_template")}
    accepted = set(inspect.signature(processor_cls.__init__).parameters)
    extra = {k: v for k, v in extra.items() if k in accepted}
    return processor_cls(**parts, **extra, chat_template=_chat_template(path, revision, tokenizer))


def load_processor(path: str | Path, revision: str | None = None) -> Any:
    """``AutoProcessor.from_pretrained(path)``, except that where torchvision is missing the video processor of a
    family with a ``VideoFallback`` (Qwen-VL, Qwen2.5-Omni, LLaVA-OneVision) is the numpy stand-in (same processor
    class otherwise)."""
    family = family_of(AutoConfig.from_pretrained(path, revision=revision))
    if family is not None and family.processor_loader:
        module, _, function = family.processor_loader.partition(":")
        return getattr(importlib.import_module(module), function)(path, revision)
    fallback = family.video_fallback if family is not None else None
    if fallback is not None and not is_torchvision_available():
        try:
            return _build_with_fallback_video(path, fallback, revision)
        except OSError as exc:
            raise TampError(f"cannot load the processor of {path} ({str(exc).splitlines()[0]})") from None
    return AutoProcessor.from_pretrained(path, revision=revision)
