"""YOPO's window grid on LLaVA-NeXT / OneVision images: the high-resolution grid `group_segments` gives must put
its last column exactly where the model puts its image_newline tokens, on the tiny models (read from their own
packed image features) and on LLaVA-NeXT-7B's shapes (read from transformers' own packing function)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tamp.inference.visual_grid import group_segments

# LLaVA-NeXT-7B (llava-hf/llava-v1.6-*-7b-hf): 336-pixel tiles of 14-pixel patches and these pinpoints
NEXT_7B = {"image_size": 336, "patch_size": 14,
           "pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]}
# (height, width) in pixels: the very tall image first, then a spread of aspects
SHAPES_7B = [(1307, 200), (200, 1307), (1000, 150), (480, 640), (640, 480), (336, 336), (500, 1400), (1600, 90),
             (90, 1600), (777, 333)]
TINY_SHAPES = [(64, 56), (56, 64), (64, 20), (20, 64), (40, 40), (64, 9)]  # (height, width); the first


def _newline_grid(features: torch.Tensor, newline: torch.Tensor, base: int) -> tuple[int, list[int]]:
    """(tokens, positions of the high-resolution newline tokens relative to the grid's start) of one image's
    packed features."""
    is_newline = (features == newline).all(-1)
    return features.shape[0], (torch.nonzero(is_newline).flatten() - base).tolist()


def _segments_newlines(config, height: int, width: int, count: int) -> tuple[int, list[int]]:
    """The high-resolution segment group_segments gives one image of `count` tokens, as (its offset, the positions
    of its last column relative to that offset)."""
    groups = torch.zeros(1, count, dtype=torch.long)
    segments = group_segments(config, {"image_sizes": torch.tensor([[height, width]])}, torch.zeros_like(groups),
                              groups)[0]
    assert len(segments) == 2, segments
    offset, rows, cols = segments[1]
    assert offset + rows * cols == count
    return offset, [r * cols + cols - 1 for r in range(rows)]


@pytest.mark.parametrize("height,width", SHAPES_7B)
def test_llava_next_7b_grid_follows_the_newlines(height: int, width: int) -> None:
    """transformers' own LlavaNextModel.pack_image_features on marker features (image 1, newline -1) gives where
    the newlines sit; the grid must close each row there (today's guess read 200 x 1307's 72 x 13 as 78 x 12)."""
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, image_size_to_num_patches

    side = NEXT_7B["image_size"] // NEXT_7B["patch_size"]
    config = LlavaNextConfig(vision_config={"model_type": "clip_vision_model", "image_size": NEXT_7B["image_size"],
                                            "patch_size": NEXT_7B["patch_size"]},
                             image_grid_pinpoints=NEXT_7B["pinpoints"])
    patches = image_size_to_num_patches((height, width), NEXT_7B["pinpoints"], NEXT_7B["image_size"])
    newline = torch.tensor([-1.0])
    packed, _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), [torch.ones(patches, side * side, 1)],
                                                   torch.tensor([[height, width]]), "default", newline)
    count, want = _newline_grid(packed[0], newline, side * side)
    offset, got = _segments_newlines(config, height, width, count)
    assert offset == side * side and got == want


@pytest.mark.parametrize("height,width", TINY_SHAPES)
@pytest.mark.parametrize("family", ("llava-next", "llava-onevision"))
def test_tiny_grid_follows_the_model_newlines(tiny_model, family: str, height: int, width: int) -> None:
    """The tiny model's own image features for an image of that size: the image_newline rows are the grid's last
    column (today: 56 wide x 64 high, 88 tokens, read as 9 x 8 where the model has 8 rows of 8 + newline)."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    path = tiny_model(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = load_processor(path)(text=["<image>"], images=[Image.new("RGB", (width, height), (90, 20, 200))],
                                  return_tensors="pt")
    assert inputs["image_sizes"].tolist() == [[height, width]]
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                             vision_feature_layer=model.config.vision_feature_layer,
                                             vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    features = out.pooler_output[0]
    count, want = _newline_grid(features, model.model.image_newline, side * side)
    assert want, "the image has a high-resolution part"
    offset, got = _segments_newlines(model.config, height, width, count)
    assert offset == side * side and got == want
