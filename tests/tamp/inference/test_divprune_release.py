"""DivPrune on the tiny models against a plain re-statement of vbdi/divprune: the visual tokens entering the LLM
(the projector's output), each image's max-min subset by the release's loop (tests/tamp/algorithms/
test_diverse_subset.py), the kept tokens in their order; with the release's positions, the shortened sequence run
through the LLM as the prompt (inputs_embeds, positions 0..T'-1), decoding continuing from T'."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_diverse_subset import _distances_by_hand, _release_by_hand
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_aim_release import _embeddings, _language_logits


def _expected_kept(model, inputs: dict, keep: float) -> tuple[list[int], torch.Tensor]:
    """Every non-visual position plus, per run of visual tokens, the release's picks (round(n x keep) of them)."""
    embeds = _embeddings(model, inputs)
    adapter = get_adapter(model)
    visual_ids = {i for m in ("image", "video") for i in adapter.media_token_ids.get(m, [])}
    ids = inputs["input_ids"][0].tolist()
    kept = [i for i, t in enumerate(ids) if t not in visual_ids]
    t = 0
    while t < len(ids):
        if ids[t] not in visual_ids:
            t += 1
            continue
        end = t
        while end < len(ids) and ids[end] in visual_ids:
            end += 1
        dist = _distances_by_hand(embeds[t:end].double().tolist())
        kept += [t + j for j in _release_by_hand(dist, int(round((end - t) * keep)))]
        t = end
    return sorted(kept), embeds


@pytest.mark.parametrize("family", FAMILIES)
def test_keeps_the_release_subset(loaded, family: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    expected, _ = _expected_kept(model, inputs, 0.3)
    dropper = TokenTransform.build("divprune", {"divprune_keep": 0.3}).install(model)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        dropper.remove()
    assert dropper.kept_by_layer[0][0].tolist() == expected
    stats = dropper.history[-1]
    n_visual = stats.visual_in
    width = model.get_input_embeddings().weight.shape[1]
    if family == "smolvlm":  # one run per tile (4 tiles and the global image, 16 tokens each): one Gram matrix each
        runs = [16] * 5
        assert n_visual == sum(runs) and stats.visual_kept_per_layer[0] == sum(round(n * 0.3) for n in runs)
        assert stats.scoring_flops == sum(2.0 * n * n * width for n in runs)
        return
    assert stats.visual_kept_per_layer[0] == round(n_visual * 0.3) < n_visual  # one image: one run
    assert stats.scoring_flops == 2.0 * n_visual * n_visual * width  # the one Gram matrix


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
@pytest.mark.parametrize("family", ("llava", "llava-next", "llava-onevision"))
def test_release_positions_equal_the_release_run(loaded, family: str, implementation: str) -> None:
    """LLaVA-1.5 / NeXT (the release's models) and OneVision, 1-D rotary: the kept embeddings as the prompt,
    positions 0..T'-1; our logits at the kept tokens equal it to 1e-4, and cached greedy decoding equals decoding
    that prompt by hand."""
    model, inputs, media = loaded(family)
    attn(model, implementation)
    expected, embeds = _expected_kept(model, inputs, 0.25)
    want = _language_logits(model, embeds[expected])
    dropper = TokenTransform.build("divprune", {"divprune_keep": 0.25}).install(model)
    try:
        with torch.no_grad():
            ours = model(**inputs).logits[0]
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                       output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    torch.testing.assert_close(ours[expected], want, rtol=0, atol=1e-4)
    seq, steps = embeds[expected], []
    for step in range(3):
        last = _language_logits(model, seq)[-1]
        last[media] = -math.inf
        steps.append(int(last.argmax()))
        seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([steps[-1]]))])
        torch.testing.assert_close(generated.scores[step][0], last, rtol=0, atol=1e-4)
    assert generated.sequences[0, inputs["input_ids"].shape[1]:].tolist() == steps


@pytest.mark.parametrize("family", ("llava-onevision", "qwen2-vl"))
def test_a_video_is_one_subset(tiny_model, family: str) -> None:
    """A whole video (its frames, and OneVision's closing newline) is one run: round(n x keep) of its n tokens,
    the re-statement's picks."""
    from transformers import AutoModelForImageTextToText

    from tests.tamp.inference.test_aim_release import _video_inputs

    path = tiny_model(family)
    model = attn(AutoModelForImageTextToText.from_pretrained(path).eval(), "sdpa")
    inputs = _video_inputs(path)
    expected, _ = _expected_kept(model, inputs, 0.2)
    dropper = TokenTransform.build("divprune", {"divprune_keep": 0.2}).install(model)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        dropper.remove()
    stats = dropper.history[-1]
    assert dropper.kept_by_layer[0][0].tolist() == expected
    assert stats.visual_kept_per_layer[0] == round(stats.visual_in * 0.2)


def test_budget_is_the_release_ratio() -> None:
    from tamp.recipe import build_recipe

    recipe = build_recipe("divprune", 0, overrides=["token_budget=0.111"])
    assert recipe.token is not None and recipe.token.params["divprune_keep"] == pytest.approx(0.111)
