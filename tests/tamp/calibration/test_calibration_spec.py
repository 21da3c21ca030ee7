"""CalibrationSpec, the one owner of the `--calib` grammar: parsing each form, one clear line for a bad one, the
pre-flight problems, the content fingerprint the harness keys artifacts by, and the sample draw that the loader,
the checks and the fingerprint all share."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cache import _sha256_file, calibration_fingerprint
from harness.model_specs import expand_calib
from tamp.calibration.loader import build_calibration, calibration_problems
from tamp.calibration.spec import CalibrationSpec
from tamp.calibration.text import parse_text_spec
from tamp.errors import TampError
from tamp.families.defaults import AVINSTRUCT, SHAREGPT4V
from tamp.models.loading import load_model

UNKNOWN = "give a LLaVA-format .json[:MEDIA_DIR], text:FILE[,FILE...], synthetic or picture-qa"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _conversation(sample_id: str, **media: object) -> dict[str, object]:
    return {"id": sample_id, **media, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                        {"from": "gpt", "value": "A square."}]}


def _media_dataset(root: Path) -> Path:
    """Five one-image samples and an audio-visual one (one of its audio files absent); media are plain bytes, so
    the hashes below do not depend on an image encoder's version."""
    data = [_conversation(f"s{i}", image=f"img{i}.png") for i in range(5)]
    data.append({"id": "av", "video": "clip.mp4", "audio": ["a.wav", "b.wav"], "conversations": [
        {"from": "human", "value": "<video><audio><audio>Hm?"}, {"from": "gpt", "value": "Music."}]})
    (root / "media").mkdir()
    (root / "cal.json").write_text(json.dumps(data))
    for i in range(5):
        (root / "media" / f"img{i}.png").write_bytes(f"image-{i}".encode())
    (root / "media" / "clip.mp4").write_bytes(b"video")
    (root / "media" / "a.wav").write_bytes(b"audio-a")
    return root / "cal.json"


def _image_dataset(root: Path, missing: int) -> Path:
    """Six samples with real images, sample `missing` naming one that is absent."""
    (root / "images").mkdir(parents=True)
    data = []
    for i in range(6):
        name = "gone.png" if i == missing else f"img{i}.png"
        if i != missing:
            Image.new("RGB", (16, 16), (40 * i, 80, 200)).save(root / "images" / name)
        data.append(_conversation(f"s{i}", image=name))
    (root / "data.json").write_text(json.dumps(data))
    return root / "data.json"


# ---- parse


def test_parse_each_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CalibrationSpec.parse("synthetic") == CalibrationSpec("synthetic", "synthetic")
    text = CalibrationSpec.parse("text:a.txt, b/c.txt,,")
    assert (text.kind, text.files, text.text) == ("text", (Path("a.txt"), Path("b/c.txt")), "text:a.txt, b/c.txt,,")
    beside = CalibrationSpec.parse("data/cal.json")
    assert (beside.kind, beside.llava_paths()) == ("llava", (Path("data/cal.json"), Path("data")))
    named = CalibrationSpec.parse("data/cal.json:/media/x")
    assert named.llava_paths() == (Path("data/cal.json"), Path("/media/x"))
    assert CalibrationSpec.parse("/d:1/cal.json").llava_paths() == (Path("/d:1/cal.json"), Path("/d:1"))
    assert CalibrationSpec.parse("/d:1/cal.json:media").llava_paths() == (Path("/d:1/cal.json"), Path("media"))
    assert CalibrationSpec.parse("text:notes.json").kind == "text"  # text: wins over .json, as always
    # the harness's defaults, once it has filled in $TAMP_DATA
    monkeypatch.setenv("TAMP_DATA", str(tmp_path))
    share = CalibrationSpec.parse(expand_calib(SHAREGPT4V) or "")
    assert share.llava_paths() == (tmp_path / "sharegpt4v/llava_next_sharegpt4v.json", tmp_path / "sharegpt4v/images")
    av = CalibrationSpec.parse(expand_calib(AVINSTRUCT) or "")
    assert av.llava_paths() == (tmp_path / "avinstruct/avinstruct_avqa_music.json", tmp_path / "avinstruct/media")


