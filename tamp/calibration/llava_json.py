"""LLaVA-format JSON (the ShareGPT4V subset of LLaVA-NeXT-Data) plus a media folder.

A sample names its media with "image", "video" and/or "audio" (each a file name or a list of them, relative
to the media folder), as LLaVA, VideoLLaMA2 and AVInstruct-style audio-visual data do; `<image>`, `<video>` and
`<audio>` placeholders in the turns place them. Videos are decoded and their frames sampled with the model
processor's defaults; audio is resampled to the feature extractor's rate (tamp.calibration.media). An audio-
text JSON for audio LLMs is the same format with "audio" only.

One whole conversation per sample, batch size 1. This module reads the format; which file and media folder a
`--calib` spec names, and which samples are drawn, is tamp.calibration.spec's (the one owner of that grammar).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from tamp.calibration.chat import render, to_messages
from tamp.calibration.media import decode_video, load_audio, media_modalities
from tamp.errors import TampError

MEDIA_KEYS = ("image", "video", "audio")


def load_llava_json(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TampError(f"calibration file not found: {path} (pass --calib FILE.json[:MEDIA_DIR])")
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


def media_names(sample: dict[str, Any], key: str) -> list[str]:
    """The files a sample names under "image", "video" or "audio" (one name or a list of them)."""
    value = sample.get(key) or []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _missing(media_dir: Path, name: str, kind: str, sample_id: Any) -> str:
    return f"{kind} '{name}' of calibration sample {sample_id} not found under {media_dir}"


def _media_path(media_dir: Path, name: str, kind: str, sample_id: Any) -> Path:
    path = media_dir / name
    if not path.exists():
        raise TampError(_missing(media_dir, name, kind, sample_id))
    return path


def _unreadable_image(name: str, sample_id: Any, exc: Exception) -> str:
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"image '{name}' of calibration sample {sample_id} is not a readable image ({why}); replace or remove it"


def _open_image(path: Path, name: str, sample_id: Any) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise TampError(_unreadable_image(name, sample_id, exc)) from None


def media_problems(data: list[dict[str, Any]], order: list[int], media_dir: Path, most: int = 5) -> list[str]:
    """What is wrong with the media of the drawn samples `order` of a loaded JSON, found without a model: the
    media folder, then each file (present; images identified by PIL). At most `most` listed."""
    if not media_dir.is_dir():
        return [f"calibration media folder not found: {media_dir} (FILE.json:MEDIA_DIR names it; default: the "
                "JSON's folder)"]
    problems: list[str] = []
    for index in order:
        sample = data[index]
        for kind in MEDIA_KEYS:
            for name in media_names(sample, kind):
                path = media_dir / name
                if not path.exists():
                    problems.append(_missing(media_dir, name, kind, sample.get("id", index)))
                elif kind == "image":
                    try:
                        with Image.open(path) as image:
                            image.verify()
                    except (UnidentifiedImageError, OSError) as exc:
                        problems.append(_unreadable_image(name, sample.get("id", index), exc))
    if len(problems) > most:
        problems = [*problems[:most], f"{len(problems) - most} more calibration media missing or unreadable"]
    return problems


def llava_batches(data: list[dict[str, Any]], order: list[int], media_dir: Path, processor: Any,
                  tokenizer: Any) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Render the drawn conversations `order` of a loaded JSON with the model's processor, one batch each; and
    what they held (samples without media, media items per kind)."""
    accepted = media_modalities(processor) if processor is not tokenizer else ()
    batches, without_media = [], 0
    media_items = {kind: 0 for kind in MEDIA_KEYS}
    for index in order:
        sample = data[index]
        sample_id = sample.get("id", index)
        names = {kind: media_names(sample, kind) for kind in MEDIA_KEYS}
        for kind, listed in names.items():
            if listed and kind not in accepted:
                raise TampError(f"calibration sample {sample_id} has {kind} but this model takes "
                                f"{', '.join(accepted) or 'text only'}; choose calibration data for this model")
        images = [_open_image(_media_path(media_dir, name, "image", sample_id), name, sample_id)
                  for name in names["image"]]
        videos, metadata = [], []
        for name in names["video"]:
            frames, meta = decode_video(_media_path(media_dir, name, "video", sample_id), processor)
            videos.append(frames)
            metadata.append(meta)
        audio = []
        if names["audio"]:
            rate = int(processor.feature_extractor.sampling_rate)
            audio = [load_audio(_media_path(media_dir, name, "audio", sample_id), rate) for name in names["audio"]]
        for kind, items in (("image", images), ("video", videos), ("audio", audio)):
            media_items[kind] += len(items)
        if not (images or videos or audio):
            without_media += 1
        messages = to_messages(sample["conversations"], len(images), len(videos), len(audio))
        batches.append(render(processor, tokenizer, messages, images, videos, audio, metadata or None))
    return batches, {"samples_without_media": without_media, "media_items": media_items}
