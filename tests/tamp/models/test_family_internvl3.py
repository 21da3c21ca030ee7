"""InternVL3 (`internvl3`): the tiny build, depth from config.json, the adapter's paths and image token, each tile its
own grid (pixel shuffle + dynamic tiles), artifacts that plain `InternVLForConditionalGeneration.from_pretrained`
loads, and the harness's plan for the real checkpoint (wrapper, calibration, tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tamp.families.defaults import IMAGE_TASKS, SHAREGPT4V, SMOKE_TASKS

FAMILY = "internvl3"


def _inputs(path: Path, size: tuple[int, int]) -> dict:
    from tamp.processors import load_processor

    proc = load_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(proc(text=[prompt], images=[Image.new("RGB", size, (200, 30, 30))], return_tensors="pt"))


def test_tiny_build_depth_paths_and_image_token(tiny_model) -> None:
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    from tamp.families.registry import depth, family_of
    from tamp.models.adapters import get_adapter

    path = tiny_model(FAMILY)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "internvl" and depth(config) == 4
    model = InternVLForConditionalGeneration.from_pretrained(path)
    assert family_of(model.config).name == FAMILY
    adapter = get_adapter(model)
    assert adapter.language_stack(model).name == "model.language_model.layers"
    vision = adapter.vision_stack(model)
    assert vision is not None and vision.name == "model.vision_tower.encoder.layer" and len(vision.layers) == 2
    tok = AutoTokenizer.from_pretrained(path)
    context = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert adapter.media_token_ids == {"image": [context]}
    ids = _inputs(path, (64, 64))["input_ids"]
    masks = adapter.token_masks(ids)
    # <img> and </img> frame the context tokens and count as text; 2 x 2 crops + a thumbnail, 16 tokens each
    assert int(masks["image"].sum()) == 5 * 16
    assert {tok.convert_ids_to_tokens(int(i)) for i in ids[masks["text"]]} >= {"<img>", "</img>"}


@pytest.mark.parametrize(("size", "tiles"), (((64, 64), 5), ((96, 32), 4), ((32, 32), 1)))
def test_each_tile_is_a_grid_of_its_own(tiny_model, size: tuple[int, int], tiles: int) -> None:
    """The tiles of one image form one visual group; visual_grid splits it into 4 x 4 grids, one per tile (the
    crops, then the thumbnail; a single tile has none)."""
    from transformers import AutoConfig

    from tamp.inference.sequence_edit import visual_groups
    from tamp.inference.visual_grid import group_segments, tile_side

    path = tiny_model(FAMILY)
    config = AutoConfig.from_pretrained(path)
    assert tile_side(config) == 4
    visual = _inputs(path, size)["input_ids"] == config.image_token_id
    groups = visual_groups(visual, torch.zeros_like(visual), [])
    segments = group_segments(config, {}, torch.zeros_like(visual), groups)
    assert segments == {0: [(16 * k, 4, 4) for k in range(tiles)]}


def test_artifacts_load_with_the_family_class(tiny_model, tmp_path: Path) -> None:
    from transformers import InternVLForConditionalGeneration

    from tamp.pipeline import prune
    from tamp.recipe import recipe_for, weight_config
    from tests.helpers import generate_once

    cfg = weight_config("magnitude", sparsity=0.5, prune_vision=True)
    out = tmp_path / "art"
    info = prune(str(tiny_model(FAMILY)), recipe_for(cfg), out, device="cpu")
    vision = [k for k in info["per_matrix"] if k.startswith("model.vision_tower.encoder.layer.")]
    assert len(vision) == 2 * 6  # q, k, v, projection_layer, fc1, fc2 per InternViT block
    model = InternVLForConditionalGeneration.from_pretrained(out)
    weights = dict(model.named_parameters())
    for name, entry in info["per_matrix"].items():
        w = weights[name + ".weight"]
        assert int((w == 0).sum()) == entry["zeros"] == w.numel() // 2, name
    generate_once(out, FAMILY)


def test_harness_plans_the_real_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`internvl3-8b`: its wrapper, calibration and tasks; tamp+aim composes with it; a video task is refused;
    a dry run of the sweep plans the tamp+aim cell (the weights and data are not here, so nothing runs)."""
    from harness.cli import main
    from harness.model_specs import input_problems, resolve_model
    from harness.run import RunOptions, run_recipe

    spec = resolve_model("internvl3-8b")
    assert (spec.source, spec.family, spec.wrapper) == ("OpenGVLab/InternVL3-8B-hf", FAMILY, "tamp_internvl3")
    assert spec.calib == SHAREGPT4V and spec.tasks == IMAGE_TASKS
    assert resolve_model("tiny-internvl3").tasks == SMOKE_TASKS
    recipe = run_recipe(RunOptions(model="internvl3-8b", sparsity=0.5, method="tamp+aim"), spec)
    assert recipe.name == "tamp+aim" and recipe.token is not None and recipe.needs_calibration
    assert recipe.token.model_problem(FAMILY, 28) is None
    assert "cannot take" in input_problems(spec, ["tamp_smoke_video"])[0]
    assert main(["sweep", "--model", "internvl3-8b", "--methods", "tamp+aim", "--sparsities", "0.5", "--dry-run",
                 "--out-dir", str(tmp_path / "out"), "--output", str(tmp_path / "runs"),
                 "--artifacts", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert "| internvl3-8b | tamp_internvl3 | tamp+aim |" in out and "OpenGVLab/InternVL3-8B-hf" in out
