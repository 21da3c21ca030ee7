"""Video and audio for calibration: decode files, sample frames the way the model's processor expects, and make
deterministic synthetic tones and coloured frame sequences for tiny models.

Frame sampling follows each processor family's defaults, because the stock processors take already-sampled
frames from the caller (lmms-eval / qwen-vl-utils do the sampling there):

* Qwen-style video processors (they have a ``temporal_patch_size``: Qwen2-VL, Qwen2.5-VL, Qwen2.5-Omni): ``fps``
  frames per second (2 by default), at least ``min_frames`` (4) and at most ``max_frames`` (768), rounded down to a
  multiple of the temporal patch, spread evenly over the clip, as qwen-vl-utils does;
* the others (LLaVA-OneVision): ``num_frames`` frames (32, what lmms-eval's LLaVA wrappers take) spread evenly.

Video files are read with decord; an animated GIF/WebP or a folder of frame images is read with PIL. Audio is
read with librosa (resampled to the feature extractor's rate, mixed to mono), or soundfile when librosa is absent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from tamp.errors import TampError

DEFAULT_QWEN_FPS = 2.0
DEFAULT_NUM_FRAMES = 32
_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def media_modalities(processor: Any) -> tuple[str, ...]:
    """The media a processor accepts, from the parts it has."""
    found = []
    if getattr(processor, "image_processor", None) is not None:
        found.append("image")
    if getattr(processor, "video_processor", None) is not None:
        found.append("video")
    if getattr(processor, "feature_extractor", None) is not None:
        found.append("audio")
    return tuple(found)


def sample_frame_indices(total: int, video_fps: float | None, processor: Any) -> list[int]:
    """Indices of the frames to keep from a clip of ``total`` frames at ``video_fps``, per the processor's defaults."""
    if total < 1:
        raise ValueError("the video has no frames")
    vp = getattr(processor, "video_processor", None)
    temporal = getattr(vp, "temporal_patch_size", None)
    if temporal:
        temporal = int(temporal)
        fps = float(getattr(vp, "fps", None) or DEFAULT_QWEN_FPS)
        low = int(getattr(vp, "min_frames", None) or 4)
        high = int(getattr(vp, "max_frames", None) or 768)
        seconds = total / video_fps if video_fps else total / fps
        wanted = min(max(seconds * fps, low), high)
        n = max(temporal, math.floor(wanted / temporal) * temporal)
    else:
        n = int(getattr(vp, "num_frames", None) or DEFAULT_NUM_FRAMES)
    # evenly spread; a clip shorter than n frames repeats frames (the processors pad the same way)
    return [int(round(x)) for x in np.linspace(0, total - 1, n)]


def _read_with_decord(path: Path) -> tuple[Any, int, float | None]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    fps = float(reader.get_avg_fps()) or None
    return reader, len(reader), fps


def _pil_frames(path: Path) -> tuple[list[np.ndarray], float | None]:
    """A folder of frame images (sorted by name) or an animated image; fps from the GIF/WebP duration."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        if not files:
            raise TampError(f"video folder {path} holds no frame images ({', '.join(_FRAME_SUFFIXES)})")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], None
    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        duration_ms = im.info.get("duration")
    return frames, (1000.0 / duration_ms) if duration_ms else None


def decode_video(path: Path, processor: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(T, H, W, 3) uint8 frames sampled per the processor's defaults, and their metadata for the processor."""
    if not path.exists():
        raise TampError(f"video not found: {path}")
    if path.is_dir() or path.suffix.lower() in (".gif", ".webp"):
        frames, fps = _pil_frames(path)
        total = len(frames)
        indices = sample_frame_indices(total, fps, processor)
        sampled = np.stack([frames[i] for i in indices])
    else:
        try:
            reader, total, fps = _read_with_decord(path)
        except ImportError:
            raise TampError(f"cannot decode {path}: decord is not installed (pip install decord), or pass a folder "
                            "of frame images") from None
        except Exception as exc:  # decord raises its own DECORDError for unreadable files
            raise TampError(f"cannot decode video {path}: {str(exc).splitlines()[-1][:200]}") from None
        indices = sample_frame_indices(total, fps, processor)
        sampled = reader.get_batch(indices).asnumpy()
    metadata = {"total_num_frames": total, "fps": fps, "frames_indices": indices,
                "height": int(sampled.shape[1]), "width": int(sampled.shape[2])}
    return sampled, metadata


def load_audio(path: Path, sampling_rate: int) -> np.ndarray:
    """Mono float32 waveform at ``sampling_rate``."""
    if not path.is_file():
        raise TampError(f"audio not found: {path}")
    try:
        import librosa
    except ImportError:
        librosa = None
    try:
        if librosa is not None:
            wave, _ = librosa.load(str(path), sr=sampling_rate, mono=True)
        else:
            import soundfile

            wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            if rate != sampling_rate:
                raise TampError(f"{path} is sampled at {rate} Hz, the model wants {sampling_rate} Hz; install "
                                "librosa (pip install -e '.[audio]') to resample")
            wave = wave.mean(axis=1)
    except TampError:
        raise
    except Exception as exc:
        raise TampError(f"cannot decode audio {path}: {str(exc).splitlines()[0][:200]}") from None
    if wave.size == 0:
        raise TampError(f"audio {path} is empty")
    return np.asarray(wave, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic media
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_audio(rng: np.random.Generator, sampling_rate: int, seconds: float = 1.0) -> np.ndarray:
    """Two random tones with a little noise: not silent (silence gives degenerate statistics), deterministic."""
    t = np.arange(int(sampling_rate * seconds), dtype=np.float64) / sampling_rate
    f1, f2 = rng.uniform(150.0, 2000.0, size=2)
    wave = 0.3 * np.sin(2 * np.pi * f1 * t) + 0.2 * np.sin(2 * np.pi * f2 * t + rng.uniform(0, np.pi))
    wave += 0.02 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def synthetic_video(rng: np.random.Generator, frames: int = 4, size: int = 64) -> np.ndarray:
    """(frames, size, size, 3) uint8: blocks of random colour that drift by one block per frame."""
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    out = []
    for i in range(frames):
        moved = np.roll(blocks, shift=i, axis=1)
        out.append(np.asarray(Image.fromarray(moved).resize((size, size), Image.NEAREST)))
    return np.stack(out)
