"""VisionZip and VisPruner on the tiny CLIP models (LLaVA-1.5, LLaVA-NeXT) against plain re-statements of their
released code: the vision tower run as the releases run it (eager attention, `output_attentions=True`, every
layer's full matrix), the feature layer's [CLS] row, mean key and output states read from that run, each crop's
choice by the loop re-statements of tests/tamp/algorithms/test_cls_select.py, and the release's layout of an
image's tokens (VisionZip's restore of the tile grid, VisPruner's masks through the unpadded grid). Ours computes
the [CLS] row from the layer's own query and key, under eager and sdpa alike. Families without a [CLS] token are
refused with one line."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tamp.errors import TampError
from tamp.inference.flops import ModelShape
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_cls_select import visionzip_by_hand, vispruner_by_hand
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_aim_release import _embeddings, _language_logits

CLS_FAMILIES = ("llava", "llava-next")
SETTINGS = {"visionzip": {"visionzip_keep": 0.5, "visionzip_contextual": 0.25},
            "vispruner": {"vispruner_keep": 0.5, "vispruner_important": 0.5}}
KEEP_ALL = {"visionzip": {"visionzip_keep": 1.0}, "vispruner": {"vispruner_keep": 1.0}}


def _release_vision(model, inputs: dict) -> dict:
    """The releases' vision call, per crop: the feature layer's attention [crops, H, T, T], output [crops, T, C] and
    keys averaged over heads [crops, T, d] (its k_proj output split into heads); the tile grid (high, wide)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    tower = get_adapter(model).vision_stack(model)
    config = model.config
    pixels, high, wide = inputs["pixel_values"], 0, 0
    if pixels.dim() == 5:  # LLaVA-NeXT: [images, crops, 3, H, W], the base tile then the tiles row-major
        high, wide = get_anyres_image_grid_shape(inputs["image_sizes"][0].tolist(), config.image_grid_pinpoints,
                                                 config.vision_config.image_size)
        pixels = pixels[0, :1 + high * wide]
    layer_index = config.vision_feature_layer
    layer = list(tower.layers)[layer_index]
    keys: list[torch.Tensor] = []
    hook = layer.self_attn.k_proj.register_forward_hook(lambda mod, args, out: keys.append(out))
    clip = model.get_submodule(tower.name.rsplit(".", 2)[0])  # the vision model owning encoder.layers
    saved = model.config._attn_implementation
    attn(model, "eager")
    try:
        with torch.no_grad():
            out = clip(pixels, output_hidden_states=True, output_attentions=True)
    finally:
        hook.remove()
        attn(model, saved)
    heads = config.vision_config.num_attention_heads
    key = keys[0].view(*keys[0].shape[:2], heads, -1).mean(dim=2)
    return {"attn": out.attentions[layer_index], "hidden": out.hidden_states[layer_index], "keys": key,
            "high": high, "wide": wide}


def _image_run(model, inputs: dict) -> tuple[int, int]:
    ids = inputs["input_ids"][0].tolist()
    image = model.config.image_token_index
    start = ids.index(image)
    return start, start + ids.count(image)


