"""The generated picture questions: the smoke tasks' pictures, the held-out split, and no overlap with training."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from pathlib import Path

import pytest

from tamp.calibration.pictures import (
    CALIB_SEED,
    HELDOUT_ROWS,
    POSITIONS,
    QUESTIONS,
    SMOKE_LAYOUT,
    TRAIN_SEED,
    Scene,
    conversations,
    heldout_rows,
    render,
    scene_of,
    scenes,
)
from tamp.testing.tiny_training import Recipe

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "tasks" / "tamp_smoke"
HELDOUT = ROOT / "tasks" / "tamp_heldout"


def _digest(scene: Scene) -> str:
    return hashlib.sha256(render(scene).tobytes()).hexdigest()


def _smoke_rows() -> list[dict]:
    return [json.loads(line) for name in ("vqa.jsonl", "mc.jsonl")
            for line in (SMOKE / "data" / name).read_text().splitlines()]


def _evaluation_pictures() -> set[str]:
    return {_digest(scene_of(row)) for row in [*_smoke_rows(), *heldout_rows()]}


def test_smoke_layout_draws_the_smoke_tasks_pictures() -> None:
    spec = importlib.util.spec_from_file_location("tamp_smoke_utils", SMOKE / "utils.py")  # by path: see below
    smoke_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke_utils)
    for row in _smoke_rows():
        assert scene_of(row).layout() == SMOKE_LAYOUT
        assert render(scene_of(row)).tobytes() == smoke_utils.render(row).tobytes()


def test_heldout_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    # by path, under its own name: other task folders have a `generate` module too (the suite imports them first)
    spec = importlib.util.spec_from_file_location("tamp_heldout_generate", HELDOUT / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = generate.write(tmp_path / "heldout.jsonl")
    assert written.read_bytes() == (HELDOUT / "data" / "heldout.jsonl").read_bytes()
    rows = heldout_rows()
    assert len(rows) == HELDOUT_ROWS and len({r["id"] for r in rows}) == HELDOUT_ROWS
    for row in rows:
        assert row["choices"][row["label"]] == row["answer"] == scene_of(row).answer(row["kind"])
    assert {r["kind"] for r in rows} == set(QUESTIONS)


def test_position_answer_matches_where_the_shape_is_drawn() -> None:
    for scene in itertools.islice(scenes(TRAIN_SEED), 300):
        expected = POSITIONS[[scene.cx < 22, 22 <= scene.cx < 43, scene.cx >= 43].index(True)]
        assert scene.position == expected
        assert scene.cx - scene.side // 2 >= 0 and scene.cx + scene.side // 2 <= 64
        assert scene.cy + scene.side // 2 <= 38  # the shape stays above the word


@pytest.mark.parametrize("stream", ["training", "vision", "calibration"])
def test_no_training_or_calibration_picture_is_an_evaluation_picture(stream: str) -> None:
    """Every picture the trained tiny model learns from (both training stages of the registry model's recipe)
    or is pruned with (picture-qa calibration, seed 42, 512 samples) differs, pixel for pixel, from every
    held-out and smoke task picture."""
    r = Recipe()
    seed, n = {"training": (TRAIN_SEED, r.steps * r.batch), "vision": (TRAIN_SEED + 2, r.vision_steps * r.vision_batch),
               "calibration": (CALIB_SEED + 42, 512)}[stream]
    drawn = {_digest(s) for s in itertools.islice(scenes(seed), n)}
    assert len(drawn) > n // 2  # the stream varies (not one picture over and over)
    assert not drawn & _evaluation_pictures()


def test_conversations_ask_different_kinds_about_one_picture() -> None:
    convs = list(itertools.islice(conversations(scenes(TRAIN_SEED), seed=1, turns=4), 50))
    for conv in convs:
        kinds = [kind for kind, _ in conv.turns]
        assert sorted(kinds) == sorted(QUESTIONS)
        messages = conv.messages()
        assert messages[0]["content"].startswith("<image>\n") and "<image>" not in messages[2]["content"]
        assert [m["content"] for m in messages[1::2]] == [conv.scene.answer(k) for k in kinds]
    assert len({conv.turns for conv in convs}) > 10


def test_picture_qa_is_a_calibration_spec_without_files() -> None:
    from tamp.calibration.spec import CalibrationSpec

    spec = CalibrationSpec.parse("picture-qa")
    assert spec.kind == "picture-qa" and spec.problems(32, 42) == []
    assert spec.fingerprint(32, 512, 42, hash_file=lambda p: "unused") == {
        "spec": "picture-qa", "nsamples": 32, "seqlen": 512, "seed": 42}


def test_picture_qa_batches_are_conversations_about_one_picture(tiny_model) -> None:
    from tamp.calibration.picture_qa import picture_qa_batches
    from tamp.errors import TampError
    from tamp.processors import load_processor

    processor = load_processor(tiny_model("llava-next"))
    batches = picture_qa_batches(processor, processor.tokenizer, True, 3, seed=42)
    assert len(batches) == 3 and all(b["pixel_values"].shape[0] == 1 for b in batches)
    again = picture_qa_batches(processor, processor.tokenizer, True, 3, seed=42)
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(batches, again))
    with pytest.raises(TampError, match="needs a model that takes images"):
        picture_qa_batches(processor, processor.tokenizer, False, 1, seed=0)