@pytest.mark.parametrize("spec,message", [
    ("mystery", f"unknown --calib 'mystery': {UNKNOWN}"),
    ("", f"unknown --calib '': {UNKNOWN}"),
    ("synthetic ", f"unknown --calib 'synthetic ': {UNKNOWN}"),
    ("text:", "calibration spec 'text:' names no file"),
    ("text: , ", "calibration spec 'text: , ' names no file"),
])
def test_bad_spec_is_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(TampError) as info:
        CalibrationSpec.parse(spec)
    assert str(info.value) == message and "\n" not in message
    assert calibration_problems(spec, 4, 0) == [message]  # the pre-flight check reports it, not raises it


def test_text_module_entry_point_uses_the_same_grammar() -> None:
    assert parse_text_spec("text:a.txt, b/c.txt") == [Path("a.txt"), Path("b/c.txt")]
    for bad in ("a.txt", "text:"):
        with pytest.raises(ValueError):
            parse_text_spec(bad)


def test_llava_paths_of_another_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="is text, not a LLaVA-format JSON"):
        CalibrationSpec.parse("text:a.txt").llava_paths()


# ---- draw


def test_draw_is_the_released_codes_numpy_draw() -> None:
    assert CalibrationSpec.draw(6, 3, 42) == [0, 1, 5] == CalibrationSpec.draw(6, 3, 42)
    assert CalibrationSpec.draw(6, 3, 42) == [int(i) for i in np.random.RandomState(42).choice(6, 3, replace=False)]
    assert CalibrationSpec.draw(6, 100, 0) == [5, 2, 1, 3, 0, 4]  # more asked than there are: all, shuffled
    assert CalibrationSpec.draw(6, 3, 1) != CalibrationSpec.draw(6, 3, 42)


def test_draw_is_what_the_loader_draws(tiny_model, tmp_path: Path) -> None:
    path = _image_dataset(tmp_path, missing=-1)
    calib = build_calibration(f"{path}:{tmp_path / 'images'}", load_model(str(tiny_model("llava-next"))), 3, 64, 7)
    assert calib.details["indices"] == CalibrationSpec.draw(6, 3, 7) == CalibrationSpec.parse(str(path)).drawn(3, 7)[1]
    assert calib.details["available"] == 6 and calib.details["drawn"] == 3


# ---- problems


def test_problems_of_text_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("words")
    assert CalibrationSpec.parse(f"text:{tmp_path / 'a.txt'}").problems(4, 0) == []
    assert CalibrationSpec.parse(f"text:{tmp_path / 'a.txt'},/no/b.txt").problems(4, 0) == \
        ["calibration text file not found: /no/b.txt"]
    assert CalibrationSpec.parse("synthetic").problems(4, 0) == []
    assert CalibrationSpec.parse(f"{tmp_path}/none.json").problems(4, 0) == \
        [f"calibration file not found: {tmp_path}/none.json (pass --calib FILE.json[:MEDIA_DIR])"]
    (tmp_path / "bad.json").write_text("[{")
    assert "is not valid JSON" in CalibrationSpec.parse(f"{tmp_path}/bad.json").problems(4, 0)[0]
    path = _image_dataset(tmp_path / "d", missing=-1)
    assert CalibrationSpec.parse(f"{path}:{tmp_path}/nodir").problems(4, 0) == \
        [f"calibration media folder not found: {tmp_path}/nodir (FILE.json:MEDIA_DIR names it; default: the "
         "JSON's folder)"]
    assert CalibrationSpec.parse(f"{path}:{tmp_path / 'd' / 'images'}").problems(6, 0) == []


def test_problems_check_the_drawn_samples_only(tmp_path: Path) -> None:
    """Sample 2's image is missing: reported when the draw takes sample 2, not otherwise."""
    spec = CalibrationSpec.parse(f"{_image_dataset(tmp_path, missing=2)}:{tmp_path / 'images'}")
    seeds = range(40)
    taking = next(s for s in seeds if 2 in CalibrationSpec.draw(6, 2, s))
    leaving = next(s for s in seeds if 2 not in CalibrationSpec.draw(6, 2, s))
    assert spec.problems(2, taking) == [f"image 'gone.png' of calibration sample s2 not found under {tmp_path / 'images'}"]
    assert spec.problems(2, leaving) == []