def _visionzip_expected(model, inputs: dict, keep: float, share: float) -> torch.Tensor:
    """The sequence entering the LLM in the release: the image's tokens replaced by [CLS, dominant, contextual]
    of the base crop, then (LLaVA-NeXT) the tiles' dominant tokens in the full tile grid (restore_image_features_
    sorted: a [tiles, P] mask viewed as (high, wide, side, side), permuted to rows), their [CLS], their contextual."""
    seen = _release_vision(model, inputs)
    patches = seen["hidden"].shape[1] - 1
    total = int(round(patches * keep))
    contextual = int(round(total * share))
    dominant = total - contextual  # the release's `dominant`, [CLS] included
    crops = []
    for c in range(seen["hidden"].shape[0]):
        chosen, merged = visionzip_by_hand(seen["attn"][c, :, 0, 1:].sum(dim=0).tolist(), seen["keys"][c].tolist(),
                                           seen["hidden"][c].tolist(), dominant - 1, contextual)
        crops.append((chosen, torch.tensor(merged).reshape(-1, seen["hidden"].shape[-1])))
    hidden = seen["hidden"]
    rows = [hidden[0, :1], hidden[0, [1 + i for i in crops[0][0]]], crops[0][1]]
    if len(crops) > 1:
        side, high, wide = math.isqrt(patches), seen["high"], seen["wide"]
        restored = torch.zeros(len(crops) - 1, patches, hidden.shape[-1])
        mask = torch.zeros(len(crops) - 1, patches, dtype=torch.bool)
        for t, (chosen, _) in enumerate(crops[1:]):
            mask[t, chosen] = True
            restored[t, chosen] = hidden[t + 1, [1 + i for i in chosen]]
        grid = restored.view(high, wide, side, side, -1).permute(0, 2, 1, 3, 4).reshape(-1, hidden.shape[-1])
        rows.append(grid[mask.view(high, wide, side, side).permute(0, 2, 1, 3).reshape(-1)])
        rows += [hidden[t, :1] for t in range(1, len(crops))] + [merged for _, merged in crops[1:]]
    with torch.no_grad():
        states = model.model.multi_modal_projector(torch.cat(rows))
    embeds = _embeddings(model, inputs)
    start, end = _image_run(model, inputs)
    return torch.cat([embeds[:start], states, embeds[end:]])


def _vispruner_expected(model, inputs: dict, keep: float, ratio: float) -> list[int]:
    """Every text position plus the image's kept ones: each crop's release mask, LLaVA-NeXT's tiles through the
    unpadded grid (the release's view, permute, unpad_image) with every newline kept."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    seen = _release_vision(model, inputs)
    patches = seen["hidden"].shape[1] - 1
    count = int(round(patches * keep))
    masks = torch.zeros(seen["hidden"].shape[0], patches, dtype=torch.bool)
    for c in range(masks.shape[0]):
        masks[c, vispruner_by_hand(seen["attn"][c, :, 0, 1:].mean(dim=0).tolist(),
                                   seen["hidden"][c, 1:].tolist(), count, ratio)] = True
    image = masks[0]
    if masks.shape[0] > 1:
        side, high, wide = math.isqrt(patches), seen["high"], seen["wide"]
        tiles = masks[1:].view(high, wide, side, side).permute(0, 2, 1, 3).reshape(1, high * side, wide * side)
        tiles = unpad_image(tiles, inputs["image_sizes"][0].tolist())
        tiles = torch.cat([tiles, torch.ones(*tiles.shape[:-1], 1, dtype=torch.bool)], dim=-1)
        image = torch.cat([image, tiles.flatten()])
    start, end = _image_run(model, inputs)
    assert image.numel() == end - start
    n = inputs["input_ids"].shape[1]
    return list(range(start)) + (start + torch.nonzero(image).flatten()).tolist() + list(range(end, n))


def _first_layer_input(model, dropper_method: str, params: dict, inputs: dict):
    """Our run: the logits, the states entering decoder layer 0 (after the drop) and the editor."""
    seen: list[torch.Tensor] = []
    dropper = TokenTransform.build(dropper_method, params).install(model)
    first = get_adapter(model).language_stack(model).layers[0]
    hook = first.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0]
    finally:
        hook.remove()
        dropper.remove()
    return logits, seen[0], dropper


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_visionzip_states_equal_the_release(loaded, family: str, implementation: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, implementation)
    want = _visionzip_expected(model, inputs, 0.5, 0.25)
    logits, states, dropper = _first_layer_input(model, "visionzip", SETTINGS["visionzip"], inputs)
    assert states.shape == want.shape
    torch.testing.assert_close(states, want, rtol=0, atol=1e-5)
    kept = dropper.kept_by_layer[0][0]
    torch.testing.assert_close(logits[kept], _language_logits(model, want), rtol=0, atol=1e-4)


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_vispruner_keeps_the_release_tokens(loaded, family: str, implementation: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, implementation)
    expected = _vispruner_expected(model, inputs, 0.5, 0.5)
    logits, _, dropper = _first_layer_input(model, "vispruner", SETTINGS["vispruner"], inputs)
    assert dropper.kept_by_layer[0][0].tolist() == expected
    embeds = _embeddings(model, inputs)
    torch.testing.assert_close(logits[expected], _language_logits(model, embeds[expected]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ("visionzip", "vispruner"))
@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_cached_generation_equals_the_release_prompt(loaded, family: str, method: str) -> None:
    """Greedy decoding with the KV cache equals decoding the release's shortened prompt by hand, step by step."""
    model, inputs, media = loaded(family)
    attn(model, "sdpa")
    if method == "visionzip":
        seq = _visionzip_expected(model, inputs, 0.5, 0.25)
    else:
        seq = _embeddings(model, inputs)[_vispruner_expected(model, inputs, 0.5, 0.5)]
    dropper = TokenTransform.build(method, SETTINGS[method]).install(model)
    try:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                   output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    steps = []
    for step in range(3):
        last = _language_logits(model, seq)[-1]
        last[media] = -math.inf
        steps.append(int(last.argmax()))
        seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([steps[-1]]))])
        torch.testing.assert_close(generated.scores[step][0], last, rtol=0, atol=1e-4)
    assert generated.sequences[0, inputs["input_ids"].shape[1]:].tolist() == steps


