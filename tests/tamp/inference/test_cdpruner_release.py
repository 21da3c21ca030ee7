"""CDPruner on every tiny image family against a plain re-statement of Theia-4869/CDPruner's selection: each crop's
features after the projector (LLaVA-NeXT: the vision tower and projector run by hand on every crop, padding
included; elsewhere each run of visual tokens entering the LLM), the instruction as the input embeddings of the
text after the image, the relevance, kernel and determinant greedy of tests/tamp/algorithms/test_conditional_dpp.py,
and the release's layout (LLaVA-NeXT's tile masks through the unpadded grid, every newline kept). The tiny models'
choices are checked to be well separated (every step's best determinant clearly ahead), so the picks are stable.
Keeping every token, cached generation against a recompute, batches and FLOPs: the shared checks
(tests/tamp/inference/methods.py) in test_token_drop.py, test_batched_drops.py and test_flops.py."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.errors import TampError
from tamp.inference.sequence_edit import DropInput
from tamp.methods.cdpruner import instruction, plan
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_conditional_dpp import _greedy_by_determinant, _kernel_by_hand, _relevance_by_hand
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_aim_release import _embeddings, _language_logits

KEEP = 0.3


def _next_crops(model, inputs: dict) -> tuple[torch.Tensor, int, int]:
    """LLaVA-NeXT as the release runs it: every crop through the vision tower, the feature layer's patches (no
    [CLS]) through the projector: [crops, patches, D]; and the tile grid (high, wide)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config = model.config
    high, wide = get_anyres_image_grid_shape(inputs["image_sizes"][0].tolist(), config.image_grid_pinpoints,
                                             config.vision_config.image_size)
    pixels = inputs["pixel_values"][0, :1 + high * wide]
    with torch.no_grad():
        out = model.model.vision_tower(pixels, output_hidden_states=True)
        features = out.hidden_states[config.vision_feature_layer][:, 1:]
        return model.model.multi_modal_projector(features).float(), high, wide


_EXPECTED: dict[tuple[int, float, str], list[int]] = {}  # the re-statement's answer per model, keep and span


def _expected(model, inputs: dict, keep: float, span: str = "after") -> list[int]:
    """Every text position plus the release's picks of each crop; the instruction is the text after the image
    (`after`) or every text token (`all`)."""
    key = (id(model), keep, span)
    if key not in _EXPECTED:
        _EXPECTED[key] = _restated(model, inputs, keep, span)
    return _EXPECTED[key]


def _restated(model, inputs: dict, keep: float, span: str) -> list[int]:
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    embeds = _embeddings(model, inputs)
    adapter = get_adapter(model)
    visual_ids = {i for m in ("image", "video") for i in adapter.media_token_ids.get(m, [])}
    ids = inputs["input_ids"][0].tolist()
    visual = [t in visual_ids for t in ids]
    last = max(i for i, v in enumerate(visual) if v)
    text = [i for i in range(last + 1, len(ids))] if span == "after" else []
    text = text or [i for i, v in enumerate(visual) if not v]
    texts = model.get_input_embeddings()(torch.tensor([ids[i] for i in text])).double().tolist()
    runs, t = [], 0
    while t < len(ids):
        end = t
        while end < len(ids) and visual[end]:
            end += 1
        if end > t:
            runs.append((t, end))
        t = end + 1 if end == t else end
    next_grid = model.config.model_type == "llava_next"
    if next_grid:
        features, high, wide = _next_crops(model, inputs)
        crops = [c.double().tolist() for c in features]
    else:
        crops = [embeds[s:e].double().tolist() for s, e in runs]
    relevance = _relevance_by_hand(crops, texts)
    picks = []
    for crop, rel in zip(crops, relevance):
        chosen, gap = _greedy_by_determinant(_kernel_by_hand(crop, rel), int(round(len(crop) * keep)))
        assert gap > 1e-4, "the tiny model's choice is too close to be stable across CPUs"
        picks.append(chosen)
    kept = [i for i, v in enumerate(visual) if not v]
    if not next_grid:
        for (start, _), chosen in zip(runs, picks):
            kept += [start + j for j in chosen]
        return sorted(kept)
    patches = len(crops[0])
    masks = torch.zeros(len(crops), patches, dtype=torch.bool)
    for c, chosen in enumerate(picks):
        masks[c, chosen] = True
    side = math.isqrt(patches)
    tiles = masks[1:].view(high, wide, side, side).permute(0, 2, 1, 3).reshape(1, high * side, wide * side)
    tiles = unpad_image(tiles, inputs["image_sizes"][0].tolist())
    tiles = torch.cat([tiles, torch.ones(*tiles.shape[:-1], 1, dtype=torch.bool)], dim=-1)
    image = torch.cat([masks[0], tiles.flatten()])
    (start, end), = runs
    assert image.numel() == end - start
    return sorted(kept + (start + torch.nonzero(image).flatten()).tolist())


