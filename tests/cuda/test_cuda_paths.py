"""The GPU paths on tiny models, each against the same computation on the CPU: the sequential engine (offload and
resident), the token methods inside generation, and an lmms-eval wrapper answering held-out questions.

Marked `cuda`: skipped with the reason where no CUDA device is visible; `make gpu-check` runs them on the GPU and
its dry run (`make gpu-check DRY=1`) on the CPU (then each comparison is of the CPU run with itself, run once).
Float32 throughout, TF32 off (tests/cuda/conftest.py). What must agree exactly is discrete and fixed by the
parameters (token counts per layer, the number of zeros a uniform target leaves); what the float scores choose
(masks, kept tokens, greedy tokens) may differ only where two scores tie to ~1e-6, hence the tolerances below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tamp.inference.methods import install

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]
TOKEN_METHODS = ("fastv", "aim", "divprune", "pdrop", "dart")
HELDOUT = ROOT / "tasks" / "tamp_heldout" / "data" / "heldout.jsonl"
TASK = "tamp_heldout_vqa"


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---- engine -----------------------------------------------------------------------------------------------------


def _prune(tiny_model, method: str, device: torch.device, offload: bool) -> tuple[dict[str, torch.Tensor], Any, str]:
    from tamp.calibration.loader import build_calibration
    from tamp.engine.sequential import prune_model
    from tamp.models.adapters import get_adapter
    from tamp.models.loading import load_model
    from tamp.recipe import resolve_parts, weight_config

    loaded = load_model(str(tiny_model("llava-next")))
    calib = build_calibration("synthetic", loaded, 2, 24, seed=0)
    cfg = weight_config(method, sparsity=0.5)
    result = prune_model(loaded.model, get_adapter(loaded.model), calib.batches, cfg, resolve_parts(cfg), device,
                         offload=offload)
    weights = {name: loaded.model.get_submodule(name).weight for name in result.targets}
    where = {str(w.device) for w in weights.values()}
    assert len(where) == 1, where
    return {name: (w == 0).cpu() for name, w in weights.items()}, result, where.pop()


@pytest.mark.parametrize(("method", "offload"), [("wanda", True), ("tamp", False)])
def test_engine_on_the_device_prunes_as_on_the_cpu(tiny_model, device: torch.device, method: str,
                                                   offload: bool) -> None:
    """Wanda with offload (blocks visit the device, the model stays on the CPU) and TAMP resident on the device:
    the same per-matrix targets and (up to score ties) the same masks as the CPU prune."""
    masks, result, where = _prune(tiny_model, method, device, offload)
    cpu_masks, cpu_result, _ = (masks, result, where) if device.type == "cpu" else \
        _prune(tiny_model, method, torch.device("cpu"), offload)
    assert where == ("cpu" if offload else str(torch.device(device.type, 0) if device.type == "cuda" else device))
    assert set(masks) == set(cpu_masks) and masks
    for name, mask in masks.items():
        assert result.targets[name] == pytest.approx(cpu_result.targets[name], abs=1e-4), name
        if method == "wanda":  # a uniform 50% per output row: the count is fixed by the shape
            assert int(mask.sum()) == int(cpu_masks[name].sum()), name
        # ties of |W| x input norm are the only way a zero can move between devices: at most 1% of a matrix
        agreement = float((mask == cpu_masks[name]).float().mean())
        assert agreement >= 0.99, (name, agreement)


# ---- token methods ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava_next_pair(tiny_model, device: torch.device):
    """The tiny LLaVA-NeXT twice (on the CPU and on `device`, sdpa), one image prompt, its media token ids."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from tamp.models.adapters import get_adapter
    from tamp.processors import load_processor

    path = tiny_model("llava-next")
    proc = load_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 180, 40), (0, 0, 32, 32))
    inputs = dict(proc(text=[prompt], images=[image], return_tensors="pt"))
    models = []
    for dev in dict.fromkeys((torch.device("cpu"), device)):  # the dry run on the CPU: one model, its own twin
        model = AutoModelForImageTextToText.from_pretrained(path).to(dev).eval()
        model.set_attn_implementation("sdpa")
        models.append(model)
    if len(models) == 1:
        models.append(models[0])
    media = [i for ids in get_adapter(models[0]).media_token_ids.values() for i in ids]
    return models, inputs, media