# ---- fingerprint


def test_fingerprint_is_todays_dict(tmp_path: Path) -> None:
    """Harness artifact keys hash this dict: keys, order and values are pinned (recorded before the grammar moved
    here from harness/cache.py), so a change to it is a deliberate one."""
    path = _media_dataset(tmp_path)
    text = f"{path}:{tmp_path / 'media'}"
    fp = CalibrationSpec.parse(text).fingerprint(3, 64, 42, hash_file=_sha)
    assert list(fp) == ["spec", "nsamples", "seqlen", "seed", "json_sha256", "images"]
    assert fp == {"spec": text, "nsamples": 3, "seqlen": 64, "seed": 42,
                  "json_sha256": "de376c6e25c669d1265145408f7a986e455ce753f413ff27cbaa23ad81cf0e93",
                  "images": "ec51a628708ae022dcd834601871c45712decd59ab04ce418c4067d5bddf7599"}
    assert CalibrationSpec.parse(text).fingerprint(2, 64, 7, hash_file=_sha)["images"] == \
        "deda55679f2792987c0037dcc2b24adefa58ff4a824ae7fa7ee3d2d44065d186"
    assert CalibrationSpec.parse(text).fingerprint(6, 64, 0, hash_file=_sha)["images"] == \
        "92fb154c620d5ae32b00483991e15bd772d1b11acb2dda5cf0d0e23135d4b10d"  # drawn in order 5, 2, 1, 3, 0, 4
    (tmp_path / "t.txt").write_text("some words\n")
    assert CalibrationSpec.parse(f"text:{tmp_path / 't.txt'}").fingerprint(3, 64, 0, hash_file=_sha) == {
        "spec": f"text:{tmp_path / 't.txt'}", "nsamples": 3, "seqlen": 64, "seed": 0,
        "files": {str(tmp_path / "t.txt"): "a5a9a794705f990e1cc7b119ee122ba5cbfc0b93e181d70c5955f19d5e9eda05"}}
    assert CalibrationSpec.parse("synthetic").fingerprint(8, 32, 1, hash_file=_sha) == \
        {"spec": "synthetic", "nsamples": 8, "seqlen": 32, "seed": 1}
    # the harness's fingerprint is this one, with its own file hash (equal to sha256 for files this small)
    assert calibration_fingerprint(text, 3, 64, 42) == CalibrationSpec.parse(text).fingerprint(
        3, 64, 42, hash_file=_sha256_file) == fp
    assert calibration_fingerprint(None, 3, 64, 42) is None


def test_fingerprint_follows_the_bytes_of_the_drawn_media(tmp_path: Path) -> None:
    spec = CalibrationSpec.parse(f"{_media_dataset(tmp_path)}:{tmp_path / 'media'}")
    assert CalibrationSpec.draw(6, 2, 7) == [3, 5]

    def images() -> str:
        return spec.fingerprint(2, 64, 7, hash_file=_sha)["images"]

    first = images()
    (tmp_path / "media" / "img3.png").write_bytes(b"another picture")  # drawn
    second = images()
    (tmp_path / "media" / "img0.png").write_bytes(b"another picture")  # not drawn
    third = images()
    (tmp_path / "media" / "b.wav").write_bytes(b"audio-b")  # drawn, was missing
    fourth = images()
    assert first != second == third != fourth
    assert spec.fingerprint(2, 64, 7, hash_file=_sha)["json_sha256"] == _sha(tmp_path / "cal.json")


def test_fingerprint_follows_text_files(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("one")
    spec = CalibrationSpec.parse(f"text:{tmp_path / 't.txt'}")
    before = spec.fingerprint(3, 64, 0, hash_file=_sha)
    (tmp_path / "t.txt").write_text("two")
    assert spec.fingerprint(3, 64, 0, hash_file=_sha) != before
