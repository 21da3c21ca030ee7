"""DART on every tiny family: the visual tokens kept before layer K are those of the release's loop run on what the
release reads, taken here independently of our capture: layer K - 1's keys from the KV cache (after the rotary
embedding, as LightCompress's port reads them), the states entering layer K (a plain pre-hook's: DeepStack's
features added after the earlier layers are part of them) through the model's own final norm."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.token_dedup import per_pivot
from tamp.models import internals
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_token_dedup import release
from tests.tamp.inference.conftest import FAMILIES, attn


def release_pool(l1: torch.Tensor, states: torch.Tensor, span: list[int], image_pivots: int, text_pivots: int,
                 token_topk: int) -> list[int]:
    """The release's loop (tests/tamp/algorithms/test_token_dedup.py `release`) with its image span a pool of
    positions `span`, text pivots from the tokens after the last one; sequence positions throughout, so the pivots
    are visited in the release's set order."""
    after = list(range(span[-1] + 1, states.shape[0]))
    image_indices = [span[i] for i in l1[span].topk(image_pivots).indices.tolist()]
    query_indices = [after[i] for i in l1[after].topk(text_pivots).indices.tolist()]
    indices_set = set(image_indices + query_indices)
    valid_indices = set(span) - set(image_indices)
    valid_list = list(valid_indices)
    for item in list(indices_set):
        cos = -torch.nn.functional.cosine_similarity(states[item, :], states[valid_list, :], dim=-1)
        real = [valid_list[i] for i in cos.topk(token_topk).indices]
        indices_set.update(real)
        valid_indices.difference_update(real)
        valid_list = list(valid_indices)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


@pytest.mark.parametrize("pivots", ((4, 4), (1, 1)))  # the release's; one each (tiny Qwen2-VL has 4 visual tokens)
@pytest.mark.parametrize("implementation", ("sdpa", "eager"))
@pytest.mark.parametrize("family", FAMILIES)
def test_dart_keeps_what_the_release_keeps(loaded, family: str, implementation: str, pivots: tuple[int, int]) -> None:
    model, inputs, _ = loaded(family)
    attn(model, implementation)
    adapter = get_adapter(model)
    stack = adapter.language_stack(model)
    k, keep = 2, 0.5
    entering: list[torch.Tensor] = []  # what layer K receives (with Qwen3-VL's DeepStack features added before it)
    probe = stack.layers[k].register_forward_pre_hook(
        lambda mod, args, kwargs: entering.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True)
    with torch.no_grad():
        try:
            out = model(**inputs, use_cache=True)
        finally:
            probe.remove()
        keys = out.past_key_values.layers[k - 1].keys[0]  # [KVH, T, d]
        l1 = keys.permute(1, 0, 2).reshape(keys.shape[1], -1).double().abs().sum(-1)
        states = internals.final_norm(model, stack.name)(entering[0])[0].double()
        params = {"dart_k": k, "dart_keep": keep, "dart_image_pivots": pivots[0], "dart_text_pivots": pivots[1]}
        dropper = TokenTransform.build("dart", params).install(model)
        try:
            model(**inputs)
        finally:
            dropper.remove()
    visual_ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    ids = inputs["input_ids"][0].tolist()
    span = [t for t, i in enumerate(ids) if i in visual_ids]
    start, length = span[0], len(span)
    each = per_pivot(length, keep, sum(pivots))
    if family == "smolvlm":  # its tiles sit between text tokens: the visual tokens are one pool (DART's reading)
        expected = release_pool(l1, states, span, *pivots, each)
    else:
        assert span == list(range(start, start + length))  # one image span, as the release assumes
        expected = release(l1, states, start, length, *pivots, each)
    kept = dropper.kept_by_layer[k][0].tolist()
    assert [t for t in kept if t in set(span)] == expected
    assert [t for t in kept if t not in set(span)] == [t for t in range(len(ids)) if t not in set(span)]
    assert dropper.kept_by_layer[k - 1][0].tolist() == list(range(len(ids)))
    assert len(expected) == min(length, pivots[0] + sum(pivots) * each)
    assert (dropper.history[-1].scoring_flops > 0) == (each > 0)
