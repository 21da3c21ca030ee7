"""AIM with the release's semantics (`aim_semantics=release`, `aim_merge_schedule=release`, the defaults) against
plain re-statements of LaVi-Lab/AIM: its two merge passes (r = n // 2, then n // 4 of the frame's original
count, each capped at half of what is left), its survivor order ([unmerged sources by falling similarity,
destinations]) and its re-packed positions (the merged sequence run as if it were the prompt), video frames only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tamp.algorithms.token_merge import merge_passes, release_passes
from tamp.errors import TampError
from tamp.inference.sequence_edit import DropInput
from tamp.methods.aim import plan
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn

DEFAULTS = {"aim_stages": "merge+prune", "aim_merge_keep": 0.25, "aim_merge_schedule": "release",
            "aim_semantics": "release", "aim_prune_start": -1, "aim_prune_step": 0.125, "aim_tau": 0.1, "aim_iters": 5}


def _release_merge(tokens: list[list[float]], r_per_pass: list[int]) -> tuple[list[int], list[list[float]]]:
    """The release's bipartite_soft_matching_merge called once per r, written out: even tokens are sources, odd
    ones destinations; each source's most cosine-similar destination (the first on ties); sources ranked by that
    similarity (earlier first on ties); the top r averaged into their destinations with them; the output is
    [the other sources in ranked order, every destination]."""
    positions, x = list(range(len(tokens))), [list(t) for t in tokens]
    for r in r_per_pass:
        r = min(r, len(x) // 2)
        if r <= 0:
            continue
        src, dst = list(range(0, len(x), 2)), list(range(1, len(x), 2))
        best = {}
        for s in src:
            sims = [sum(a * b for a, b in zip(x[s], x[d])) /
                    max(math.sqrt(sum(a * a for a in x[s])) * math.sqrt(sum(b * b for b in x[d])), 1e-300)
                    for d in dst]
            best[s] = (max(sims), dst[sims.index(max(sims))])
        ranked = sorted(src, key=lambda s: (-best[s][0], s))
        sums = {d: list(x[d]) for d in dst}
        counts = dict.fromkeys(dst, 1)
        for s in ranked[:r]:
            d = best[s][1]
            sums[d] = [a + b for a, b in zip(sums[d], x[s])]
            counts[d] += 1
        order = ranked[r:] + dst
        x = [list(x[i]) if i not in sums else [v / counts[i] for v in sums[i]] for i in order]
        positions = [positions[i] for i in order]
    return positions, x


def test_release_passes_halve_the_original_count() -> None:
    assert release_passes(196, 0.25) == [98, 49]
    assert release_passes(196, 0.125) == [98, 49, 24]  # the release's commented third pass: 196 -> 98 -> 49 -> 25
    assert release_passes(9, 0.5) == [4] and release_passes(5, 1.0) == []
    with pytest.raises(ValueError, match="1/2, 1/4, 1/8"):
        release_passes(10, 0.3)


@pytest.mark.parametrize("n", [9, 10, 13, 18, 196])
def test_merge_leaves_the_release_count(n: int) -> None:
    """The release's two passes leave 3, 3, 4, 5 of 9, 10, 13, 18 tokens (not round(n / 4) = 2, 2, 3, 4)."""
    expected = {9: 3, 10: 3, 13: 4, 18: 5, 196: 49}[n]
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert merge_passes(x, release_passes(n, 0.25))[0].numel() == expected
    # the method with its defaults, on one video frame of n tokens between two text tokens
    merge = plan(DEFAULTS, 28).drops[0]
    visual = torch.tensor([False] + [True] * n + [False])
    groups = torch.tensor([-1] + [0] * n + [-1])
    hidden = torch.cat([torch.zeros(1, 64, dtype=torch.float64), x, torch.zeros(1, 64, dtype=torch.float64)])
    kept = merge.choose(DropInput(0, hidden, visual, groups, None, n, visual))
    assert kept.positions.numel() == expected + 2 and kept.repack
    # an image (not video) is not merged with the release's semantics, and is with ours
    assert merge.choose(DropInput(0, hidden, visual, groups, None, n, torch.zeros_like(visual))).positions.numel() \
        == n + 2
    ours = plan({**DEFAULTS, "aim_semantics": "removal", "aim_merge_schedule": "share"}, 28).drops[0]
    assert ours.choose(DropInput(0, hidden, visual, groups, None, n, None)).positions.numel() == round(n / 4) + 2