def _run_method(model, inputs: dict, media: list[int], method: str) -> tuple[torch.Tensor, list[int], list, list]:
    device = next(model.parameters()).device
    batch = _on(inputs, device)
    dropper = install(model, method)
    try:
        with torch.no_grad():
            logits = model(**batch).logits[:, -1].float().cpu()
            tokens = model.generate(**batch, max_new_tokens=4, do_sample=False, suppress_tokens=media)
    finally:
        dropper.remove()
    counts = [(s.tokens_per_layer, s.visual_kept_per_layer) for s in dropper.history]
    return logits, tokens[0].tolist(), counts, dropper.history


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_on_the_device_matches_the_cpu(llava_next_pair, method: str) -> None:
    """A prefill and a cached greedy generation with the method installed: the tokens each layer ran on are the
    CPU's, the greedy tokens are the CPU's, the last logits within 1e-3 (a different kept set moves them by ~0.1)."""
    (cpu_model, model), inputs, media = llava_next_pair
    logits, tokens, counts, history = _run_method(model, inputs, media, method)
    cpu_logits, cpu_tokens, cpu_counts, _ = (logits, tokens, counts, history) if model is cpu_model else \
        _run_method(cpu_model, inputs, media, method)
    assert counts == cpu_counts
    assert history[0].tokens_per_layer[-1] < inputs["input_ids"].shape[1]  # something was really removed
    assert tokens == cpu_tokens
    torch.testing.assert_close(logits, cpu_logits, rtol=1e-3, atol=1e-3)


# ---- a wrapper ----------------------------------------------------------------------------------------------------


def _doc_to_visual(doc: dict[str, Any]) -> list:
    from tamp.calibration.pictures import render, scene_of

    return [render(scene_of(doc))]  # what tasks/tamp_heldout/utils.py draws


def _ask(wrapper, docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any] | None]:
    from lmms_eval.api.instance import Instance

    from harness.task_hooks import doc_to_text

    kwargs = {"post_prompt": "\nAnswer the question using a single word."}
    wrapper.task_dict = {TASK: {"test": docs}}
    requests = [Instance("generate_until", (doc_to_text(doc, kwargs), {"max_new_tokens": 8, "temperature": 0,
                                                                        "do_sample": False},
                                            _doc_to_visual, i, TASK, "test"),
                         idx=0, metadata={"task": TASK, "doc_id": i, "repeats": 1})
                for i, doc in enumerate(docs)]
    answers = [getattr(out, "text", out) for out in wrapper.generate_until(requests)]
    return answers, wrapper.take_cost()


def test_wrapper_answers_on_the_device_as_on_the_cpu(tmp_path: Path, device: torch.device) -> None:
    """tamp_llava_hf on an artifact of the trained tiny LLaVA-NeXT (magnitude 20% + FastV): the held-out answers on
    the device are the CPU's (the trained model's answers are far from ties), and the cost is measured there."""
    from harness.model_specs import resolve_model
    from harness.wrappers.llava_hf import TampLlavaHf
    from tamp.pipeline import prune
    from tamp.recipe import build_recipe

    artifact = tmp_path / "artifact"
    prune(resolve_model("tiny-trained-llava-next").source, build_recipe("magnitude+fastv", 0.2), artifact,
          device="cpu")
    docs = [json.loads(line) for line in HELDOUT.read_text().splitlines()[:3]]
    runs = {}
    for dev in dict.fromkeys(("cpu", str(device))):  # the dry run on the CPU: one wrapper
        wrapper = TampLlavaHf(pretrained=str(artifact), device=dev)
        runs[dev] = _ask(wrapper, docs)
        del wrapper
    (cpu_answers, _), (answers, cost) = runs["cpu"], runs[str(device)]
    assert all(isinstance(a, str) and a.strip() for a in answers), answers
    assert answers == cpu_answers
    assert cost is not None and cost["prefills"] == len(docs) and cost["device"].startswith(device.type)
    assert cost["visual_tokens_kept"] < cost["visual_tokens_in"]  # FastV ran inside the wrapper's generate
