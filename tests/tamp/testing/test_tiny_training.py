"""The trained tiny LLaVA-NeXT's recipe: deterministic, atomic, token for token what evaluation sends.

Run on a recipe small enough to train twice in seconds (`QUICK`), into temporary folders: determinism is checked
within this process, on this machine (another CPU may give other last bits). The full recipe's build and its
scores are tests/e2e/test_trained_tiny.py's; the shipped weights the registry name loads are test_shipped.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tamp.calibration.pictures import SINGLE_WORD, Conversation, heldout_rows, render, scene_of
from tamp.testing.tiny_training import Recipe, build_trained_tiny, encode, weights_sha256

# a recipe small enough to train twice in seconds: what is checked is that it is deterministic
QUICK = Recipe(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, vision_hidden=32, vision_intermediate=64,
               vision_layers=2, vision_steps=3, vision_batch=4, steps=3, batch=2, warmup=1)


def test_two_builds_give_the_same_weights(tmp_path: Path) -> None:
    a = build_trained_tiny("llava-next", tmp_path / "a", recipe=QUICK)
    b = build_trained_tiny("llava-next", tmp_path / "b", recipe=QUICK)
    info_a, info_b = (json.loads((p / "training.json").read_text()) for p in (a, b))
    assert info_a["weights_sha256"] == info_b["weights_sha256"]
    assert info_a["losses"] == info_b["losses"] and len(info_a["losses"]) == QUICK.steps
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    from transformers import LlavaNextForConditionalGeneration

    loaded = LlavaNextForConditionalGeneration.from_pretrained(a)
    assert weights_sha256(loaded) == info_a["weights_sha256"]  # the record names the saved weights
    assert torch.get_num_threads() > 0 and not torch.are_deterministic_algorithms_enabled()  # settings restored


def test_a_different_seed_gives_other_weights(tmp_path: Path) -> None:
    a = build_trained_tiny("llava-next", tmp_path / "a", recipe=QUICK, seed=0)
    b = build_trained_tiny("llava-next", tmp_path / "b", recipe=QUICK, seed=1)
    assert json.loads((a / "training.json").read_text())["weights_sha256"] != \
        json.loads((b / "training.json").read_text())["weights_sha256"]


def test_build_replaces_only_a_trained_model(tmp_path: Path) -> None:
    out = build_trained_tiny("llava-next", tmp_path / "m", recipe=QUICK)
    assert build_trained_tiny("llava-next", out, recipe=QUICK) == out  # an earlier build is replaced
    assert not list(tmp_path.glob(".m.tmp-*"))  # no temporary folder left behind
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a trained tiny model"):
        build_trained_tiny("llava-next", other, recipe=QUICK)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no training recipe"):
        build_trained_tiny("qwen2-vl", tmp_path / "q", recipe=QUICK)


def test_first_turn_is_token_for_token_an_evaluation_prompt(tmp_path: Path) -> None:
    """Training's first question is what lmms-eval's LLaVA wrapper sends (prompt + answer, one processor call)."""
    from tamp.processors import load_processor

    model_dir = build_trained_tiny("llava-next", tmp_path / "m", recipe=QUICK)
    processor = load_processor(model_dir)
    tok = processor.tokenizer
    for row in heldout_rows()[:8]:
        conv = Conversation(scene_of(row), ((row["kind"], SINGLE_WORD),))
        prompt = tok.apply_chat_template([{"role": "user", "content": f"<image>\n{row['question']}{SINGLE_WORD}"}],
                                         tokenize=False, add_generation_prompt=True)
        reference = processor(text=[f"{prompt} {row['answer']}{tok.eos_token}"], images=[render(conv.scene)],
                              return_tensors="pt")
        sample = encode(processor, conv)
        assert torch.equal(sample["input_ids"], reference["input_ids"][0])
        assert torch.equal(sample["pixel_values"], reference["pixel_values"][0])
        answer = sample["labels"][sample["labels"] != -100]
        assert tok.decode(answer) == f" {row['answer']}{tok.eos_token}"


def test_cli_refuses_a_family_without_recipe(tmp_path: Path, capsys) -> None:
    from tamp.cli import main

    assert main(["build-tiny", "--family", "qwen2-vl", "--trained", "--out", str(tmp_path / "q")]) == 2
    assert "no training recipe" in capsys.readouterr().err


def test_registry_knows_the_trained_model() -> None:
    from harness.model_specs import HELDOUT_TASKS, MODELS
    from tamp.models.loading import model_problem
    from tamp.models.sources import source_names

    assert "tiny-trained-llava-next" in source_names()
    spec = MODELS["tiny-trained-llava-next"]
    assert spec.family == "llava-next" and spec.calib == "picture-qa" and spec.tasks == HELDOUT_TASKS
    assert model_problem("tiny-trained-llava-next") is None
    assert "no trained tiny model of family 'qwen2-vl'" in model_problem("tiny-trained-qwen2-vl")


def test_the_cache_name_follows_the_recipe_code() -> None:
    from tamp.testing.tiny_training import recipe_fingerprint, trained_cache_name

    assert trained_cache_name("llava-next") == f"trained-llava-next-seed0-{recipe_fingerprint()[:12]}"
    assert trained_cache_name("llava-next", seed=1) != trained_cache_name("llava-next")


@pytest.mark.parametrize("stage", ["_probe_batches", "_answer_batches"])
def test_prefetched_batches_are_the_seeded_stream_in_order(tmp_path: Path, stage: str) -> None:
    """The worker process that draws the pictures hands over exactly the batches this process would draw."""
    import itertools
    from functools import partial

    from tamp.processors import load_processor
    from tamp.testing import tiny_training

    processor = tiny_training._processor(load_processor(build_trained_tiny("llava-next", tmp_path / "m", recipe=QUICK)),
                                         QUICK)
    make = partial(getattr(tiny_training, stage), processor, QUICK, 0)
    here = list(itertools.islice(make(), 3))
    there = list(tiny_training.prefetched(make, 3))
    assert len(there) == 3
    for a, b in zip(here, there):
        pairs = zip(a.values(), b.values()) if isinstance(a, dict) else zip(a, b)
        assert all(torch.equal(x, y) for x, y in pairs)
