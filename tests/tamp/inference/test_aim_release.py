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
from tamp.inference.sequence_edit import Drop, DropInput, SequenceEditor, TokenPlan
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
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                       output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    assert dropper.kept_by_layer[0][0].tolist() == order
    torch.testing.assert_close(ours[order], expected, rtol=0, atol=1e-4)
    # decoding: the release's prompt is the merged sequence; greedy steps from it by hand, no cache
    seq = merged
    language_embed = model.get_input_embeddings()
    steps = []
    for step in range(3):
        last = _language_logits(model, seq)[-1]
        last[media] = -torch.inf
        token = int(last.argmax())
        steps.append(token)
        seq = torch.cat([seq, language_embed(torch.tensor([token]))])
        torch.testing.assert_close(generated.scores[step][0], last, rtol=0, atol=1e-4)  # positions from T' on
    assert generated.sequences[0, inputs["input_ids"].shape[1]:].tolist() == steps


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


def _release_prune_run(model, inputs: dict, visual: list[int], start: int, step: float,
                       scored: dict[int, list[float]] | None = None) -> tuple[torch.Tensor, set]:
    """The release's pruning written out over an eager run: after each layer l >= start, PageRank of l's softmax
    weights (P^(1/tau) renormalised per row, a uniform start over every token, masked ones included, 5 steps,
    RMS over heads) ranks the visual tokens still unmasked; all but the top int(entering x rate(l)) are masked
    as keys (an explicit additive mask) in every later layer, and stay in the sequence as queries."""
    layers = get_adapter(model).language_stack(model).layers
    length = inputs["input_ids"].shape[1]
    masked: set[int] = set()
    hooks = []

    def explicit_mask(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        low = torch.finfo(hidden.dtype).min
        mask = torch.zeros(1, 1, length, length, dtype=hidden.dtype)
        mask = mask.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), low)
        given = kwargs.get("attention_mask")  # the model's own where it is more than causal (Gemma 3's)
        if isinstance(given, torch.Tensor) and given.dim() == 4 and tuple(given.shape[-2:]) == (length, length):
            allowed = given[:1, :1] if given.dtype == torch.bool else given[:1, :1] == 0
            mask = torch.zeros(1, 1, length, length, dtype=hidden.dtype).masked_fill(~allowed, low)
        mask[..., sorted(masked)] = low
        return args, {**kwargs, "attention_mask": mask}

    def prune_after(layer: int):
        def hook(mod, args, out) -> None:
            rate = max(0.0, 1.0 - (layer - start + 1) * step)
            weights = out[1][0].double()  # [heads, T, T], masked keys exactly 0
            walk = weights ** 10  # softmax(logits / 0.1) = P^10 renormalised
            walk = walk / walk.sum(-1, keepdim=True)
            dist = torch.full((weights.shape[0], 1, length), 1.0 / length, dtype=torch.float64)
            for _ in range(5):
                dist = dist @ walk
            scores = dist[:, 0].pow(2).mean(0).sqrt().tolist()
            if scored is not None:
                scored[layer] = scores
                # what a walk over the unmasked tokens only would give (our removal reading), for contrast
                rows = [p for p in range(length) if p not in masked]
                sub = walk[:, rows][:, :, rows]
                alone = torch.full((weights.shape[0], 1, len(rows)), 1.0 / len(rows), dtype=torch.float64)
                for _ in range(5):
                    alone = alone @ sub
                scored[-1 - layer] = alone[:, 0].pow(2).mean(0).sqrt().tolist()
            live = [p for p in visual if p not in masked]
            count = int(len(visual) * rate + 1e-9)
            masked.update(sorted(live, key=lambda p: (-scores[p], p))[count:])
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(explicit_mask, with_kwargs=True))
        if start <= i < len(layers) - 1:
            hooks.append(layer.self_attn.register_forward_hook(prune_after(i)))
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return logits, masked


