"""Deterministic generator of the offline audio and video smoke data (`python tasks/tamp_smoke_av/generate.py`).

Unlike the image smoke task, whose pictures are drawn from each row on demand, audio and video models are
handed *files* by lmms-eval's wrappers (a video is a path that decord / PyAV opens), so the media are written
to data/ and committed. They are kept tiny and free of anything a model could only get from speech or
text: pure tones, silence, white noise, beeps to count, solid-colour clips and a moving square.

Byte-for-byte reproducibility (checked by tests/test_smoke_av_tasks.py):
- WAV files are written with the standard library `wave` module from integer samples; noise comes from
  `random.Random(seed)`, whose stream is fixed across Python versions.
- MP4 files use FFmpeg's native MPEG-4 Part 2 encoder (always in PyAV's wheels) single-threaded with the
  `bitexact` flags, so neither the container nor the stream carries an FFmpeg version string or a date.
  libx264 is avoided on purpose: it writes its version into every stream.
"""

from __future__ import annotations

import json
import math
import random
import wave
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
SEED = 4321
# the PyAV release the committed MP4s were written with: another FFmpeg may quantise differently
BUILT_WITH_AV = "15.1.0"

# --- audio -------------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # what Qwen2-Audio's feature extractor expects, so the wrapper need not resample
CLIP_S = 0.5  # short clips keep the committed WAVs small (16 KB each at 16-bit mono)
AMPLITUDE = 0.5
NOISE_AMPLITUDE = 0.3
PITCH_HZ = {"low": 220.0, "high": 1760.0}  # three octaves apart: no ambiguity about which is higher
BEEP_S, GAP_S, LEAD_S = 0.08, 0.06, 0.04
RAMP_S = 0.005  # short linear fades: no clicks at the edges of a tone or beep
COUNT_WORDS = ("zero", "one", "two", "three", "four")

# clip name -> what it contains; kind "silence" | "noise" | "tone" | "beeps"
CLIPS: dict[str, dict[str, Any]] = {
    "silence": {"kind": "silence"},
    "noise": {"kind": "noise"},
    "tone_low": {"kind": "tone", "pitch": "low"},
    "beeps1_high": {"kind": "beeps", "pitch": "high", "count": 1},
    "beeps2_low": {"kind": "beeps", "pitch": "low", "count": 2},
    "beeps3_high": {"kind": "beeps", "pitch": "high", "count": 3},
}
AUDIO_QUESTIONS = {
    "content": "Is this clip silence, noise or a tone?",
    "pitch": "Is the tone high or low?",
    "count": "How many beeps are in the clip?",
}
# (clip, question kind): each clip is asked what it can answer; answers are one lower-case word
AUDIO_DOCS = (
    ("silence", "content"), ("noise", "content"), ("tone_low", "content"), ("tone_low", "pitch"),
    ("beeps1_high", "count"), ("beeps1_high", "pitch"), ("beeps2_low", "count"), ("beeps2_low", "pitch"),
    ("beeps3_high", "count"), ("beeps3_high", "pitch"),
)

# --- video -------------------------------------------------------------------------------------------
FRAMES = 8
FPS = 8
SIZE = 64  # frame width and height (a multiple of 16: no encoder padding)
SQUARE = 16
STEP = 6  # pixels the square moves per frame: 4 .. 46 over 8 frames
WHITE = (255, 255, 255)
# the same palette as the image smoke task, so a colour word means the same colour everywhere
RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 205, 20)}
DIRECTIONS = ("left", "right", "up", "down")

# video name -> content; motion "none" is a clip of one solid colour, otherwise a square on white
VIDEOS: dict[str, dict[str, str]] = {
    "solid_red": {"colour": "red", "motion": "none"},
    "solid_green": {"colour": "green", "motion": "none"},
    "solid_blue": {"colour": "blue", "motion": "none"},
    "solid_yellow": {"colour": "yellow", "motion": "none"},
    "square_blue_right": {"colour": "blue", "motion": "right"},
    "square_red_left": {"colour": "red", "motion": "left"},
    "square_green_down": {"colour": "green", "motion": "down"},
    "square_yellow_up": {"colour": "yellow", "motion": "up"},
}
VIDEO_QUESTIONS = {
    "colour": "What colour is the video?",
    "square_colour": "What colour is the moving square?",
    "direction": "In which direction does the square move?",
}
VIDEO_DOCS = (
    ("solid_red", "colour"), ("solid_green", "colour"), ("solid_blue", "colour"), ("solid_yellow", "colour"),
    ("square_blue_right", "direction"), ("square_red_left", "direction"), ("square_green_down", "direction"),
    ("square_yellow_up", "direction"), ("square_blue_right", "square_colour"), ("square_green_down", "square_colour"),
)
LETTERS = "ABCD"


