"""Tiny audio / video / audio-visual families: stock processor files, forward and generate with their media, the
numpy video processors (used where torchvision is missing), and per-modality token masks from each config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tamp.calibration.loader import build_calibration
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model
from tamp.processors import LlavaOnevisionVideoProcessorNumpy, QwenVideoProcessorNumpy, load_processor, qwen_patchify

AV_FAMILIES = ("qwen2-audio", "llava-onevision", "qwen2.5-omni")
STOCK = {
    "qwen2-audio": ("Qwen2AudioProcessor", None),
    "llava-onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor"),
    "qwen2.5-omni": ("Qwen2_5OmniProcessor", "Qwen2VLVideoProcessor"),
}
# media in each synthetic calibration sample -> the masks the adapter must find
MASKS = {
    "qwen2-audio": {"audio", "text"},
    "llava-onevision": {"image", "video", "text"},
    "qwen2.5-omni": {"video", "audio", "text"},
}


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _video(frames: int = 4, h: int = 60, w: int = 80) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", AV_FAMILIES)
def test_saved_files_name_the_stock_classes(tiny_model, family: str) -> None:
    path = tiny_model(family)
    saved = json.loads((path / "processor_config.json").read_text())
    processor_class, video_class = STOCK[family]
    assert saved["processor_class"] == processor_class
    if video_class:
        assert saved["video_processor"]["video_processor_type"] == video_class
    assert (path / "spk_dict.pt").exists() == (family == "qwen2.5-omni")
    assert type(load_processor(path)).__name__ == processor_class


@pytest.mark.parametrize("family", AV_FAMILIES)
def test_forward_and_generate_with_media(tiny_model, family: str) -> None:
    loaded = load_model(str(tiny_model(family)))
    adapter = get_adapter(loaded.model)
    runner = adapter.runner(loaded.model)
    proc = loaded.processor
    content, kwargs = [], {}
    if family != "llava-onevision":
        content.append({"type": "audio"})
        kwargs.update(audio=[_tone()], sampling_rate=16_000)
    if family != "qwen2-audio":
        content.append({"type": "video"})
        kwargs["videos"] = [_video()]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": "What is this?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[prompt], return_tensors="pt", **kwargs)
    masks = adapter.token_masks(inputs["input_ids"])
    assert set(masks) == {m for m in ("audio", "video") if any(c["type"] == m for c in content)} | {"text"}
    if "audio" in masks:  # 1 s at 16 kHz: 100 mel frames -> 50 after the conv -> 25 LM tokens
        assert int(masks["audio"].sum()) == 25
    if "video" in masks and family == "llava-onevision":  # 4 frames x 2 x 2 pooled + 1 newline
        assert int(masks["video"].sum()) == 4 * 4 + 1
    if "video" in masks and family == "qwen2.5-omni":
        grid = inputs["video_grid_thw"][0]
        assert int(masks["video"].sum()) == int(grid.prod()) // 4
    with torch.no_grad():
        logits = runner(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    out = runner.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= 3


@pytest.mark.parametrize("family", AV_FAMILIES)
def test_synthetic_calibration_masks_every_modality(tiny_model, family: str) -> None:
    loaded = load_model(str(tiny_model(family)))
    adapter = get_adapter(loaded.model)
    calib = build_calibration("synthetic", loaded, 2, 64, seed=0)
    for batch in calib.batches:
        masks = adapter.token_masks(batch["input_ids"])
        assert set(masks) == MASKS[family]
        assert all(int(m.sum()) >= 2 for m in masks.values())
        union = torch.stack(list(masks.values())).sum(0)
        assert bool((union == 1).all())  # every token in exactly one modality
    again = build_calibration("synthetic", loaded, 2, 64, seed=0)
    assert again.fingerprint == calib.fingerprint


def test_media_token_ids_come_from_each_config(tiny_model) -> None:
    for family, expected in (("qwen2-audio", {"audio"}), ("llava-onevision", {"image", "video"}),
                             ("qwen2.5-omni", {"image", "video", "audio"}), ("qwen2-vl", {"image", "video"})):
        loaded = load_model(str(tiny_model(family)))
        ids = get_adapter(loaded.model).media_token_ids
        assert set(ids) == expected, family
        tok = loaded.tokenizer
        names = {"qwen2-audio": {"audio": "<|AUDIO|>"},
                 "llava-onevision": {"image": "<image>", "video": "<video>"},
                 "qwen2.5-omni": {"image": "<|IMAGE|>", "video": "<|VIDEO|>", "audio": "<|AUDIO|>"},
                 "qwen2-vl": {"image": "<|image_pad|>", "video": "<|video_pad|>"}}[family]
        for modality, token in names.items():
            assert ids[modality] == [tok.convert_tokens_to_ids(token)], (family, modality)


def test_qwen2_vl_video_masks(tiny_model) -> None:
    """Qwen2-VL takes video input through the stock processor class (numpy video part without torchvision)."""
    loaded = load_model(str(tiny_model("qwen2-vl")))
    proc, adapter = loaded.processor, get_adapter(loaded.model)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    video = _video()
    inputs = proc(text=[prompt], videos=[video], images=[Image.fromarray(video[0])], return_tensors="pt")
    masks = adapter.token_masks(inputs["input_ids"])
    assert set(masks) == {"image", "video", "text"}
    assert int(masks["video"].sum()) == int(inputs["video_grid_thw"][0].prod()) // 4
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**inputs).logits).all()


# ---------------------------------------------------------------------------------------------------------------------
# numpy video processors
# ---------------------------------------------------------------------------------------------------------------------


def test_qwen_patchify_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    t, c, p, m, tp = 4, 3, 2, 2, 2
    frames = rng.standard_normal((t, c, 8, 12)).astype(np.float32)
    flat, (gt, gh, gw) = qwen_patchify(frames, p, m, tp)
    assert (gt, gh, gw) == (2, 4, 6)
    rows = []
    for ti in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for ih in range(m):
                    for iw in range(m):
                        y, x = (bh * m + ih) * p, (bw * m + iw) * p
                        patch = frames[ti * tp:(ti + 1) * tp, :, y:y + p, x:x + p]  # (tp, c, p, p)
                        rows.append(patch.transpose(1, 0, 2, 3).reshape(-1))  # channel, time, row, col
    assert np.array_equal(flat, np.stack(rows))


def test_qwen_video_of_two_equal_frames_equals_the_image(tiny_model) -> None:
    """Qwen repeats an image along time to fill the temporal patch: a two-frame still video must match it."""
    proc = load_processor(tiny_model("qwen2-vl"))
    frame = _video(1, 70, 90)[0]
    still = np.stack([frame, frame])
    video = QwenVideoProcessorNumpy(size=dict(proc.image_processor.size))([still], return_tensors="pt")
    image = proc.image_processor([Image.fromarray(frame)], return_tensors="pt")
    assert torch.equal(video["video_grid_thw"], image["image_grid_thw"])
    torch.testing.assert_close(video["pixel_values_videos"], image["pixel_values"], atol=1e-5, rtol=0)


def test_qwen_video_pads_odd_frame_counts_and_keeps_bounds() -> None:
    vp = QwenVideoProcessorNumpy(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 4})
    out = vp([_video(3, 300, 500)], return_tensors="pt")
    gt, gh, gw = out["video_grid_thw"][0].tolist()
    assert gt == 2 and gh * gw * 14 * 14 <= 28 * 28 * 4 and gh % 2 == 0 and gw % 2 == 0
    assert out["pixel_values_videos"].shape == (gt * gh * gw, 3 * 2 * 14 * 14)
    assert vp.to_dict()["video_processor_type"] == "Qwen2VLVideoProcessor"


def test_onevision_video_is_resized_rescaled_normalised() -> None:
    vp = LlavaOnevisionVideoProcessorNumpy(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video = np.full((3, 40, 30, 3), 255, dtype=np.uint8)
    video[1] = 0
    out = vp([video], return_tensors="pt")["pixel_values_videos"]
    assert out.shape == (1, 3, 3, 16, 16)
    assert torch.allclose(out[0, 0], torch.ones(3, 16, 16)) and torch.allclose(out[0, 1], -torch.ones(3, 16, 16))
    with pytest.raises(ValueError, match="file names"):
        vp(["clip.mp4"])
