"""YOPO's inactive visual heads and neighbour-aware visual attention on the tiny models: the heads chosen equal a
plain re-computation of the statistic from the eager attention weights, the pruned heads equal the release's
zeroing of their output at visual rows, cached generation equals the masked no-cache recompute, and nothing
pruned changes nothing."""

from __future__ import annotations

import pytest
import torch

from tamp.inference.sequence_edit import SequenceEditor, TokenPlan
from tamp.inference.visual_attention import VisualAttentionPatch, VisualAttentionPatches
from tamp.methods import yopo
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import YOPO_FAMILIES as FAMILIES
from tests.tamp.inference.conftest import attn
from tests.tamp.inference.test_token_drop import _visual_positions, check_cached_generation, zero_heads

IMPLS = ("sdpa", "eager")
PRUNED = [[0], [1, 3], [], [0, 1, 2, 3]]  # per layer of the 4-layer tiny models: one layer keeps none


def _with_heads(params: dict, pruned: list[list[int]]) -> TokenTransform:
    """Removal semantics (text rows keep every head; the release's masking: test_yopo_release.py)."""
    built = TokenTransform.build("yopo", {"yopo_semantics": "removal", **params})
    return TokenTransform(built.method, built.params, {yopo.PRUNED_HEADS: pruned})


def _zeroed_heads_logits(model, inputs: dict, pruned: list[list[int]]) -> torch.Tensor:
    """The release's reading, by hand: every head runs, then the pruned heads' outputs at the visual positions are
    zeroed before o_proj."""
    layers = get_adapter(model).language_stack(model).layers
    visual = torch.tensor(_visual_positions(model, inputs["input_ids"][0].tolist()))

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(zero_heads(heads, layer.self_attn.head_dim, visual))
               for layer, heads in zip(layers, pruned)]
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_heads_equal_zeroing_their_visual_output(loaded, family: str, implementation: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, implementation)
    want = _zeroed_heads_logits(model, inputs, PRUNED)
    dropper = _with_heads({"yopo_strategies": "heads"}, PRUNED).install(model)
    try:
        with torch.no_grad():
            got = model(**inputs).logits
    finally:
        dropper.remove()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    stats = dropper.history[-1]
    layers = get_adapter(model).language_stack(model).layers
    attention = layers[0].self_attn
    hidden, d = attention.q_proj.in_features, attention.head_dim
    pruned = sum(len(p) for p in PRUNED)
    # q_proj rows and o_proj columns of the pruned heads, per visual row; plus their attention matmuls
    linear = 2 * stats.visual_in * pruned * d * hidden * 2
    assert stats.skipped_flops >= linear and stats.skipped_flops == stats.skipped_nonzero_flops


NOTHING_PRUNED = {
    "heads kept": {"yopo_strategies": "heads", "yopo_heads_keep": 1.0},
    # a 100% budget with every budgeted share at 100%: no layer cut, the whole MLP, every head
    "budget 100%": {"yopo_strategies": "layers+ffn+heads", "yopo_budget": 1.0, "yopo_ffn_keep": 1.0,
                    "yopo_heads_keep": 1.0},
}


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("setting", NOTHING_PRUNED)
@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_pruned_is_bit_identical(loaded, family: str, setting: str, implementation: str) -> None:
    """Nothing pruned installs nothing on the model: logits bit-identical."""
    model, inputs, media = loaded(family)
    attn(model, implementation)
    with torch.no_grad():
        base = model(**inputs).logits
        dropper = TokenTransform.build("yopo", NOTHING_PRUNED[setting]).install(model)
        try:
            same = model(**inputs).logits
        finally:
            dropper.remove()
    assert dropper.plan.is_empty() and not dropper.installed
    assert torch.equal(base, same)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_kept_through_the_split_path_changes_nothing(loaded, family: str) -> None:
    """The split attention itself (text rows through the block's attention, visual rows through rows_attention)
    with no head pruned: equal to the untouched model up to summation order."""
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    adapter = get_adapter(model)
    layers = len(adapter.language_stack(model).layers)
    with torch.no_grad():
        base = model(**inputs).logits
        dropper = SequenceEditor(model, adapter, TokenPlan({}, (VisualAttentionPatch({i: () for i in range(layers)}),)))
        patched = len(_patches(dropper).blocks)
        try:
            same = model(**inputs).logits
        finally:
            dropper.remove()
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    assert layers == patched == 4 and dropper.history[-1].skipped_flops == 0


def _patches(editor: SequenceEditor) -> VisualAttentionPatches:
    """YOPO's visual-attention install as it sits on the editor's model."""
    return next(p for p in editor.installed if isinstance(p, VisualAttentionPatches))