# --- audio synthesis ---------------------------------------------------------------------------------
def _ramp(n: int) -> np.ndarray:
    """Envelope of `n` samples: linear fade-in and fade-out of RAMP_S each."""
    env = np.ones(n)
    r = min(int(RAMP_S * SAMPLE_RATE), n // 2)
    if r:
        env[:r] = np.arange(r) / r
        env[n - r:] = np.arange(r)[::-1] / r
    return env


def _tone(hz: float, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return AMPLITUDE * np.sin(2 * math.pi * hz * t) * _ramp(n)


def beep_spans(count: int) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the beeps of a clip with `count` beeps."""
    spans = []
    for i in range(count):
        start = int(round((LEAD_S + i * (BEEP_S + GAP_S)) * SAMPLE_RATE))
        spans.append((start, start + int(round(BEEP_S * SAMPLE_RATE))))
    return spans


def clip_samples(clip: dict[str, Any], seed: int) -> np.ndarray:
    """int16 samples of one clip (the same for the same clip and seed on every platform)."""
    n = int(CLIP_S * SAMPLE_RATE)
    x = np.zeros(n)
    if clip["kind"] == "noise":
        rng = random.Random(seed)
        x = NOISE_AMPLITUDE * (2 * np.array([rng.random() for _ in range(n)]) - 1)
    elif clip["kind"] == "tone":
        x = _tone(PITCH_HZ[clip["pitch"]], n)
    elif clip["kind"] == "beeps":
        for start, end in beep_spans(clip["count"]):
            x[start:end] = _tone(PITCH_HZ[clip["pitch"]], end - start)
    return np.round(x * 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray) -> None:
    """16-bit PCM mono WAV at SAMPLE_RATE (header written by `wave`: no dates, no tool names)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def audio_answer(clip: dict[str, Any], kind: str) -> str:
    if kind == "content":
        return clip["kind"]
    if kind == "pitch":
        return clip["pitch"]
    return COUNT_WORDS[clip["count"]]


def audio_rows() -> list[dict[str, Any]]:
    """Open questions about the clips, one exact one-word answer each."""
    rows = []
    for i, (name, kind) in enumerate(AUDIO_DOCS):
        clip = CLIPS[name]
        rows.append({"id": f"audio-{i:03d}", "audio": f"audio/{name}.wav", "clip": name, "kind": kind,
                     "question": AUDIO_QUESTIONS[kind], "answer": audio_answer(clip, kind)})
    return rows


# --- video synthesis ---------------------------------------------------------------------------------
def square_origin(motion: str, i: int) -> tuple[int, int]:
    """(x, y) of the square's top-left corner in frame `i`; it crosses the frame centre line."""
    mid = (SIZE - SQUARE) // 2
    near, far = 4 + i * STEP, 4 + (FRAMES - 1 - i) * STEP
    return {"right": (near, mid), "left": (far, mid), "down": (mid, near), "up": (mid, far)}[motion]


def video_frames(video: dict[str, str]) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8 RGB frames of one clip."""
    colour = np.array(RGB[video["colour"]], dtype=np.uint8)
    if video["motion"] == "none":
        return np.broadcast_to(colour, (FRAMES, SIZE, SIZE, 3)).copy()
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[:] = WHITE
    for i in range(FRAMES):
        x, y = square_origin(video["motion"], i)
        frames[i, y:y + SQUARE, x:x + SQUARE] = colour
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """MPEG-4 Part 2 in MP4, yuv420p, one thread, bitexact: the same bytes on every run (needs PyAV)."""
    import av

    bitexact = av.codec.context.Flags.bitexact
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= bitexact
        stream.bit_rate = 200_000  # plenty for 64x64: decoded colours stay within a few levels
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_answer(video: dict[str, str], kind: str) -> str:
    return video["motion"] if kind == "direction" else video["colour"]


def video_rows() -> list[dict[str, Any]]:
    """Open questions about the clips, one exact one-word answer each."""
    rows = []
    for i, (name, kind) in enumerate(VIDEO_DOCS):
        video = VIDEOS[name]
        rows.append({"id": f"video-{i:03d}", "video": f"video/{name}.mp4", "clip": name, "kind": kind,
                     "question": VIDEO_QUESTIONS[kind], "answer": video_answer(video, kind)})
    return rows


def video_mc_rows(seed: int = SEED) -> list[dict[str, Any]]:
    """NExT-QA-style lettered options (shuffled per row, so the right letter varies); `answer` is a letter."""
    rng = random.Random(seed)
    rows = []
    for i, name in enumerate(VIDEOS):
        video = VIDEOS[name]
        kind = "colour" if video["motion"] == "none" else "direction"
        options = list(RGB) if kind == "colour" else list(DIRECTIONS)
        rng.shuffle(options)
        text = video_answer(video, kind)
        rows.append({"id": f"video-mc-{i:03d}", "video": f"video/{name}.mp4", "clip": name, "kind": kind,
                     "question": VIDEO_QUESTIONS[kind], "options": options,
                     "answer": LETTERS[options.index(text)], "answer_text": text})
    return rows


# --- output ------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def write(out: Path = DATA_DIR, seed: int = SEED) -> list[Path]:
    """Write every media file and the three JSONL files into `out`; returns the paths written."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "video").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, clip) in enumerate(CLIPS.items()):
        path = out / "audio" / f"{name}.wav"
        write_wav(path, clip_samples(clip, seed + i))
        paths.append(path)
    for name, video in VIDEOS.items():
        path = out / "video" / f"{name}.mp4"
        write_mp4(path, video_frames(video))
        paths.append(path)
    for fname, rows in (("audio.jsonl", audio_rows()), ("video.jsonl", video_rows()),
                        ("video_mc.jsonl", video_mc_rows(seed))):
        _write_jsonl(out / fname, rows)
        paths.append(out / fname)
    return paths


if __name__ == "__main__":
    for p in write():
        print(f"wrote {p.relative_to(DATA_DIR.parent)} ({p.stat().st_size} bytes)")
