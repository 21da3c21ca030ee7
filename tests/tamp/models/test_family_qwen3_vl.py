"""Qwen3-VL: the tiny build, its adapter, artifacts plain transformers loads, the harness's plan, and the token seam
with DeepStack (vision features added to the visual tokens after decoder layers 0-2 of the tiny model) and its
interleaved 3-D rotary positions."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tamp.families import registry
from tamp.inference.sequence_edit import Drop, DropInput, Kept, SequenceEditor, TokenPlan
from tamp.models import internals
from tamp.models.adapters import get_adapter
from tests.tamp.inference.test_token_drop import check_cached_generation

FAMILY = "qwen3-vl"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """(path, model, processor, one image prompt's inputs)."""
    from transformers import Qwen3VLForConditionalGeneration

    from tamp.processors import load_processor

    path = tiny_model(FAMILY)
    model = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
    proc = load_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 180, 40), (0, 0, 32, 32))
    return path, model, proc, dict(proc(text=[prompt], images=[image], return_tensors="pt"))


def test_tiny_build_files_depth_and_adapter(tiny) -> None:
    path, model, proc, inputs = tiny
    config = json.loads((path / "config.json").read_text())
    assert registry.depth(config) == 4 == len(model.model.language_model.layers)
    assert config["vision_config"]["deepstack_visual_indexes"] == [0, 1, 2]
    saved = json.loads((path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen3VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen3VLVideoProcessor"
    assert type(proc).__name__ == "Qwen3VLProcessor"
    adapter = get_adapter(model)
    assert adapter.family == FAMILY
    assert adapter.language_stack(model).name == "model.language_model.layers"
    assert adapter.vision_stack(model).name == "model.visual.blocks"
    tok = proc.tokenizer
    assert adapter.media_token_ids == {"image": [tok.convert_tokens_to_ids("<|image_pad|>")],
                                       "video": [tok.convert_tokens_to_ids("<|video_pad|>")]}
    assert int(adapter.token_masks(inputs["input_ids"])["image"].sum()) == 4  # 64 x 64 pixels: 2 x 2 tokens


def test_video_frames_are_runs_of_their_own(tiny) -> None:
    """The processor writes each temporal patch as its own timestamped run; the seam groups each run as one frame."""
    import numpy as np

    _, model, proc, _ = tiny
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    video = np.random.default_rng(0).integers(0, 256, (4, 60, 80, 3), dtype=np.uint8)
    inputs = dict(proc(text=[prompt], videos=[video], return_tensors="pt"))
    frames, rows, cols = (int(x) for x in inputs["video_grid_thw"][0])
    assert frames == 2
    editor = SequenceEditor(model, get_adapter(model), TokenPlan({0: Drop(lambda d: Kept(torch.arange(d.hidden.shape[0])))}))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        editor.remove()
    groups = editor.groups[0][editor.visual[0]]
    assert torch.bincount(groups - groups.min()).tolist()[::2] == [rows * cols // 4] * frames  # ids: frame, gap


def test_an_artifact_loads_with_plain_from_pretrained(tiny, tmp_path) -> None:
    from transformers import Qwen3VLForConditionalGeneration

    from tamp.pipeline import prune
    from tamp.recipe import recipe_for, weight_config

    path = tiny[0]
    cfg = weight_config("magnitude", sparsity=0.5, calib="synthetic", nsamples=2, seqlen=32)
    info = prune(str(path), recipe_for(cfg), tmp_path / "art", device="cpu")
    model = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "art")
    weight = model.get_submodule("model.language_model.layers.0.mlp.down_proj").weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_a_tamp_aim_run_plans_the_wrapper_calibration_and_tasks() -> None:
    """What `harness run --model qwen3-vl-8b --method tamp+aim --sparsity 0.5` plans, nothing loaded."""
    from harness.model_specs import expand_calib, resolve_model
    from harness.run import RunOptions, run_recipe
    from tamp.families.defaults import IMAGE_TASKS, SHAREGPT4V, VIDEO_TASKS

    spec = resolve_model("qwen3-vl-8b")
    assert (spec.source, spec.family, spec.wrapper) == ("Qwen/Qwen3-VL-8B-Instruct", FAMILY, "tamp_qwen3_vl")
    assert spec.calib == SHAREGPT4V and spec.tasks == (*IMAGE_TASKS, *VIDEO_TASKS)
    recipe = run_recipe(RunOptions(model="qwen3-vl-8b", method="tamp+aim", sparsity=0.5), spec)
    assert recipe.weight.method == "tamp" and recipe.token.method == "aim"
    assert recipe.weight.calib == expand_calib(SHAREGPT4V)
    assert recipe.token.model_problem(FAMILY, 36) is None


# ---- DeepStack and the token seam -------------------------------------------------------------------------------
def _every_other_visual(d: DropInput) -> Kept:
    visual = torch.nonzero(d.visual).flatten()
    dropped = visual[1::2]
    keep = torch.ones(d.hidden.shape[0], dtype=torch.bool, device=d.hidden.device)
    keep[dropped] = False
    return Kept(torch.nonzero(keep).flatten())


def _keep_all(d: DropInput) -> Kept:
    return Kept(torch.arange(d.hidden.shape[0], device=d.hidden.device))


def test_deepstack_features_reach_the_logits(tiny) -> None:
    """The tiny model's DeepStack is live: with the features' projections zeroed the logits change."""
    _, model, _, inputs = tiny
    with torch.no_grad():
        base = model(**inputs).logits
        params = [p for m in model.model.visual.deepstack_merger_list for p in m.linear_fc2.parameters()]
        saved = [p.clone() for p in params]
        try:
            for p in params:
                p.zero_()
            plain = model(**inputs).logits
        finally:
            for p, value in zip(params, saved):
                p.copy_(value)
    assert not torch.allclose(base, plain, atol=1e-4)
    assert internals.deepstack_step(model.model.language_model) is not None


@pytest.mark.parametrize("layers", ((0,), (1,), (0, 1)))
def test_keeping_everything_with_deepstack_changes_nothing(tiny, layers: tuple[int, ...]) -> None:
    _, model, _, inputs = tiny
    with torch.no_grad():
        base = model(**inputs).logits
        editor = SequenceEditor(model, get_adapter(model), TokenPlan({i: Drop(_keep_all) for i in layers}))
        try:
            got = model(**inputs).logits
        finally:
            editor.remove()
    torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", ((0,), (1,), (0, 1)))
def test_drops_with_deepstack_generate_as_a_masked_recompute(tiny, layers: tuple[int, ...]) -> None:
    """Drops before layer 0 and / or layer 1 (DeepStack adds after layers 0, 1 and 2): cached greedy generation
    equals recomputing the whole sequence each step with the dropped tokens masked as keys, where the model itself
    adds every feature at its own token."""
    _, model, proc, inputs = tiny
    media = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")]
    editor = SequenceEditor(model, get_adapter(model), TokenPlan({i: Drop(_every_other_visual) for i in layers}))
    check_cached_generation(model, inputs, media, editor, steps=3)
    dropped = {1: 2, 2: 3}[len(layers)]  # of the 4 visual tokens: every other one, then every other one left
    assert editor.kept_by_layer[3].shape[1] == inputs["input_ids"].shape[1] - dropped


def test_each_kept_token_keeps_its_own_3d_rotary_position(tiny) -> None:
    """Layer 1 after a drop gets the interleaved mrope cos / sin the model computed for the full prompt, at the kept
    tokens' columns."""
    _, model, _, inputs = tiny
    layer = get_adapter(model).language_stack(model).layers[1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(mod, args, kwargs) -> None:
        seen.append(kwargs["position_embeddings"])

    with torch.no_grad():
        probe = layer.register_forward_pre_hook(record, with_kwargs=True)
        try:
            model(**inputs)
        finally:
            probe.remove()
        editor = SequenceEditor(model, get_adapter(model), TokenPlan({1: Drop(_every_other_visual)}))
        probe = layer.register_forward_pre_hook(record, with_kwargs=True)  # after the editor's: what layer 1 gets
        try:
            model(**inputs)
        finally:
            probe.remove()
            editor.remove()
    kept = editor.kept_by_layer[1][0]
    assert kept.numel() == inputs["input_ids"].shape[1] - 2
    for full, cut in zip(seen[0], seen[1]):
        assert torch.equal(cut, full[:, kept])
    # the image's tokens share the temporal row but not their (height, width) rows: positions are truly 3-D
    cos = seen[0][0][0]
    visual = torch.nonzero(inputs["input_ids"][0] == get_adapter(model).media_token_ids["image"][0]).flatten()
    assert len({tuple(cos[t].tolist()) for t in visual.tolist()}) == visual.numel()


def test_a_moved_deepstack_step_is_named(tiny, monkeypatch) -> None:
    _, model, _, _ = tiny
    stack = get_adapter(model).language_stack(model)
    monkeypatch.setattr(internals, "DEEPSTACK_METHOD", "_no_such_step")
    with pytest.raises(internals.MovedInternal, match="_no_such_step"):
        internals.route_deepstack(model, stack.name, lambda h, m, f: (m, f))
