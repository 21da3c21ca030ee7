"""lmms-eval hooks of the audio and video smoke tasks: hand over the media, build the prompt, score.

The media formats mirror lmms-eval's own tasks so the stock wrappers and ours serve both unchanged:
- audio (like clotho_aqa / vocalsound): a list with one HF-Audio-style dict,
  {"array": float32 mono ndarray in [-1, 1], "sampling_rate": 16000, "path": absolute WAV path,
  "type": "audio"}. qwen2_audio / qwen2_5_omni read "array" and "sampling_rate"; the extra "type" and
  "path" make lmms-eval's automatic chat messages label it audio (a dict without "type" becomes *video*).
- video (like nextqa / mvbench): a list with one absolute path str ending in ".mp4"; the wrappers decode
  it themselves (decord or PyAV) and recognise a video by that suffix.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
LETTERS = "ABCD"
NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}


def media_path(relative: str) -> Path:
    """Absolute path of a media file named relative to data/ in a row (rows stay machine independent)."""
    return DATA_DIR / relative


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit PCM mono WAV -> (float32 samples in [-1, 1], sampling rate), with the standard library only."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM, got {w.getsampwidth() * 8}-bit x{w.getnchannels()}")
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate


def doc_to_audio(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's clip as lmms-eval's audio wrappers expect it (see the module docstring)."""
    path = media_path(doc["audio"])
    array, rate = read_wav(path)
    return [{"array": array, "sampling_rate": rate, "path": str(path), "type": "audio"}]


def doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """The row's video as an absolute .mp4 path, as lmms-eval's video tasks return it."""
    return [str(media_path(doc["video"]))]


def _wrap(text: str, kw: dict[str, Any] | None) -> str:
    kw = kw or {}
    return f"{kw.get('pre_prompt', '')}{text}{kw.get('post_prompt', '')}"


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    return _wrap(doc["question"], lmms_eval_specific_kwargs)


def doc_to_text_mc(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """Question then one "X. option" line per option, NExT-QA style."""
    lines = [doc["question"], *(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(doc["options"]))]
    return _wrap("\n".join(lines), lmms_eval_specific_kwargs)


def normalize(text: str | None) -> str:
    """First non-empty line, lower case, surrounding spaces and punctuation removed; digits 0-4 as words."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    word = re.sub(r"^[\W_]+|[\W_]+$", "", lines[0].lower()) if lines else ""
    return NUMBERS.get(word, word)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the normalised answer with the expected word: 1.0 or 0.0."""
    return {"exact_match": float(normalize(results[0] if results else "") == doc["answer"])}


def parse_choice(response: str | None, options: list[str]) -> str | None:
    """The letter a response picks, or None (scored wrong; NExT-QA guesses at random, we stay deterministic).

    In order: a leading "B", "(B)", "B." or "B: ..."; "B <B's text>"; one lone capital letter ("The answer
    is B"; a letter followed by a lower-case word is not one, so the article in "A square ..." is not read
    as A); the response being an option's text; exactly one option's text among its words ("A square
    moves up").
    """
    text = (response or "").strip()
    letters = LETTERS[:len(options)]
    m = re.match(rf"^\(?([{letters}])(?:[).:]|$)", text)
    if m:
        return m.group(1)
    m = re.match(rf"^([{letters}])\s+(.+)$", text, flags=re.S)
    if m and normalize(m.group(2)) == options[letters.index(m.group(1))].lower():
        return m.group(1)
    lone = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])(?!\s+[a-z])", text))
    if len(lone) == 1:
        return lone.pop()
    words = set(re.findall(r"[a-z]+", text.lower()))
    named = [LETTERS[i] for i, opt in enumerate(options) if normalize(text) == opt.lower()]
    named = named or [LETTERS[i] for i, opt in enumerate(options) if opt.lower() in words]
    return named[0] if len(named) == 1 else None


def process_results_mc(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """1.0 when the letter parsed from the response is the right one."""
    return {"exact_match": float(parse_choice(results[0] if results else "", doc["options"]) == doc["answer"])}
