"""SmolVLM (`smolvlm`): the tiny build splits images as the real processor does, the adapter finds its stacks and image
token, an artifact loads with plain `SmolVLMForConditionalGeneration.from_pretrained`, and `harness run` plans the real
model with its wrapper, calibration and tasks."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tamp.families.defaults import IMAGE_TASKS, SHAREGPT4V, SMOKE_TASKS
from tamp.families.registry import families
from tamp.models.adapters import get_adapter
from tamp.pipeline import prune
from tamp.processors import load_processor
from tamp.recipe import recipe_for, weight_config


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import SmolVLMForConditionalGeneration

    path = tiny_model("smolvlm")
    return path, SmolVLMForConditionalGeneration.from_pretrained(path).eval(), load_processor(path)


def _inputs(processor, size: tuple[int, int]) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[prompt], images=[Image.new("RGB", size, (200, 30, 30))], return_tensors="pt"))


def test_config_depth_and_adapter(tiny) -> None:
    path, model, processor = tiny
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "smolvlm" and config["scale_factor"] == 2
    assert families()["smolvlm"].depth(config) == 4 == len(model.model.text_model.layers)
    adapter = get_adapter(model)
    assert adapter.family == "smolvlm"
    assert adapter.language_stack(model).name == "model.text_model.layers"
    vision = adapter.vision_stack(model)
    assert vision is not None and vision.name == "model.vision_model.encoder.layers"
    assert adapter.media_token_ids == {"image": [processor.tokenizer.convert_tokens_to_ids("<image>")]}
    assert processor.image_seq_len == 16  # (32 px / 4 px)^2 patches, pixel-shuffled by 2 x 2


@pytest.mark.parametrize(("size", "tiles"), [((64, 64), ["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>",
                                                          "<row_2_col_2>"]),
                                             ((64, 24), ["<row_1_col_1>", "<row_1_col_2>"])])
def test_each_tile_is_one_run_of_image_tokens(tiny, size: tuple[int, int], tiles: list[str]) -> None:
    """As the real processor: tiles row by row, then the global image, 16 image tokens each after its marker."""
    _, model, processor = tiny
    inputs = _inputs(processor, size)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert inputs["pixel_values"].shape[:2] == (1, len(tiles) + 1)
    markers = [t for t in tokens if t.startswith("<row_") or t == "<global-img>"]
    assert markers == [*tiles, "<global-img>"]
    for at in (i for i, t in enumerate(tokens) if t in markers):
        assert tokens[at - 1] == "<fake_token_around_image>"
        assert tokens[at + 1:at + 17] == ["<image>"] * 16 and tokens[at + 17] != "<image>"
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == len(tokens)


def test_processor_saves_as_stock_and_refuses_video(tiny) -> None:
    path, _, processor = tiny
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == "SmolVLMProcessor"
    with pytest.raises(ValueError, match="images and text only"):
        processor.replace_video_token({}, 0)


def test_artifact_loads_with_plain_from_pretrained(tiny_model, tmp_path) -> None:
    from transformers import SmolVLMForConditionalGeneration

    cfg = weight_config("magnitude", sparsity=0.5, calib="synthetic", nsamples=2, seqlen=32, seed=0)
    out = tmp_path / "art"
    prune(str(tiny_model("smolvlm")), recipe_for(cfg), out, device="cpu")
    model = SmolVLMForConditionalGeneration.from_pretrained(out)
    weight = model.model.text_model.layers[0].self_attn.q_proj.weight
    assert int((weight == 0).sum()) == weight.numel() // 2
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "SmolVLMProcessor"
    assert type(load_processor(out)).__name__ == "SmolVLMProcessorNoVideo"


def test_run_plan_names_the_wrapper_calibration_and_tasks(tmp_path) -> None:
    """`harness run --model smolvlm-256m --method tamp+aim --sparsity 0.5`, as planned before anything loads."""
    from harness.model_specs import expand_calib, resolve_model
    from harness.run import RunOptions, run_recipe

    spec = resolve_model("smolvlm-256m")
    assert (spec.source, spec.family, spec.wrapper) == ("HuggingFaceTB/SmolVLM-256M-Instruct", "smolvlm",
                                                        "tamp_smolvlm")
    assert spec.tasks == IMAGE_TASKS
    recipe = run_recipe(RunOptions(model="smolvlm-256m", sparsity=0.5, method="tamp+aim"), spec)
    assert recipe.weight.calib == expand_calib(SHAREGPT4V) and recipe.needs_calibration
    assert recipe.token is not None and recipe.token.method == "aim"
    assert recipe.token.model_problem("smolvlm", 30) is None  # SmolVLM-256M: 30 decoder layers
    assert resolve_model("tiny-smolvlm").tasks == SMOKE_TASKS


def test_wrapper_is_registered() -> None:
    from harness.wrappers import WRAPPER_CLASSES

    assert WRAPPER_CLASSES["tamp_smolvlm"] == "harness.wrappers.smolvlm.TampSmolVLM"