@pytest.mark.parametrize("seed", range(8))
def test_release_order_matches_the_restatement(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(4, 60, (1,), generator=g))
    if seed % 2 == 0:  # +-1 entries: exact cosines, many ties
        x = torch.randint(0, 2, (n, 4), generator=g).double() * 2 - 1
    else:
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    for keep in (0.5, 0.25, 0.125):
        positions, states, _ = merge_passes(x, release_passes(n, keep), "release")
        want_pos, want_states = _release_merge(x.tolist(), release_passes(n, keep))
        assert positions.tolist() == want_pos
        torch.testing.assert_close(states, torch.tensor(want_states, dtype=torch.float64), rtol=0, atol=1e-12)


def test_release_schedule_needs_a_halving_ratio() -> None:
    with pytest.raises(TampError, match="aim_merge_keep 0.3: .*aim_merge_schedule=share"):
        plan({**DEFAULTS, "aim_merge_keep": 0.3}, 28)
    assert 0 in plan({**DEFAULTS, "aim_merge_keep": 0.3, "aim_merge_schedule": "share"}, 28).drops


def _video_inputs(model_path, frames: int = 4) -> dict:
    from tamp.processors import load_processor

    proc = load_processor(model_path)
    video = np.random.default_rng(0).integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(proc(text=[prompt], videos=[video], return_tensors="pt"))


def _embeddings(model, inputs: dict) -> torch.Tensor:
    """The states entering the first decoder layer of the untransformed model."""
    seen: list[torch.Tensor] = []
    first = get_adapter(model).language_stack(model).layers[0]
    hook = first.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def _language_logits(model, embeds: torch.Tensor) -> torch.Tensor:
    """The release's LLM call: the merged sequence as inputs_embeds, positions 0..T'-1, a plain causal mask."""
    stack = get_adapter(model).language_stack(model)
    language = model.get_submodule(stack.name.rsplit(".", 1)[0])
    with torch.no_grad():
        hidden = language(inputs_embeds=embeds[None], use_cache=False).last_hidden_state
        return model.get_output_embeddings()(hidden)[0]


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
def test_video_merge_equals_the_release_run(tiny_model, implementation: str) -> None:
    """LLaVA-OneVision video (the release's model): each frame merged by the restated release passes, survivors
    in its order, the new sequence run through the LLM as a prompt; our logits at the survivors equal its to
    1e-4, and cached greedy decoding continues from the re-packed length (equal to decoding the release's prompt)."""
    from transformers import AutoModelForImageTextToText

    path = tiny_model("llava-onevision")
    model = attn(AutoModelForImageTextToText.from_pretrained(path).eval(), implementation)
    inputs = _video_inputs(path)
    embeds = _embeddings(model, inputs)
    media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
    video_id = get_adapter(model).media_token_ids["video"][0]
    positions = torch.nonzero(inputs["input_ids"][0] == video_id).flatten().tolist()
    frames = int(inputs["pixel_values_videos"].shape[1])
    per = len(positions) // frames
    rows: dict[int, torch.Tensor] = {}
    order = list(range(positions[0]))
    for f in range(frames):
        members = positions[f * per:(f + 1) * per]
        kept, states = _release_merge(embeds[members].double().tolist(), release_passes(per, 0.5))
        for k, s in zip(kept, states):
            rows[members[k]] = torch.tensor(s, dtype=embeds.dtype)
            order.append(members[k])
    order += list(range(positions[frames * per], embeds.shape[0]))  # the closing newline and the text after it
    merged = torch.stack([rows.get(p, embeds[p]) for p in order])
    expected = _language_logits(model, merged)

    dropper = TokenTransform.build("aim", {"aim_stages": "merge", "aim_merge_keep": 0.5}).install(model)
    try:
        with torch.no_grad():
            ours = model(**inputs).logits[0]
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media)
    finally:
        dropper.remove()
    assert dropper.kept_by_layer[0][0].tolist() == order
    torch.testing.assert_close(ours[order], expected, rtol=0, atol=1e-4)
    # decoding: the release's prompt is the merged sequence; greedy steps from it by hand, no cache
    seq = merged
    language_embed = model.get_input_embeddings()
    steps = []
    for _ in range(3):
        last = _language_logits(model, seq)[-1]
        last[media] = -torch.inf
        token = int(last.argmax())
        steps.append(token)
        seq = torch.cat([seq, language_embed(torch.tensor([token]))])
    assert generated[0, inputs["input_ids"].shape[1]:].tolist() == steps


@pytest.mark.parametrize("family", FAMILIES)
def test_images_are_not_merged_with_release_semantics(loaded, family: str) -> None:
    """The release merges video frames only: on an image prompt the merge stage alone changes nothing."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    with torch.no_grad():
        base = model(**inputs).logits
        dropper = TokenTransform.build("aim", {"aim_stages": "merge"}).install(model)
        try:
            same = model(**inputs).logits
        finally:
            dropper.remove()
    assert torch.equal(base, same)
    assert dropper.kept_by_layer[0][0].tolist() == list(range(inputs["input_ids"].shape[1]))
