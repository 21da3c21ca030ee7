"""FastV, AIM and YOPO with the dropped tokens removed from the sequence: equal to the untransformed model when they
keep everything, the kept sets equal to plain re-statements over the eager attention, and cached generation equal to
recomputing the whole sequence each step with the dropped tokens masked out (the released code's way)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from tamp.algorithms.token_keep import linear_schedule, scheduled_count
from tamp.algorithms.token_merge import merge_target
from tamp.errors import TampError
from tamp.inference.visual_attention import VisualAttentionPatch, VisualAttentionPatches
from tamp.inference.visual_mlp import VisualMlpSlice
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.methods import FREE_CHOICE, METHODS, install, install_keep_all

IMPLS = ("sdpa", "eager")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_changes_nothing(loaded, family: str, implementation: str, method: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import tamp.inference.visual_mlp as visual_mlp

    sliced: list[int] = []
    real = visual_mlp.sliced_mlp
    monkeypatch.setattr(visual_mlp, "sliced_mlp", lambda x, *rest: sliced.append(x.shape[0]) or real(x, *rest))
    model, inputs, media = loaded(family)
    attn(model, implementation)
    with torch.no_grad():
        base = model(**inputs).logits
        base_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=media)
        dropper = install_keep_all(model, method)
        try:
            same = model(**inputs).logits
            same_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=media)
        finally:
            dropper.remove()
    if method == "yopo":  # visual and text rows in separate matmuls: equal up to summation order
        torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(base, same)
    assert torch.equal(base_gen, same_gen)
    stats = dropper.history[-1]
    assert stats.visual_in > 0 and stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * len(stats.tokens_per_layer)
    if method == "yopo":
        layers = len(get_adapter(model).language_stack(model).layers)  # visual rows ran apart, every channel kept
        assert sliced[:layers] == [stats.visual_in] * layers and stats.skipped_flops == 0
    elif method not in FREE_CHOICE:
        assert stats.scoring_flops > 0  # the scores were really computed


def _visual_positions(model, ids: list[int]) -> list[int]:
    adapter = get_adapter(model)
    visual_ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    return [i for i, t in enumerate(ids) if t in visual_ids]


@pytest.mark.parametrize("family", FAMILIES)
def test_fastv_keeps_the_top_of_the_layer_before_k(loaded, family: str) -> None:
    """Plain re-statement: eager attention weights of layer K-1, last query row, mean over heads; visual tokens
    sorted by it (earlier first on ties), the top round(n x keep) kept with every other token."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    k, keep = 2, 0.5
    with torch.no_grad():
        weights = model(**inputs, output_attentions=True).attentions[k - 1][0]  # [heads, T, T]
        dropper = TokenTransform.build("fastv", {"fastv_k": k, "fastv_keep": keep}).install(model)
        try:
            model(**inputs)
        finally:
            dropper.remove()
    scores = weights.float().mean(0)[-1].tolist()
    ids = inputs["input_ids"][0].tolist()
    visual = _visual_positions(model, ids)
    ranked = sorted(visual, key=lambda i: (-scores[i], i))
    n_keep = int(round(len(visual) * keep))
    expected = sorted([i for i in range(len(ids)) if i not in set(visual)] + ranked[:n_keep])
    assert dropper.kept_by_layer[k][0].tolist() == expected
    assert dropper.kept_by_layer[k - 1][0].tolist() == list(range(len(ids)))
    stats = dropper.history[-1]
    assert stats.tokens_per_layer[k:] == [len(expected)] * (len(stats.tokens_per_layer) - k)


