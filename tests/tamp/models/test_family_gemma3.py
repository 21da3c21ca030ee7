"""Gemma 3: the tiny builder, depth and paths from the family row, an artifact that plain from_pretrained loads, the
harness plan of the real model, and Gemma's attention pattern through token removal (image tokens attending to
their whole image, sliding windows counted in original positions)."""

from __future__ import annotations

import json

import pytest
import torch

from tamp.families import registry
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform


@pytest.fixture(scope="module")
def gemma(tiny_model):
    """The tiny model, eager attention (its weights are what the masks let through), and one image prompt."""
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    path = tiny_model("gemma3")
    model = Gemma3ForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 180, 40), (0, 0, 32, 32))
    return path, model, dict(proc(text=[prompt], images=[image], return_tensors="pt"))


def test_tiny_build_depth_paths_and_media_ids(gemma) -> None:
    path, model, inputs = gemma
    config = json.loads((path / "config.json").read_text())
    family = registry.get("gemma3")
    assert registry.family_of(model.config) is family and family.hf_id == "google/gemma-3-4b-it"
    assert registry.depth(config) == 4 == model.config.text_config.num_hidden_layers
    assert model.config.text_config.layer_types == ["sliding_attention", "full_attention"] * 2
    adapter = get_adapter(model)
    assert adapter.language_stack(model).name == "model.language_model.layers"
    assert adapter.vision_stack(model).name == "model.vision_tower.encoder.layers"
    # the soft tokens only, not the begin / end-of-image markers around them
    assert adapter.media_token_ids == {"image": [model.config.image_token_id]}
    image = inputs["input_ids"][0] == model.config.image_token_id
    assert int(image.sum()) == 16 and inputs["token_type_ids"][0].bool().tolist() == image.tolist()


def test_artifact_loads_with_plain_from_pretrained(tiny_model, tmp_path) -> None:
    from transformers import Gemma3ForConditionalGeneration

    from tamp.pipeline import prune
    from tamp.recipe import recipe_for, weight_config

    cfg = weight_config("wanda", sparsity=0.5, calib="synthetic", nsamples=2, seqlen=32)
    info = prune(str(tiny_model("gemma3")), recipe_for(cfg), tmp_path / "art", device="cpu")
    model = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "art")
    layers = model.model.language_model.layers
    assert len(info["per_matrix"]) == 4 * 7
    q = layers[0].self_attn.q_proj.weight
    assert int((q == 0).sum()) == q.numel() // 2


def test_harness_plans_the_real_model() -> None:
    from harness.model_specs import resolve_model

    spec = resolve_model("gemma-3-4b")
    assert (spec.source, spec.family, spec.wrapper) == ("google/gemma-3-4b-it", "gemma3", "tamp_gemma3")
    assert "sharegpt4v" in str(spec.calib) and spec.tasks[0] == "textvqa_val" and "pope" in spec.tasks
    tiny = resolve_model("tiny-gemma3")
    assert (tiny.wrapper, tiny.tasks) == ("tamp_gemma3", ("tamp_smoke_vqa", "tamp_smoke_mc"))


def test_yopo_is_refused_in_one_line() -> None:
    problem = TokenTransform.build("yopo", {}).model_problem("gemma3", 4)
    assert problem is not None and problem.startswith("--method yopo: not on gemma3 models") and "\n" not in problem
    assert TokenTransform.build("fastv", {}).model_problem("gemma3", 4) is None


def _allowed(original: list[int], image: set[int], window: int | None) -> torch.Tensor:
    """[T', T'] what a query may see among the kept tokens, at their original positions: earlier keys, or any key
    of the same image (tiny-gemma3 has one); for a sliding layer only keys less than `window` positions back."""
    q, k = torch.tensor(original)[:, None], torch.tensor(original)[None, :]
    img = torch.tensor([p in image for p in original])
    seen = (k <= q) | (img[:, None] & img[None, :])
    return seen & (k > q - window) if window is not None else seen


@pytest.mark.parametrize(("method", "params"), [("fastv", {"fastv_k": 2, "fastv_keep": 0.5}),
                                                ("random", {"random_keep": 0.5})])
def test_kept_tokens_keep_the_image_block_and_the_window_at_original_positions(gemma, method, params) -> None:
    """After a drop (at layer 2; before layer 0), every layer's attention weights are non-zero exactly where Gemma's
    mask at the original positions allows: a kept image token attends to later kept tokens of its image, and a
    sliding layer's window counts original positions, not kept tokens."""
    _, model, inputs = gemma
    image = set(torch.nonzero(inputs["input_ids"][0] == model.config.image_token_id).flatten().tolist())
    window = model.config.text_config.sliding_window
    with torch.no_grad():
        dropper = TokenTransform.build(method, params).install(model)
        try:
            attentions = model(**inputs, output_attentions=True).attentions
        finally:
            dropper.remove()
    start = params.get("fastv_k", 0)
    for layer in range(start, len(attentions)):
        kept = dropper.kept_by_layer[layer][0].tolist()
        assert len(kept) < inputs["input_ids"].shape[1]
        sliding = model.config.text_config.layer_types[layer] == "sliding_attention"
        expected = _allowed(kept, image, window if sliding else None)
        seen = attentions[layer][0] > 0  # [heads, T', T']
        assert bool((seen == expected).all()), layer
        rows = [j for j, p in enumerate(kept) if p in image]
        assert bool(seen[:, rows[0], rows[-1]].all())  # the first kept image token sees the last one
    far = [j for j, p in enumerate(kept) if p <= kept[-1] - window]
    assert far and not bool(attentions[2][0][:, -1, far].any())  # beyond the window in original positions
