"""Batched evaluation through our lmms-eval wrappers, one token method per family: eight requests with mixed image
sizes and image counts, answered by a wrapper loaded at batch size 8 (one `generate` call) and by one loaded at batch
size 1; the answers are equal, text for text. (The seam-level test, every family x every token method, is
tests/tamp/inference/test_batched_drops.py; this one adds each family's wrapper: its processor on a list of prompts
and images, left padding, its own decoding of the answers.)"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.tamp.inference.conftest import FAMILIES
from tests.tamp.inference.methods import SETTINGS

TASK = "batch_check"
# one token method per family, each method at least once (the settings of the seam-level tests)
METHOD = {"llava": "aim", "llava-next": "random", "llava-onevision": "pool", "qwen2-vl": "divprune",
          "qwen2.5-vl": "dart", "qwen3-vl": "pdrop", "internvl3": "fastv", "gemma3": "random", "smolvlm": "pool",
          "qwen2.5-omni": "random"}
# the image families, and the audio-visual one whose wrapper batches (Qwen2-Audio takes no token method: no images)
WRAPPER_FAMILIES = (*FAMILIES, "qwen2.5-omni")
# wrappers that load bfloat16 whatever the checkpoint (the stock gemma3's choice): on a CPU a random tiny model's
# near-tied logits round differently in a batch of 8 and alone, so the comparison runs the model in float32
BFLOAT16 = ("gemma3",)
# (width, height) of each request's images, and its question: sizes, counts and prompt lengths differ
REQUESTS = ((((64, 64),), "What is red?"), (((96, 48), (40, 80)), "Compare the two pictures in detail please."),
            (((40, 80),), "Hi"), (((56, 56), (64, 64)), "Which colour is in the corner?"),
            (((80, 40),), "Name the colour."), (((48, 96),), "What is in the top left corner of this picture?"),
            (((64, 32), (32, 64)), "Two?"), (((72, 72),), "Describe it."))


def _picture(size: tuple[int, int], k: int) -> Image.Image:
    image = Image.new("RGB", size, (200, 30 + 20 * k, 30))
    image.paste((20, 180, 40), (0, 0, size[0] // 2, size[1] // 2))
    return image


def _ask(lm: Any) -> tuple[list[str], dict[str, Any] | None]:
    """The eight requests through the wrapper's generate_until (as lmms-eval calls it), and the cost it measured."""
    from lmms_eval.api.instance import Instance

    docs = [{"images": [_picture(size, k) for size in sizes], "question": q} for k, (sizes, q) in enumerate(REQUESTS)]
    lm.task_dict = {TASK: {"test": docs}}
    gen = {"max_new_tokens": 4, "temperature": 0, "do_sample": False, "until": []}
    requests = [Instance("generate_until", (doc["question"], dict(gen), lambda d: d["images"], i, TASK, "test"),
                         idx=0, metadata={"task": TASK, "doc_id": i, "repeats": 1}) for i, doc in enumerate(docs)]
    answers = [getattr(out, "text", out) for out in lm.generate_until(requests)]
    return answers, lm.take_cost()


@pytest.mark.parametrize("family", WRAPPER_FAMILIES)
def test_a_wrapper_answers_at_batch_size_8_as_at_1(tmp_path: Path, tiny_model, family: str) -> None:
    from harness.evaluate import load_wrapper
    from harness.model_specs import resolve_model
    from tamp.pipeline import prune
    from tamp.recipe import build_recipe

    method = METHOD[family]
    artifact = tmp_path / "artifact"
    prune(str(tiny_model(family)), build_recipe(method, overrides=SETTINGS[method]), artifact, device="cpu")
    wrapper = resolve_model(f"tiny-{family}").wrapper
    runs = {}
    for size in (8, 1):  # a fresh wrapper each: the token method installed afresh (random's seeded stream)
        lm = load_wrapper(wrapper, f"pretrained={artifact},max_empty_fraction=1", "cpu", size)
        assert lm.batch_size == size  # served as asked
        if family in BFLOAT16:
            lm.model.float()
        runs[size] = _ask(lm)
        del lm
        gc.collect()
    (answers, cost), (single, single_cost) = runs[8], runs[1]
    assert answers == single
    assert cost is not None and single_cost is not None
    assert cost["batch_size"] == len(REQUESTS) and single_cost["batch_size"] == 1  # one generate call of eight
    assert cost["visual_tokens_kept"] < cost["visual_tokens_in"]  # the token method ran inside the batch
    assert cost["visual_tokens_in"] == single_cost["visual_tokens_in"]
