"""Calibration with video and audio: AVInstruct-style LLaVA JSON (video and/or audio per sample), audio-text JSON,
frame sampling per processor defaults, clear errors, and token counts per modality in pruning.json."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from tamp.calibration.loader import build_calibration
from tamp.calibration.media import decode_video, sample_frame_indices
from tamp.errors import TampError
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model
from tamp.pipeline import prune
from tamp.recipe import recipe_for, weight_config


def write_mjpeg_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 frames -> a minimal Motion-JPEG AVI (RIFF: hdrl, movi, idx1) that decord reads."""
    jpegs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue())
    h, w = frames.shape[1:3]
    big, n = max(len(j) for j in jpegs), len(jpegs)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    def lst(kind: bytes, data: bytes) -> bytes:
        return b"LIST" + struct.pack("<I", len(data) + 4) + kind + data

    avih = struct.pack("<IIIIIIIIII4I", 1_000_000 // fps, big * fps, 0, 0x10, n, 0, 1, big, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, big, 0xFFFFFFFF, 0,
                       0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    hdrl = lst(b"hdrl", chunk(b"avih", avih) + lst(b"strl", chunk(b"strh", strh) + chunk(b"strf", strf)))
    movi, index, offset = b"", b"", 4
    for j in jpegs:
        c = chunk(b"00dc", j)
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(j))
        movi += c
        offset += len(c)
    body = b"AVI " + hdrl + lst(b"movi", movi) + chunk(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _clip(n: int, seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(np.roll(base, i, axis=1)).resize(size[::-1], Image.NEAREST))
                     for i in range(n)])


def _wav(path: Path, seconds: float, freq: float, rate: int = 22_050) -> None:
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def _av_dataset(root: Path, n: int = 4) -> Path:
    """AVInstruct-style samples: video + audio with placeholders, video only, audio only (no placeholder)."""
    (root / "media").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        write_mjpeg_avi(root / "media" / f"clip{i}.avi", _clip(8, i), fps=4)
        _wav(root / "media" / f"sound{i}.wav", 0.5 + 0.25 * i, 300 + 100 * i)
        sample = {"id": f"av{i}", "conversations": [
            {"from": "human", "value": f"<video>\n<audio>\nWhich instrument plays in clip {i}?"},
            {"from": "gpt", "value": f"A piano plays in clip {i}."}]}
        if i % 3 != 2:
            sample["video"] = f"clip{i}.avi"
        if i % 3 != 1:
            sample["audio"] = f"sound{i}.wav"
        samples.append(sample)
    path = root / "av.json"
    path.write_text(json.dumps(samples))
    return path


@pytest.fixture(scope="module")
def omni(tiny_model):
    return load_model(str(tiny_model("qwen2.5-omni")))