def _run(model, inputs: dict, params: dict):
    dropper = TokenTransform.build("cdpruner", params).install(model)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0]
    finally:
        dropper.remove()
    return logits, dropper


@pytest.mark.parametrize("family", FAMILIES)
def test_keeps_the_release_choice(loaded, family: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    expected = _expected(model, inputs, KEEP)
    _, dropper = _run(model, inputs, {"cdpruner_keep": KEEP})
    assert dropper.kept_by_layer[0][0].tolist() == expected
    stats = dropper.history[-1]
    assert stats.visual_kept_per_layer[0] < stats.visual_in and stats.scoring_flops > 0


@pytest.mark.parametrize("family", ("llava", "llava-next"))
def test_release_prompt_and_cached_generation(loaded, family: str) -> None:
    """The release's models: our logits at the kept tokens equal the shortened prompt run as the release runs it
    (inputs_embeds, positions 0..T'-1), and cached greedy decoding equals decoding that prompt by hand."""
    model, inputs, media = loaded(family)
    attn(model, "sdpa")
    expected = _expected(model, inputs, KEEP)
    seq = _embeddings(model, inputs)[expected]
    ours, _ = _run(model, inputs, {"cdpruner_keep": KEEP})
    torch.testing.assert_close(ours[expected], _language_logits(model, seq), rtol=0, atol=1e-4)
    dropper = TokenTransform.build("cdpruner", {"cdpruner_keep": KEEP}).install(model)
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


@pytest.mark.parametrize("family", ("llava", "qwen2-vl"))
def test_every_text_token_can_be_the_instruction(loaded, family: str) -> None:
    """`cdpruner_text=all`: the relevance to every text token of the prompt (system prompt and template included)."""
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    expected = _expected(model, inputs, KEEP, "all")
    _, dropper = _run(model, inputs, {"cdpruner_keep": KEEP, "cdpruner_text": "all"})
    assert dropper.kept_by_layer[0][0].tolist() == expected


def test_budget_is_the_share_per_crop() -> None:
    from tamp.recipe import build_recipe

    recipe = build_recipe("cdpruner", 0, overrides=["token_budget=0.222"])
    assert recipe.token is not None and recipe.token.params["cdpruner_keep"] == pytest.approx(0.222)
    assert recipe.token.params["cdpruner_count"] == "image"


def _image_count_restated(model, inputs: dict, keep: float) -> tuple[list[int], int, int]:
    """`cdpruner_count=image` on LLaVA-NeXT, written out: the image keeps round(keep x its tokens), its newlines
    among them; the rest are split over the crops in proportion to the patches each has in the prompt (a running
    total, rounded), and each crop's DPP picks among those patches only, the relevance min-max normalised over
    every crop's full grid as the release's call does. Returns (kept positions, visual tokens kept, the
    least it can keep: the newlines and a patch per crop)."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    ids = inputs["input_ids"][0].tolist()
    visual = [t == model.config.image_token_id for t in ids]
    start, last = visual.index(True), max(i for i, v in enumerate(visual) if v)
    texts = model.get_input_embeddings()(torch.tensor(ids[last + 1:])).double().tolist()
    features, high, wide = _next_crops(model, inputs)
    crops = [c.double().tolist() for c in features]
    relevance = _relevance_by_hand(crops, texts)
    patches, side = len(crops[0]), math.isqrt(len(crops[0]))
    index = torch.arange(high * wide * patches).view(high, wide, side, side).permute(0, 2, 1, 3)
    index = unpad_image(index.reshape(1, high * side, wide * side), inputs["image_sizes"][0].tolist())[0]
    newlines = index.shape[0]
    held = [list(range(patches))] + [sorted(int(i) % patches for i in index.flatten() if int(i) // patches == c)
                                     for c in range(high * wide)]
    total = max(int(round(keep * (last + 1 - start))) - newlines, len(crops))
    counts, taken, seen = [], 0, 0
    for h in held:
        seen += len(h)
        counts.append(min(len(h), max(0, int(round(total * seen / sum(map(len, held)))) - taken)))
        taken += counts[-1]
    chosen = []
    for crop, rel, h, count in zip(crops, relevance, held, counts):
        picks, gap = _greedy_by_determinant(_kernel_by_hand([crop[i] for i in h], [rel[i] for i in h]), count)
        assert gap > 1e-4, "the tiny model's choice is too close to be stable across CPUs"
        chosen.append({h[i] for i in picks})
    kept = [i for i, v in enumerate(visual) if not v] + [start + j for j in sorted(chosen[0])]
    at = start + patches
    for row in index.tolist():
        for i in row:
            if i % patches in chosen[1 + i // patches]:
                kept.append(at)
            at += 1
        kept.append(at)  # the row's newline
        at += 1
    assert at == last + 1
    return sorted(kept), newlines + total, newlines + len(crops)


@pytest.mark.parametrize("keep", (0.333, 0.111))
def test_the_image_count_keeps_the_share_of_the_image(loaded, keep: float) -> None:
    """LLaVA-NeXT, `cdpruner_count=image` (the token budget's): round(keep x the image's tokens) in all, newlines
    counted, each crop's picks among its patches in the prompt."""
    model, inputs, _ = loaded("llava-next")
    attn(model, "sdpa")
    expected, count, least = _image_count_restated(model, inputs, keep)
    _, dropper = _run(model, inputs, {"cdpruner_keep": keep, "cdpruner_count": "image"})
    assert dropper.kept_by_layer[0][0].tolist() == expected
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert dropper.history[-1].visual_kept_per_layer[0] == count
    assert count == max(round(keep * visual), least), (visual, count, least)


def _seen(visual: list[bool]) -> DropInput:
    flags = torch.tensor(visual)
    groups = torch.where(flags, torch.zeros(len(visual), dtype=torch.long), torch.full((len(visual),), -1))
    hidden = torch.randn(len(visual), 8, generator=torch.Generator().manual_seed(0))
    return DropInput(layer=0, hidden=hidden, visual=flags, groups=groups, scores=None, visual_at_entry=int(flags.sum()))


def test_the_instruction_span_and_a_prompt_without_text() -> None:
    """`after` falls back to every text token when nothing follows the image; no text at all is refused in one
    line."""
    seen = _seen([False, False, True, True, True, True])
    assert torch.equal(instruction(seen, "after"), seen.hidden[:2])
    seen = _seen([False, True, True, False])
    assert torch.equal(instruction(seen, "after"), seen.hidden[3:])
    assert torch.equal(instruction(seen, "all"), seen.hidden[[0, 3]])
    choose = plan({"cdpruner_keep": 0.5, "cdpruner_text": "after", "cdpruner_theta": -1.0,
                   "cdpruner_positions": "release", "cdpruner_count": "crop"}, 2).drops[0].choose
    with pytest.raises(TampError, match="no text tokens") as caught:
        choose(_seen([True] * 4))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", ("llava-onevision", "qwen2-vl"))
def test_each_video_frame_is_a_crop(tiny_model, family: str) -> None:
    """No released video path: each frame (the video's run cut into equal frames, OneVision's closing newline a
    group of its own) picks round(n x keep) by the re-statement, relevance normalised over all of them."""
    from transformers import AutoModelForImageTextToText

    from tests.tamp.inference.test_aim_release import _video_inputs

    path = tiny_model(family)
    model = attn(AutoModelForImageTextToText.from_pretrained(path).eval(), "sdpa")
    inputs = _video_inputs(path)
    frames = int(inputs["video_grid_thw"][0, 0]) if "video_grid_thw" in inputs else \
        int(inputs["pixel_values_videos"].shape[1])
    video_id = get_adapter(model).media_token_ids["video"][0]
    ids = inputs["input_ids"][0].tolist()
    where = [i for i, t in enumerate(ids) if t == video_id]
    per = len(where) // frames
    groups = [where[k * per:(k + 1) * per] for k in range(frames)] + ([where[frames * per:]] if len(where) % per else [])
    embeds = _embeddings(model, inputs)
    texts = model.get_input_embeddings()(torch.tensor(ids[where[-1] + 1:])).double().tolist()
    crops = [embeds[g].double().tolist() for g in groups]
    kept = [i for i in range(len(ids)) if i not in set(where)]
    for group, crop, rel in zip(groups, crops, _relevance_by_hand(crops, texts)):
        chosen, gap = _greedy_by_determinant(_kernel_by_hand(crop, rel), int(round(len(crop) * KEEP)))
        assert gap > 1e-4, "the tiny model's choice is too close to be stable across CPUs"
        kept += [group[j] for j in chosen]
    _, dropper = _run(model, inputs, {"cdpruner_keep": KEEP})
    assert dropper.kept_by_layer[0][0].tolist() == sorted(kept)
