"""FastV with the dropped tokens removed from the sequence: equal to the untransformed model when it keeps
everything, the kept set equal to a plain loop over the layer's attention, and cached generation equal to
recomputing the whole sequence each step with the dropped tokens masked out (the released code's way)."""

from __future__ import annotations

import pytest
import torch

from tamp.inference.transform import TokenTransform
from tamp.models.adapters import get_adapter
from tests.tamp.inference.conftest import FAMILIES, attn

IMPLS = ("sdpa", "eager")


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_changes_nothing(loaded, family: str, implementation: str) -> None:
    model, inputs, media = loaded(family)
    attn(model, implementation)
    with torch.no_grad():
        base = model(**inputs).logits
        base_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=media)
        dropper = TokenTransform.build("fastv", {"fastv_keep": 1.0}).install(model)
        try:
            same = model(**inputs).logits
            same_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=media)
        finally:
            dropper.remove()
    assert torch.equal(base, same)
    assert torch.equal(base_gen, same_gen)
    stats = dropper.history[-1]
    assert stats.visual_in > 0 and stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * len(stats.tokens_per_layer)


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_set_is_the_top_of_the_layer_before_k(loaded, family: str) -> None:
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
    visual_ids = set(get_adapter(model).media_token_ids.get("image", [])) | \
        set(get_adapter(model).media_token_ids.get("video", []))
    visual = [i for i, t in enumerate(ids) if t in visual_ids]
    ranked = sorted(visual, key=lambda i: (-scores[i], i))
    n_keep = int(round(len(visual) * keep))
    expected = sorted([i for i in range(len(ids)) if i not in set(visual)] + ranked[:n_keep])
    assert dropper.kept_by_layer[k][0].tolist() == expected
    assert dropper.kept_by_layer[k - 1][0].tolist() == list(range(len(ids)))
    stats = dropper.history[-1]
    assert stats.tokens_per_layer[k:] == [len(expected)] * (len(stats.tokens_per_layer) - k)


def _masked_recompute(model, inputs: dict, media: list[int], kept: torch.Tensor, k: int, steps: int) -> tuple:
    """Greedy decoding without a cache: the whole sequence each step, the dropped prompt tokens masked out of
    every layer from K on (keys only, as the released FastV code does)."""
    layers = get_adapter(model).language_stack(model).layers
    length = inputs["input_ids"].shape[1]
    dropped = torch.ones(length, dtype=torch.bool)
    dropped[kept] = False

    def mask_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        n = hidden.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)
        mask[:, :length][:, dropped] = float("-inf")
        kwargs["attention_mask"] = mask[None, None].to(hidden.dtype)
        return args, kwargs

    handles = [layer.register_forward_pre_hook(mask_hook, with_kwargs=True) for layer in layers[k:]]
    ids, logits_per_step = inputs["input_ids"], []
    extra = {n: v for n, v in inputs.items() if n not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    try:
        for _ in range(steps):
            if "mm_token_type_ids" in inputs:
                pad = torch.zeros(1, ids.shape[1] - length, dtype=inputs["mm_token_type_ids"].dtype)
                extra["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
            logits = model(input_ids=ids, use_cache=False, **extra).logits[:, -1].float()
            logits[:, media] = float("-inf")
            logits_per_step.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    finally:
        for h in handles:
            h.remove()
    return ids[0, length:], logits_per_step


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_masked_recompute(loaded, family: str, implementation: str) -> None:
    model, inputs, media = loaded(family)
    attn(model, implementation)
    k, steps = 2, 5
    with torch.no_grad():
        dropper = TokenTransform.build("fastv", {"fastv_k": k, "fastv_keep": 0.5}).install(model)
        try:
            out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, suppress_tokens=media,
                                 output_scores=True, return_dict_in_generate=True)
        finally:
            dropper.remove()
        kept = dropper.kept_by_layer[k][0]
        assert kept.numel() < inputs["input_ids"].shape[1]  # something was really dropped
        tokens, ref_logits = _masked_recompute(model, inputs, media, kept, k, steps)
    length = inputs["input_ids"].shape[1]
    assert out.sequences[0, length:].tolist() == tokens.tolist()
    for got, want in zip(out.scores, ref_logits):
        finite = torch.isfinite(want)
        torch.testing.assert_close(got.float()[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_a_batch_must_drop_alike(loaded) -> None:
    """Two samples with different numbers of visual tokens cannot be stacked after a drop: one clear error."""
    from tamp.inference.token_drop import DropPlan, TokenDropper

    model, inputs, _ = loaded("llava")
    attn(model, "sdpa")
    batch = {k: torch.cat([v, v]) for k, v in inputs.items()}
    calls = {"n": 0}

    def uneven(attention: torch.Tensor, visual: torch.Tensor, layer: int) -> torch.Tensor:
        calls["n"] += 1
        keep = torch.arange(attention.shape[0])
        return keep[:-calls["n"]]

    dropper = TokenDropper(model, get_adapter(model), DropPlan({2: uneven}))
    try:
        with pytest.raises(RuntimeError, match="evaluate with batch size 1"), torch.no_grad():
            model(**batch)
    finally:
        dropper.remove()