@pytest.mark.parametrize("stages", ("prune", "merge+prune"))
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_equals_the_release_masking(loaded, family: str, stages: str) -> None:
    """Every image family, eager: AIM with the release's semantics (images not merged; pruned tokens masked as
    keys, kept as PageRank rows until the last prune) keeps what the written-out release keeps, and its logits
    at every token the release never masked equal the release's to 1e-4."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    ids = inputs["input_ids"][0].tolist()
    adapter = get_adapter(model)
    visual_ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    visual = [i for i, t in enumerate(ids) if t in visual_ids]
    scored: dict[int, list[float]] = {}
    expected, masked = _release_prune_run(model, inputs, visual, 1, 0.25, scored)
    params = {**DEFAULTS, "aim_stages": stages, "aim_merge_keep": 0.5, "aim_prune_start": 1, "aim_prune_step": 0.25}
    drops = plan(params, 4).drops
    seen: dict[int, torch.Tensor] = {}

    def recording(layer: int, drop: Drop) -> Drop:
        return Drop(lambda d: seen.setdefault(layer, d.scores) is not None and drop.choose(d), drop.score, drop.mask)

    drops = {i: recording(i, d) if d.score is not None else d for i, d in drops.items()}
    dropper = SequenceEditor(model, adapter, TokenPlan(drops))
    try:
        with torch.no_grad():
            ours = model(**inputs).logits[0]
    finally:
        dropper.remove()
    survivors = [i for i in range(len(ids)) if i not in masked]
    assert dropper.kept_by_layer[3][0].tolist() == survivors  # the last prune removes every masked token
    assert dropper.kept_by_layer[2][0].tolist() == list(range(len(ids)))  # masked, still in the sequence
    assert len(survivors) == len(ids) - len(visual) + len(visual) // 2 and len(masked) == len(visual) - len(visual) // 2
    torch.testing.assert_close(ours[survivors], expected[survivors], rtol=0, atol=1e-4)
    # the scores each prune read: those of the layer before, every token a row, the masked ones included (as in
    # the release's PageRank); a walk without the masked rows would read differently
    assert seen[2].shape[0] == seen[3].shape[0] == len(ids)
    for layer in (2, 3):
        torch.testing.assert_close(seen[layer].double(), torch.tensor(scored[layer - 1], dtype=torch.float64),
                                   rtol=1e-4, atol=1e-9)
    rows = torch.nonzero(~dropper.masked_by_layer[2][0]).flatten()  # what layer 2 had not masked
    assert 0 < rows.numel() < len(ids)
    alone = torch.tensor(scored[-3], dtype=torch.float64)
    assert not torch.allclose(seen[3][rows].double(), alone, rtol=1e-3, atol=0)
    stats = dropper.history[-1]
    assert stats.visual_kept_per_layer == [len(visual), len(visual), int(len(visual) * 0.75), len(visual) // 2]


class _KeysSeen:
    """The editor as the masked recompute reads it: per layer, the prompt tokens it sees as keys (what it
    cached less what a masking prune took out)."""

    def __init__(self, editor: SequenceEditor) -> None:
        self.editor, self.first_states = editor, None
        self.plan, self.installed = editor.plan, editor.installed

    @property
    def kept_by_layer(self) -> dict[int, torch.Tensor]:
        out = {}
        for i, kept in self.editor.kept_by_layer.items():
            masked = self.editor.masked_by_layer.get(i)
            out[i] = kept if masked is None else kept[:, ~masked[0]]
        return out

    def remove(self) -> None:
        self.editor.remove()


@pytest.mark.parametrize("implementation", ("sdpa", "eager"))
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_with_masked_prune(loaded, family: str, implementation: str) -> None:
    """With the release's masking, cached greedy decoding (each layer masks, in its cache, the keys it masked in
    the prefill) equals recomputing the whole sequence each step with those keys masked."""
    from tests.tamp.inference.test_token_drop import check_cached_generation

    model, inputs, media = loaded(family)
    attn(model, implementation)
    editor = TokenTransform.build("aim", {"aim_prune_start": 1, "aim_prune_step": 0.25}).install(model)
    check_cached_generation(model, inputs, media, _KeysSeen(editor))
    assert bool(editor.masked_by_layer[2].any()) and 3 not in editor.masked_by_layer  # masked, then removed


@pytest.mark.parametrize("family", ("llava-onevision", "qwen2-vl", "qwen2.5-vl"))
def test_release_video_merge_decodes_as_it_recomputes(tiny_model, family: str) -> None:
    """Video merged in the release's order (re-packed positions on LLaVA-OneVision, each token's own mrope
    position on Qwen2-VL / 2.5-VL): cached greedy decoding equals decoding that re-runs the whole sequence,
    merge included, every step; the frames merge apart in generate as in a plain call."""
    from transformers import AutoModelForImageTextToText

    path = tiny_model(family)
    model = attn(AutoModelForImageTextToText.from_pretrained(path).eval(), "sdpa")
    inputs = _video_inputs(path)
    media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
    # a quarter: Qwen's 6-token frames go 6 -> 3 -> 2, the last pass leaving one source before the destination
    dropper = TokenTransform.build("aim", {"aim_stages": "merge", "aim_merge_keep": 0.25}).install(model)
    try:
        with torch.no_grad():
            model(**inputs)
            plain = dropper.kept_by_layer[0].clone()
            args = dict(max_new_tokens=3, do_sample=False, suppress_tokens=media, output_scores=True,
                        return_dict_in_generate=True)
            cached = model.generate(**inputs, **args)
            in_generate = dropper.kept_by_layer[0].clone()
            recomputed = model.generate(**inputs, use_cache=False, **args)
    finally:
        dropper.remove()
    assert torch.equal(plain, in_generate) and plain.shape[1] < inputs["input_ids"].shape[1]
    if family != "llava-onevision":  # (its 4-token frames end as destinations only, in their order)
        assert not bool((plain[0, 1:] > plain[0, :-1]).all())  # the release's order, not ascending
    assert cached.sequences.tolist() == recomputed.sequences.tolist()
    for got, want in zip(cached.scores, recomputed.scores):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
