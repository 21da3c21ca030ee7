"""SparseVLM on the tiny models (4 layers: ranked by layers 0, 1, 2, the release's 2, 6, 15 of 32 scaled; drops
before 1, 2, 3) against a plain re-statement of Gumpest/SparseVLMs (v1.5, its default) over the eager attention
weights: raters from the input embeddings, each visual token's score the raters' softmax rows averaged over heads
then raters, the top count kept, the top 30% (+1) of the dropped clustered by DPC-KNN and each cluster's mean kept
(here at its center's position); with everything kept the logits stay; cached generation equals a recompute."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.rater_recycle import stage_count, stage_shares
from tamp.errors import TampError
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_rater_recycle import slow_raters, slow_recycle
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_token_drop import _visual_positions, check_cached_generation

SETTINGS = ({}, {"sparsevlm_cluster_size": 2, "sparsevlm_keep": 0.222})


def _run(model, inputs: dict, params: dict):
    """Eager run with SparseVLM: the attention weights, each layer's input rows after the drop, and before it (the
    states a drop sees: the previous layer's output, with Qwen3-VL's DeepStack features added)."""
    layers = get_adapter(model).language_stack(model).layers
    seen_in: dict[int, torch.Tensor] = {}
    seen_out: dict[int, torch.Tensor] = {}

    def keep_entry(i: int, args: tuple, kwargs: dict) -> None:
        seen_out.setdefault(i - 1, (args[0] if args else kwargs["hidden_states"])[0].clone())

    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: keep_entry(i, a, k), with_kwargs=True)
               for i, layer in enumerate(layers)]  # before the editor's own hooks: what enters, before any drop
    dropper = TokenTransform.build("sparsevlm", params).install(model)

    def keep_in(i: int, args: tuple, kwargs: dict) -> None:
        seen_in.setdefault(i, (args[0] if args else kwargs["hidden_states"])[0].clone())

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, k, i=i: keep_in(i, a, k), with_kwargs=True))
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        for h in handles:
            h.remove()
        dropper.remove()
    return dropper, attentions, seen_in, seen_out


# several clusters need several recycled tokens: the families with more than a handful of visual tokens
CASES = [(f, 0) for f in FAMILIES] + [("llava", 1), ("llava-next", 1)]


@pytest.mark.parametrize(("family", "setting"), CASES)
def test_each_stage_keeps_the_release_choice(loaded, family: str, setting: int) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    params = SETTINGS[setting]
    dropper, attentions, seen_in, seen_out = _run(model, inputs, params)
    ids = inputs["input_ids"][0].tolist()
    visual = _visual_positions(model, ids)
    after = max(visual) + 1
    embeds = seen_in[0]
    raters = [after + j for j in slow_raters(embeds[visual].tolist(), embeds[after:].tolist())]
    shares = stage_shares(params.get("sparsevlm_keep", 192 / 576))
    assert sorted(dropper.plan.drops) == [0, 1, 2, 3]
    merged_any = False
    for k, layer in enumerate((0, 1, 2)):
        before = dropper.kept_by_layer[layer][0].tolist()
        weights = attentions[layer][0]  # [heads, T_l, T_l]
        rows = [before.index(p) for p in raters]
        score = weights[:, rows].mean(dim=0).mean(dim=0).tolist()
        image = [j for j, p in enumerate(before) if p in set(visual)]
        count = stage_count(len(visual), shares[k], len(image))
        kept = sorted(image, key=lambda j: (-score[j], j))[:count]
        dropped = [j for j in image if j not in kept]
        states = seen_out[layer]
        centers, means = slow_recycle([states[j].tolist() for j in dropped], [score[j] for j in dropped],
                                      0.3, params.get("sparsevlm_cluster_size", 10))
        slots = [before[dropped[c]] for c in centers]
        want = sorted([p for p in before if p not in set(visual)] + [before[j] for j in kept] + slots)
        got = dropper.kept_by_layer[layer + 1][0].tolist()
        assert got == want, (family, layer)
        for slot, mean in zip(slots, means):
            row = seen_in[layer + 1][got.index(slot)]
            torch.testing.assert_close(row, torch.tensor(mean, dtype=row.dtype), rtol=1e-5, atol=1e-5)
        merged_any |= len(centers) > 1
    if setting == 1:
        assert merged_any  # several clusters were really formed somewhere
    tokens = dropper.history[-1].tokens_per_layer
    assert tokens[0] == len(ids) and tokens[-1] < tokens[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_leaves_the_logits(loaded, family: str) -> None:
    """At keep 1 each stage still drops one token (the release's v - 1 cap) and recycles it as a cluster of one
    at its own position (its state / (1 + 1e-6)): the logits stay, within that factor."""
    model, inputs, media = loaded(family)
    attn(model, "sdpa")
    with torch.no_grad():
        base = model(**inputs).logits
        dropper = TokenTransform.build("sparsevlm", {"sparsevlm_keep": 1.0}).install(model)
        try:
            same = model(**inputs).logits
        finally:
            dropper.remove()
    torch.testing.assert_close(same, base, rtol=1e-4, atol=1e-4)
    stats = dropper.history[-1]
    assert stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * len(stats.tokens_per_layer)
    assert stats.scoring_flops > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_a_recompute(loaded, family: str) -> None:
    """Greedy generation with SparseVLM against a full-length recompute without cache that masks each layer's
    dropped tokens as keys and puts the recycled cluster means at their positions in the layer after the drop."""
    model, inputs, media = loaded(family)
    attn(model, "sdpa")
    layers = get_adapter(model).language_stack(model).layers
    seen_in: dict[int, torch.Tensor] = {}  # the cached prefill: each layer's rows after its drop
    entry: dict[int, torch.Tensor] = {}  # and before it (the previous layer's output, DeepStack's features added)
    state = {"cached": True}
    injected: set[tuple[int, int]] = set()

    def record_entry(i: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if state["cached"] and hidden.shape[1] > 1:
                entry.setdefault(i, hidden[0].clone())
        return hook

    def inject(i: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if raters.editor is not None:  # the cached run: record its prefill
                if hidden.shape[1] > 1:
                    seen_in.setdefault(i, hidden[0].clone())
                return None
            state["cached"] = False
            if i == 0 or i not in dropper.plan.drops:
                return None
            now, prev = dropper.kept_by_layer[i][0].tolist(), dropper.kept_by_layer[i - 1][0].tolist()
            hidden = hidden.clone()
            for row, p in enumerate(now):
                if not torch.equal(seen_in[i][row], entry[i][prev.index(p)]):  # rewritten: a cluster mean
                    hidden[0, p] = seen_in[i][row]
                    injected.add((i, p))
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        return hook

    handles = [layer.register_forward_pre_hook(record_entry(i), with_kwargs=True) for i, layer in enumerate(layers)]
    dropper = TokenTransform.build("sparsevlm", {"sparsevlm_cluster_size": 2}).install(model)
    raters = dropper.installed[0]
    handles += [layer.register_forward_pre_hook(inject(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        done = check_cached_generation(model, inputs, media, dropper)
    finally:
        for h in handles:
            h.remove()
    last = done.kept_by_layer[max(done.kept_by_layer)][0]
    assert last.numel() < inputs["input_ids"].shape[1] and injected  # dropped, and recycled


def test_budget_is_the_release_retain_share() -> None:
    from tamp.recipe import build_recipe

    for share in (0.333, 0.222, 0.111):
        recipe = build_recipe("sparsevlm", 0, overrides=[f"token_budget={share}"])
        assert recipe.token is not None and recipe.token.params["sparsevlm_keep"] == pytest.approx(share)


def test_bad_layers_are_refused_in_one_line() -> None:
    transform = TokenTransform.build("sparsevlm", {"sparsevlm_layers": "2,6,15"})
    assert "use layers up to 2" in transform.model_problem("llava", 4)
    assert transform.model_problem("llava", 32) is None
    assert TokenTransform.build("sparsevlm", {}).model_problem("llava", 4) is None
    assert "this model has 1" in TokenTransform.build("sparsevlm", {}).model_problem("llava", 1)
    with pytest.raises(TampError, match="ascending distinct"):
        TokenTransform.build("sparsevlm", {"sparsevlm_layers": "6,2"})
    with pytest.raises(TampError, match="comma-separated"):
        TokenTransform.build("sparsevlm", {"sparsevlm_layers": "two"})



@pytest.mark.parametrize("family", ("llava", "qwen2-vl"))
def test_a_batch_recycles_as_its_samples_do(loaded_batch, family: str) -> None:
    """A left-padded batch of four (different image sizes and questions): each sample's raters, drops and cluster
    means as alone, so its last-token logits are its own run's."""
    model, batch, singles, _ = loaded_batch(family, 4)
    attn(model, "sdpa")
    params = {"sparsevlm_cluster_size": 2}
    dropper = TokenTransform.build("sparsevlm", params).install(model)
    try:
        with torch.no_grad():
            together = model(**batch).logits[:, -1]
            alone = []
            for inputs in singles:
                alone.append((model(**inputs).logits[0, -1], list(dropper.history[-1].visual_kept_per_layer)))
    finally:
        dropper.remove()
    for b, (logits, _) in enumerate(alone):
        torch.testing.assert_close(together[b], logits, rtol=1e-4, atol=1e-4)
    assert not bool(batch["attention_mask"].all())  # padded (Qwen2-VL: and different visual counts, re-laid)
    if family == "qwen2-vl":
        assert len({tuple(kept) for _, kept in alone}) > 1


@pytest.mark.parametrize("family", ("llava", "qwen3-vl"))
def test_the_recorded_prefill_covers_the_vision_side(loaded, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared whole-prefill check (test_flops): what the cost meter records with SparseVLM (vision encoder,
    projector, the shortened decoder, the raters' and rows' scoring, the recycling) equals FlopCounterMode's count
    of the whole model."""
    from tests.tamp.inference import methods
    from tests.tamp.inference.test_flops import test_recorded_prefill_flops_cover_the_vision_side

    monkeypatch.setitem(methods.SETTINGS, "sparsevlm", {"sparsevlm_cluster_size": 2})
    test_recorded_prefill_flops_cover_the_vision_side(loaded, family, "sparsevlm")


def test_a_video_is_one_pool(tiny_model) -> None:
    """A video's frames join the one pool of visual tokens: each stage keeps round(share x n) of the n that
    entered, plus its clusters, and greedy decoding runs on the shortened cache."""
    from transformers import AutoModelForImageTextToText

    from tests.tamp.inference.test_aim_release import _video_inputs

    path = tiny_model("qwen2-vl")
    model = attn(AutoModelForImageTextToText.from_pretrained(path).eval(), "sdpa")
    inputs = _video_inputs(path)
    dropper = TokenTransform.build("sparsevlm", {}).install(model)
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        dropper.remove()
    stats = dropper.history[0]
    n = stats.visual_in
    counts = [stage_count(n, s, n) for s in stage_shares(192 / 576)]
    assert stats.visual_kept_per_layer[0] == n and n > 8
    assert all(counts[k] < stats.visual_kept_per_layer[k + 1] <= counts[k] + 3 for k in range(3))
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
