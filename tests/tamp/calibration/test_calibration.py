"""Calibration: LLaVA-format JSON + images, text files, synthetic; fingerprints and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tamp.calibration.loader import build_calibration
from tamp.errors import TampError
from tamp.models.loading import load_model
from tamp.pipeline import prune
from tamp.recipe import recipe_for, weight_config


def _llava_dataset(root, n=6, with_text_only=True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    samples = []
    for i in range(n):
        sample = {"id": f"s{i}", "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is square number {i}?"},
            {"from": "gpt", "value": f"The square number {i} is red and blue."},
        ]}
        if not (with_text_only and i == n - 1):
            Image.new("RGB", (40 + 8 * i, 48), (30 * i, 80, 200)).save(root / "images" / f"img{i}.png")
            sample["image"] = f"img{i}.png"
        else:
            sample["conversations"][0]["value"] = "Tell me a fact about houses."
        samples.append(sample)
    path = root / "data.json"
    path.write_text(json.dumps(samples))
    return path


@pytest.fixture(scope="module")
def llava_next(tiny_model):
    return load_model(str(tiny_model("llava-next")))


def test_llava_json_draws_with_seed_and_renders_whole_conversations(llava_next, tmp_path):
    path = _llava_dataset(tmp_path)
    spec = f"{path}:{tmp_path / 'images'}"
    calib = build_calibration(spec, llava_next, 3, 2048, seed=42)
    assert calib.details["indices"] == [int(i) for i in np.random.RandomState(42).choice(6, 3, replace=False)]
    assert len(calib.batches) == 3 and calib.samples == 3
    image_id = llava_next.model.config.image_token_id
    for batch, index in zip(calib.batches, calib.details["indices"]):
        text = llava_next.tokenizer.decode(batch["input_ids"][0])
        assert f"square number {index} is red and blue" in text or index == 5  # the answer is in the sample
        if index != 5:
            assert int((batch["input_ids"] == image_id).sum()) > 0 and "pixel_values" in batch
    again = build_calibration(spec, llava_next, 3, 2048, seed=42)
    assert again.fingerprint == calib.fingerprint
    assert build_calibration(spec, llava_next, 3, 2048, seed=1).fingerprint != calib.fingerprint


def test_default_image_folder_is_the_json_folder(llava_next, tmp_path):
    path = _llava_dataset(tmp_path, with_text_only=False)
    for f in (tmp_path / "images").iterdir():
        f.rename(tmp_path / f.name)
    assert len(build_calibration(str(path), llava_next, 2, 2048, seed=0).batches) == 2


def test_samples_without_media_are_warned_and_recorded(tiny_model, tmp_path):
    path = _llava_dataset(tmp_path)
    cfg = weight_config("wanda", calib=f"{path}:{tmp_path / 'images'}", nsamples=6)
    info = prune(str(tiny_model("llava-next")), recipe_for(cfg), tmp_path / "out", device="cpu")
    assert any("1 of 6 calibration samples carry no image" in w for w in info["warnings"])
    counts = info["calibration"]["token_counts"]
    assert counts["image"] > 0 and counts["text"] > 0
    on_disk = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert on_disk["warnings"] == info["warnings"]


def test_missing_image_empty_and_invalid_json(llava_next, tmp_path):
    path = _llava_dataset(tmp_path)
    (tmp_path / "images" / "img0.png").unlink()
    with pytest.raises(TampError, match="image 'img0.png'.*not found"):
        build_calibration(f"{path}:{tmp_path / 'images'}", llava_next, 6, 2048, seed=0)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(TampError, match="holds no samples"):
        build_calibration(str(empty), llava_next, 4, 2048, seed=0)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(TampError, match="not valid JSON"):
        build_calibration(str(broken), llava_next, 4, 2048, seed=0)
    with pytest.raises(TampError, match="not found"):
        build_calibration(str(tmp_path / "nope.json"), llava_next, 4, 2048, seed=0)


def test_text_spec_segments_in_batches(tiny_model, tmp_path):
    loaded = load_model(str(tiny_model("llama")))
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the red house stands by the river. " * 80)
    b.write_text("a small blue car drives down the road. " * 80)
    calib = build_calibration(f"text:{a},{b}", loaded, 10, 16, seed=0)
    assert [tuple(x["input_ids"].shape) for x in calib.batches] == [(8, 16), (2, 16)]
    with pytest.raises(TampError, match="segments"):
        build_calibration(f"text:{a}", loaded, 10_000, 64, seed=0)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TampError):
        build_calibration(f"text:{tmp_path / 'empty.txt'}", loaded, 1, 16, seed=0)


def test_synthetic_is_deterministic(llava_next):
    a = build_calibration("synthetic", llava_next, 3, 64, seed=5)
    b = build_calibration("synthetic", llava_next, 3, 64, seed=5)
    c = build_calibration("synthetic", llava_next, 3, 64, seed=6)
    assert a.fingerprint == b.fingerprint != c.fingerprint