def _plain_head_statistic(model, batches: list[dict]) -> torch.Tensor:
    """From the eager attention weights [H, T, T] of each layer: rows of the visual tokens, summed over visual
    columns, mean over those rows; mean over the samples."""
    adapter = get_adapter(model)
    ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    per_sample = []
    for batch in batches:
        visual = torch.tensor([t in ids for t in batch["input_ids"][0].tolist()])
        with torch.no_grad():
            weights = model(**batch, output_attentions=True).attentions
        per_sample.append(torch.stack([w[0].double()[:, visual][:, :, visual].sum(-1).mean(-1) for w in weights]))
    return torch.stack(per_sample).mean(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_choice_equals_a_plain_recomputation(loaded, family: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    other = dict(inputs)
    other["input_ids"] = inputs["input_ids"].clone()
    text = torch.nonzero(~torch.isin(other["input_ids"][0], torch.tensor(
        [i for ids in get_adapter(model).media_token_ids.values() for i in ids]))).flatten()
    other["input_ids"][0, text[-3:]] = other["input_ids"][0, text[:3]]  # a second sample: other question tokens
    batches = [inputs, other]
    want = _plain_head_statistic(model, batches)
    fitted = TokenTransform.build("yopo", {"yopo_strategies": "heads", "yopo_heads_keep": 0.5}) \
        .fit(model, batches, torch.device("cpu")).fitted
    got = torch.tensor(fitted[yopo.HEAD_STAT], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    flat = want.flatten().tolist()
    lowest = sorted(range(len(flat)), key=lambda i: flat[i])[:len(flat) // 2]
    heads = want.shape[1]
    assert sorted(h + heads * i for i, p in enumerate(fitted[yopo.PRUNED_HEADS]) for h in p) == sorted(lowest)
    assert fitted[yopo.VISUAL_TOKENS] == len(_visual_positions(model, inputs["input_ids"][0].tolist()))


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_with_pruned_heads(loaded, family: str, implementation: str) -> None:
    model, inputs, media = loaded(family)
    attn(model, implementation)
    transform = _with_heads({"yopo_strategies": "layers+ffn+heads", "yopo_layer": 3}, PRUNED)
    dropper = check_cached_generation(model, inputs, media, transform.install(model))
    assert set(dropper.plan.part(VisualAttentionPatch).heads) == {0, 1} and 3 in dropper.plan.drops


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_with_the_window(loaded, family: str, implementation: str, causal: bool) -> None:
    """Windowed visual attention (w = 3 on the tiny grids), with pruned heads and the layer cut: equal to the
    no-cache recompute whose explicit mask lets a visual query see only its window's visual keys."""
    model, inputs, media = loaded(family)
    attn(model, implementation)
    transform = _with_heads({"yopo_strategies": "layers+ffn+heads+attn", "yopo_layer": 3, "yopo_window": 3,
                             "yopo_window_causal": causal}, PRUNED)
    dropper = check_cached_generation(model, inputs, media, transform.install(model))
    assert set(dropper.plan.part(VisualAttentionPatch).window) == {0, 1, 2}
    near = _patches(dropper).neighbours[0]
    assert near.shape == (dropper.history[0].visual_in, 9) and bool((near >= 0).sum(1).lt(9).any())


@pytest.mark.parametrize("family", FAMILIES)
def test_window_alone_equals_the_explicit_mask(loaded, family: str) -> None:
    """The window on its own, every head kept: generation against the eager model with the equivalent dense mask;
    FLOPs change only on the attention matmuls, a visual row's T keys replaced by the T - n_visual non-visual ones
    and the w^2 gathered (padded) ones, in each of the 4 layers (more than T on the 2 x 2 Qwen grid: w^2 = 9 > 4)."""
    model, inputs, media = loaded(family)
    attn(model, "eager")
    dropper = check_cached_generation(model, inputs, media, TokenTransform.build(
        "yopo", {"yopo_strategies": "attn", "yopo_window": 3}).install(model), steps=2)
    stats = dropper.history[0]
    n = stats.visual_in
    assert not dropper.plan.part(VisualAttentionPatch).heads
    assert stats.skipped_flops == 4 * 4 * n * 16 * 4 * (n - 9) == stats.skipped_nonzero_flops


@pytest.mark.parametrize("family", ("llava-onevision", "qwen2-vl", "qwen2.5-vl"))
def test_the_window_of_a_video_token_stays_in_its_frame(tiny_model, family: str) -> None:
    """Video: the neighbourhood is per frame. Every window neighbour of a visual token is a visual token of the same
    frame (AIM's frame groups), and each token sees as many as a w = 3 square holds inside the frame's grid: Qwen's
    (h / 2) x (w / 2) merged patches from video_grid_thw, OneVision's pooled square frame."""
    from transformers import AutoModelForImageTextToText

    from tests.tamp.inference.test_token_merge_video import _video_inputs

    path = tiny_model(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = _video_inputs(path)
    dropper = TokenTransform.build("yopo", {"yopo_strategies": "attn", "yopo_window": 3}).install(model)
    try:
        with torch.no_grad():
            model(**inputs)
        groups = dropper.groups[0]
        near = _patches(dropper).neighbours[0]
    finally:
        dropper.remove()
    rows = torch.nonzero(groups >= 0).flatten()
    frame_ids = torch.unique(groups[rows])
    assert len(frame_ids) >= 2 and near.shape == (len(rows), 9)  # several frames, each its own group
    for row, neighbours in zip(rows.tolist(), near):
        seen = neighbours[neighbours >= 0]
        assert bool((groups[seen] == groups[row]).all()) and row in seen.tolist()
    if "video_grid_thw" in inputs:
        _, h, w = inputs["video_grid_thw"][0].tolist()
        grid_rows, grid_cols = h // 2, w // 2
    else:
        grid_rows = grid_cols = int(int((groups == frame_ids[0]).sum()) ** 0.5)
    expected = [sum(1 for dr in (-1, 0, 1) for dc in (-1, 0, 1) if 0 <= r + dr < grid_rows and 0 <= c + dc < grid_cols)
                for r in range(grid_rows) for c in range(grid_cols)]
    first = (groups[rows] == frame_ids[0])
    assert (near[first] >= 0).sum(1).tolist() == expected