def _pagerank_by_hand(weights: torch.Tensor, tau: float = 0.1, iters: int = 5) -> list[float]:
    """From eager softmax weights P [heads, T, T]: softmax(logits / tau) is P^(1/tau) renormalised per row; a
    uniform start pushed through it `iters` times per head; root mean square over heads."""
    walk = weights.double() ** (1 / tau)
    walk = walk / walk.sum(-1, keepdim=True)
    dist = torch.full((weights.shape[0], weights.shape[1]), 1.0 / weights.shape[1], dtype=torch.float64)
    for _ in range(iters):
        dist = torch.stack([dist[h] @ walk[h] for h in range(weights.shape[0])])
    return dist.pow(2).mean(0).sqrt().tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_aim_prunes_by_pagerank_of_the_layer_before(loaded, family: str) -> None:
    """After each pruning layer l, the kept visual tokens are the top int(entering x rate(l)) by PageRank of
    layer l's attention over the tokens that layer ran on (taken from the eager weights it returned)."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    with torch.no_grad():
        dropper = install(model, "aim")
        try:
            attentions = model(**inputs, output_attentions=True).attentions
        finally:
            dropper.remove()
    ids = inputs["input_ids"][0].tolist()
    visual = set(_visual_positions(model, ids))
    adapter = get_adapter(model)
    visual_ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    entering = sum(1 for i in dropper.kept_by_layer[0][0].tolist() if i in visual)
    runs = [len(list(g)) for is_visual, g in itertools.groupby(ids, key=lambda t: t in visual_ids) if is_visual]
    assert entering == sum(merge_target(n, 0.5) for n in runs) < len(visual)  # the merge halved each image
    for layer in (2, 3):
        before = dropper.kept_by_layer[layer - 1][0].tolist()
        scores = _pagerank_by_hand(attentions[layer - 1][0])
        vis = [j for j, p in enumerate(before) if p in visual]
        count = scheduled_count(entering, linear_schedule(layer - 1, 1, 0.25))
        ranked = sorted(vis, key=lambda j: (-scores[j], j))[:count]
        expected = sorted([p for j, p in enumerate(before) if p not in visual] + [before[j] for j in ranked])
        assert dropper.kept_by_layer[layer][0].tolist() == expected, layer


def _masked_recompute(model, inputs: dict, media: list[int], dropper, steps: int) -> tuple:
    """Greedy decoding without a cache: the whole sequence each step; each layer's attention masks out the prompt
    tokens that layer did not keep (keys only, as the released code does); before layer 0, the states the
    method rewrote (AIM's merged tokens) are written over the embeddings."""
    layers = get_adapter(model).language_stack(model).layers
    length = inputs["input_ids"].shape[1]
    kept = {i: dropper.kept_by_layer[i][0] for i in range(len(layers))}
    first_states = getattr(dropper, "first_states", None)
    visual = torch.tensor(_visual_positions(model, inputs["input_ids"][0].tolist()), dtype=torch.long)
    patch = dropper.plan.part(VisualAttentionPatch) or VisualAttentionPatch()
    neighbours = next((p.neighbours for p in dropper.installed if isinstance(p, VisualAttentionPatches)), None)
    mlp_keep = (dropper.plan.part(VisualMlpSlice) or VisualMlpSlice()).keep

    def zero_channels(share: float):
        """The released YOPO's FFN cut: gate and up outputs beyond int(I x share) zeroed at the visual positions."""

        def hook(module, args, out):
            out = out.clone()
            cut = int(out.shape[-1] * share)
            rows = out[:, visual]
            rows[..., cut:] = 0
            out[:, visual] = rows
            return out

        return hook

    def mask_hook(i):
        dropped = torch.ones(length, dtype=torch.bool)
        dropped[kept[i]] = False

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            n = hidden.shape[1]
            mask = torch.full((n, n), float("-inf")).triu(1)
            given = kwargs.get("attention_mask")  # the model's own, where it is more than causal: Gemma 3's
            if isinstance(given, torch.Tensor) and given.dim() == 4 and tuple(given.shape[-2:]) == (n, n):
                allowed = given[0, 0] if given.dtype == torch.bool else given[0, 0] == 0  # image blocks, windows
                mask = torch.zeros(n, n).masked_fill(~allowed, float("-inf"))
            mask[:, :length][:, dropped] = float("-inf")
            if i in patch.window:  # YOPO's window: a visual query sees only its neighbours' visual keys
                for row, near in zip(visual.tolist(), neighbours[0].tolist()):
                    mask[row, visual] = float("-inf")
                    mask[row, [p for p in near if p >= 0]] = 0.0
            kwargs["attention_mask"] = mask[None, None].to(hidden.dtype)
            if i == 0 and first_states is not None:
                hidden = hidden.clone()
                hidden[:, kept[0]] = first_states
                args = (hidden, *args[1:]) if args else args
                if "hidden_states" in kwargs:
                    kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    handles = [layer.register_forward_pre_hook(mask_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    for i, heads in patch.heads.items():
        attention = layers[i].self_attn
        handles.append(attention.o_proj.register_forward_pre_hook(zero_heads(heads, attention.head_dim, visual)))
    for i, share in mlp_keep.items():
        handles += [layers[i].mlp.gate_proj.register_forward_hook(zero_channels(share)),
                    layers[i].mlp.up_proj.register_forward_hook(zero_channels(share))]
    ids, logits_per_step = inputs["input_ids"], []
    types = ("mm_token_type_ids", "token_type_ids")  # Qwen's, Gemma 3's: one per token, text for new ones
    extra = {n: v for n, v in inputs.items() if n not in ("input_ids", "attention_mask", *types)}
    try:
        for _ in range(steps):
            for name in (t for t in types if t in inputs):
                pad = torch.zeros(1, ids.shape[1] - length, dtype=inputs[name].dtype)
                extra[name] = torch.cat([inputs[name], pad], dim=1)
            logits = model(input_ids=ids, use_cache=False, **extra).logits[:, -1].float()
            logits[:, media] = float("-inf")
            logits_per_step.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    finally:
        for h in handles:
            h.remove()
    return ids[0, length:], logits_per_step


def zero_heads(heads, head_dim: int, visual):
    """The released YOPO's pruned heads, as an o_proj pre-hook: their attention output zeroed at the visual
    positions."""

    def hook(module, args):
        x = args[0].clone()
        for h in heads:
            x[:, visual, h * head_dim:(h + 1) * head_dim] = 0
        return (x, *args[1:])

    return hook


def check_cached_generation(model, inputs: dict, media: list[int], dropper, steps: int = 5) -> Any:
    """Greedy generation with `dropper` installed (removed afterwards) equals `_masked_recompute`, token for token
    and logits to 1e-4; returns the dropper. A probe after the dropper's hook records the states layer 0 ran on,
    so a merge's rewritten states go into the reference too."""
    seen: dict = {}

    def record(module, args, kwargs) -> None:
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    probe = get_adapter(model).language_stack(model).layers[0].register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        try:
            out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, suppress_tokens=media,
                                 output_scores=True, return_dict_in_generate=True)
        finally:
            probe.remove()
            dropper.remove()
        dropper.first_states = seen["h"][0] if 0 in dropper.plan.drops else None
        tokens, ref_logits = _masked_recompute(model, inputs, media, dropper, steps)
    length = inputs["input_ids"].shape[1]
    assert out.sequences[0, length:].tolist() == tokens.tolist()
    for got, want in zip(out.scores, ref_logits):
        finite = torch.isfinite(want)
        torch.testing.assert_close(got.float()[finite], want[finite], rtol=1e-4, atol=1e-4)
    return dropper


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_masked_recompute(loaded, family: str, implementation: str, method: str) -> None:
    model, inputs, media = loaded(family)
    attn(model, implementation)
    if (family, method) == ("gemma3", "yopo"):  # refused where it would run (docs/models.md)
        with pytest.raises(TampError, match="^--method yopo: not on gemma3 models"):
            install(model, method)
        return
    dropper = check_cached_generation(model, inputs, media, install(model, method))
    last = dropper.kept_by_layer[max(dropper.kept_by_layer)][0]
    assert last.numel() < inputs["input_ids"].shape[1]  # something was really dropped