def test_avinstruct_json_renders_video_and_audio(omni, tmp_path: Path) -> None:
    path = _av_dataset(tmp_path)
    calib = build_calibration(f"{path}:{tmp_path / 'media'}", omni, 4, 2048, seed=0)
    adapter = get_adapter(omni.model)
    data = json.loads(path.read_text())
    for batch, index in zip(calib.batches, calib.details["indices"]):
        sample = data[index]
        masks = adapter.token_masks(batch["input_ids"])
        assert ("video" in masks) == ("video" in sample) and ("audio" in masks) == ("audio" in sample)
        if "audio" in sample:  # 0.5 s + 0.25 s per index at 16 kHz -> 50 frames per second / 4 tokens per 40 ms
            seconds = 0.5 + 0.25 * index
            assert int(masks["audio"].sum()) == (((int(seconds * 100) - 1) // 2 + 1) - 2) // 2 + 1
        if "video" in sample:  # 8 frames at 4 fps = 2 s -> 4 frames at 2 fps -> 2 temporal grids
            assert int(batch["video_grid_thw"][0, 0]) == 2
        assert f"A piano plays in clip {index}" in omni.tokenizer.decode(batch["input_ids"][0])
    assert calib.details["media_items"] == {"image": 0, "video": 3, "audio": 3}
    again = build_calibration(f"{path}:{tmp_path / 'media'}", omni, 4, 2048, seed=0)
    assert again.fingerprint == calib.fingerprint


def test_audio_text_json_for_an_audio_llm(tiny_model, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model("qwen2-audio")))
    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(3):
        _wav(tmp_path / "clips" / f"a{i}.wav", 1.0, 200 + 150 * i, rate=16_000)
        rows.append({"id": i, "audio": f"a{i}.wav", "conversations": [
            {"from": "human", "value": "<audio>\nWhat do you hear?"}, {"from": "gpt", "value": "A steady tone."}]})
    (tmp_path / "audio.json").write_text(json.dumps(rows))
    calib = build_calibration(f"{tmp_path / 'audio.json'}:{tmp_path / 'clips'}", loaded, 3, 2048, seed=1)
    audio_id = loaded.model.config.audio_token_id
    assert all(int((b["input_ids"] == audio_id).sum()) == 25 for b in calib.batches)
    assert all("input_features" in b for b in calib.batches)


def test_frame_sampling_follows_the_processor_defaults(tiny_model, omni) -> None:
    qwen = omni.processor
    assert sample_frame_indices(100, 25.0, qwen) == [int(round(x)) for x in np.linspace(0, 99, 8)]  # 4 s at 2 fps
    assert len(sample_frame_indices(3, 30.0, qwen)) == 4  # at least min_frames, a multiple of 2
    assert len(sample_frame_indices(10_000, 1.0, qwen)) == 768  # at most max_frames
    onevision = load_model(str(tiny_model("llava-onevision"))).processor
    assert sample_frame_indices(320, 30.0, onevision) == [int(round(x)) for x in np.linspace(0, 319, 32)]


def test_gif_and_frame_folders_decode(omni, tmp_path: Path) -> None:
    frames = _clip(6, 3)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "clip.gif", save_all=True, append_images=images[1:], duration=250, loop=0)
    (tmp_path / "frames").mkdir()
    for i, image in enumerate(images):
        image.save(tmp_path / "frames" / f"{i:03d}.png")
    gif, meta = decode_video(tmp_path / "clip.gif", omni.processor)
    assert gif.shape == (4, 48, 64, 3) and meta["fps"] == pytest.approx(4.0)
    folder, _ = decode_video(tmp_path / "frames", omni.processor)  # no fps: taken as already sampled at 2 fps
    assert np.array_equal(folder, frames)


def test_missing_media_and_wrong_model_are_one_line_errors(omni, tiny_model, tmp_path: Path) -> None:
    path = _av_dataset(tmp_path, n=2)
    (tmp_path / "media" / "clip0.avi").unlink()
    with pytest.raises(TampError, match=r"^video 'clip0.avi' of calibration sample av0 not found under"):
        build_calibration(f"{path}:{tmp_path / 'media'}", omni, 2, 2048, seed=0)
    (tmp_path / "media" / "clip0.avi").write_bytes(b"not a video")
    with pytest.raises(TampError, match="cannot decode video") as info:
        build_calibration(f"{path}:{tmp_path / 'media'}", omni, 2, 2048, seed=0)
    assert "\n" not in str(info.value)
    audio_model = load_model(str(tiny_model("qwen2-audio")))
    with pytest.raises(TampError, match="has video but this model takes audio"):
        build_calibration(f"{path}:{tmp_path / 'media'}", audio_model, 2, 2048, seed=0)


def test_pruning_json_records_tokens_per_modality(tiny_model, tmp_path: Path) -> None:
    path = _av_dataset(tmp_path / "data")
    cfg = weight_config("tamp", sparsity=0.5, calib=f"{path}:{tmp_path / 'data' / 'media'}", nsamples=4)
    info = prune(str(tiny_model("qwen2.5-omni")), recipe_for(cfg), tmp_path / "out", device="cpu")
    counts = info["calibration"]["token_counts"]
    assert counts["video"] > 0 and counts["audio"] > 0 and counts["text"] > 0
    assert info["engine"]["samples_with_modality"] == {"video": 3, "audio": 3, "text": 4}
    on_disk = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert on_disk["calibration"]["token_counts"] == counts
    assert on_disk["calibration"]["media_items"] == {"image": 0, "video": 3, "audio": 3}
    assert (tmp_path / "out" / "spk_dict.pt").is_file()