@pytest.mark.parametrize("method", ("visionzip", "vispruner"))
@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_keeping_every_patch_leaves_the_logits(loaded, family: str, method: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    with torch.no_grad():
        dense = model(**inputs).logits
    dropper = TokenTransform.build(method, KEEP_ALL[method]).install(model)
    try:
        with torch.no_grad():
            ours = model(**inputs).logits
    finally:
        dropper.remove()
    torch.testing.assert_close(ours, dense, rtol=0, atol=1e-6)
    assert dropper.history[-1].scoring_flops > 0  # the [CLS] row was still computed


def _total(model, inputs: dict) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return float(counter.get_total_flops())


@pytest.mark.parametrize("budget", (None, 0.222))
@pytest.mark.parametrize("method", ("visionzip", "vispruner"))
@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_flops_match_the_counter(loaded, family: str, method: str, budget: float | None) -> None:
    """Everything FlopCounterMode sees (vision tower, projector, LLM) with the method, less the dense run, equals
    the analytic LLM difference plus what the method declared: the [CLS] row, its similarities, VisionZip's
    projection of the tokens it made (at the release's per-crop count and at the common budget's per image)."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    dense = _total(model, inputs)
    dropper = TokenTransform.build(method, SETTINGS[method] if budget is None else {"token_budget": budget}
                                   ).install(model)
    try:
        ours = _total(model, inputs)
    finally:
        dropper.remove()
    shape = ModelShape.of(model, get_adapter(model))
    n = inputs["input_ids"].shape[1]
    stats = dropper.history[-1]
    analytic = shape.prefill(stats.tokens_per_layer, n)["dense"] - shape.prefill([n] * len(stats.tokens_per_layer),
                                                                                 n)["dense"]
    assert ours - dense == pytest.approx(analytic + stats.scoring_flops, rel=1e-6)
    assert stats.tokens_per_layer[0] < n


@pytest.mark.parametrize("method", ("visionzip", "vispruner"))
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(CLS_FAMILIES)))
def test_families_without_cls_are_refused(loaded, family: str, method: str) -> None:
    model, _, _ = loaded(family)
    with pytest.raises(TampError, match=r"\[CLS\]") as caught:
        TokenTransform.build(method, SETTINGS[method]).install(model)
    assert "\n" not in str(caught.value)


def test_budget_maps_the_share() -> None:
    from tamp.recipe import build_recipe

    for method, key in (("visionzip", "visionzip_keep"), ("vispruner", "vispruner_keep")):
        recipe = build_recipe(method, 0, overrides=["token_budget=0.111"])
        assert recipe.token is not None and recipe.token.params[key] == pytest.approx(0.111)
