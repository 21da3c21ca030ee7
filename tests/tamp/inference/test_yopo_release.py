"""YOPO with `yopo_semantics=release` against a slow, plain restatement of the released modeling_llama_prune.py
(zhaowt61/YOPO_MLLM_Pruning_fork): every layer's attention as eager code, then, after the softmax and without
renormalising,

- the probabilities on visual keys multiplied by the layer's head mask (0 for a pruned head) for every query,
  and by 0 in every head from the cut layer on;
- the visual rows' attention output multiplied by the head mask (pruned heads 0), in every layer;
- in the prefill, the visual-to-visual part of the mask replaced by the w x w window (later neighbours too);
- the visual rows' gate and up outputs zeroed beyond the kept channels, in every layer.

The visual tokens run through every layer. Each strategy alone and all four, on every tiny family: the
project's prefill logits to 1e-4, and its cached generation against the oracle's no-cache recompute of every
step (tokens exact, logits to 1e-4)."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface

from tamp.algorithms.ffn_slice import kept_channels
from tamp.inference.sequence_edit import video_frames, visual_groups
from tamp.inference.visual_grid import group_segments, neighbour_positions
from tamp.methods import yopo
from tamp.models import internals
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import YOPO_FAMILIES as FAMILIES
from tests.tamp.inference.conftest import attn

PRUNED = [[0], [1, 3], [], [0, 1, 2, 3]]  # per layer of the 4-layer tiny models: one layer keeps none
CUT, WINDOW, FFN_KEEP = 2, 3, 0.5
CASES = {"layers": {"yopo_strategies": "layers", "yopo_layer": CUT},
         "ffn": {"yopo_strategies": "ffn", "yopo_ffn_keep": FFN_KEEP},
         "heads": {"yopo_strategies": "heads"},
         "attn": {"yopo_strategies": "attn", "yopo_window": WINDOW},
         "all": {"yopo_strategies": "layers+ffn+heads+attn", "yopo_layer": CUT, "yopo_window": WINDOW,
                 "yopo_ffn_keep": FFN_KEEP}}
ORACLE = "yopo_release_oracle"
_oracle: dict = {}


def _oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention of one layer with the release's multiplications (state in `_oracle`)."""
    if id(module) not in _oracle["layer"]:  # the vision tower: its own eager attention
        return internals.eager_attention(module)(module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
    layer, visual, window = _oracle["layer"][id(module)], _oracle["visual"], _oracle["window"]
    heads, length, d = query.shape[1], query.shape[2], query.shape[3]
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    keys = key.shape[2]
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else d ** -0.5)
    vis = torch.zeros(keys, dtype=torch.bool)
    vis[:visual.shape[0]] = visual[:keys]
    if attention_mask is None:
        mask = torch.zeros(length, keys).masked_fill(~torch.ones(length, keys, dtype=torch.bool).tril(keys - length),
                                                     torch.finfo(scores.dtype).min)[None, None]
    else:
        mask = attention_mask[:, :, :, :keys].clone()
        if mask.dtype == torch.bool:  # a boolean mask (Gemma 3's, with its image blocks and windows): True = seen
            mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill(~mask, torch.finfo(scores.dtype).min)
    if window is not None and length == keys:  # the prefill: visual-to-visual allowed inside the window only
        rows = torch.nonzero(vis).flatten()
        mask[:, :, rows[:, None], rows[None, :]] = torch.where(window, 0.0, torch.finfo(scores.dtype).min)
    scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    head_mask = torch.ones(heads)
    head_mask[list(_oracle["pruned"][layer])] = 0.0
    key_mask = head_mask.clone() if layer < _oracle["cut"] else torch.zeros(heads)
    probs[:, :, :, vis] = probs[:, :, :, vis] * key_mask[None, :, None, None]
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, L, H, d]
    rows = vis[keys - length:]
    out[:, rows] = out[:, rows] * head_mask[None, None, :, None]
    return out, probs


AttentionInterface.register(ORACLE, _oracle_attention)


def _window_mask(model, inputs: dict, visual: torch.Tensor) -> torch.Tensor:
    """[n_visual, n_visual] bool: visual key j lies in visual query i's w x w square in its own image grid (the
    grid transformers packed, tests/tamp/inference/test_yopo_anyres_grid.py)."""
    ids = inputs["input_ids"]
    video = torch.zeros_like(visual)[None]
    groups = visual_groups(visual[None], video, video_frames(inputs))
    kwargs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "image_sizes") if k in inputs}
    segments = group_segments(model.config, kwargs, video, groups)
    near = neighbour_positions(groups[0], segments, WINDOW, False)
    positions = torch.nonzero(visual).flatten()
    index = {int(p): i for i, p in enumerate(positions)}
    out = torch.zeros(len(positions), len(positions), dtype=torch.bool)
    for i, row in enumerate(near.tolist()):
        for p in row:
            if p >= 0:
                out[i, index[p]] = True
    assert ids.shape[0] == 1 and bool(out.diagonal().all())
    return out


def _oracle_logits(model, inputs: dict, params: dict, media: list[int]) -> torch.Tensor:
    """The release, restated: logits of a no-cache forward of `inputs`."""
    chosen = set(params["yopo_strategies"].split("+"))
    layers = get_adapter(model).language_stack(model).layers
    visual = torch.isin(inputs["input_ids"][0], torch.tensor(media))
    _oracle.update(layer={id(internals.self_attention(b)): i for i, b in enumerate(layers)}, visual=visual,
                   cut=params["yopo_layer"] if "layers" in chosen else len(layers),
                   pruned=PRUNED if "heads" in chosen else [[] for _ in layers],
                   window=_window_mask(model, inputs, visual) if "attn" in chosen else None)
    handles = []
    if "ffn" in chosen:
        def zero_tail(module, args, out):
            if out.shape[1] == visual.shape[0]:
                out = out.clone()
                out[:, visual, kept_channels(out.shape[-1], FFN_KEEP):] = 0
            return out
        for block in layers:
            mlp = internals.gated_mlp(block)
            handles += [mlp.gate.register_forward_hook(zero_tail), mlp.up.register_forward_hook(zero_tail)]
    before = internals.attention_implementation(model.config)
    model.set_attn_implementation(ORACLE)
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits
    finally:
        model.set_attn_implementation(before or "eager")
        for h in handles:
            h.remove()


def _install(model, params: dict):
    built = TokenTransform.build("yopo", {**params, "yopo_semantics": "release"})
    return TokenTransform(built.method, built.params, {yopo.PRUNED_HEADS: PRUNED}).install(model)


@pytest.mark.parametrize("implementation", ("sdpa", "eager"))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_release_equals_the_plain_oracle(loaded, family: str, case: str, implementation: str) -> None:
    model, inputs, media = loaded(family)
    params = TokenTransform.build("yopo", CASES[case]).params
    want = _oracle_logits(model, inputs, params, media)
    attn(model, implementation)
    editor = _install(model, CASES[case])
    try:
        with torch.no_grad():
            got = model(**inputs).logits
    finally:
        editor.remove()
    assert not editor.plan.drops  # the visual tokens run through every layer
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if case != "ffn":  # the masking changes what the model computes (else the oracle would prove nothing)
        with torch.no_grad():
            plain = model(**inputs).logits
        assert float((plain - want).abs().max()) > 1e-3


@pytest.mark.parametrize("case", ("heads", "layers", "all"))
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_the_oracle_recompute(loaded, family: str, case: str) -> None:
    """Greedy cached generation with release semantics (decode steps zero the cached visual keys in the masked
    heads) against the oracle run without a cache on the prompt and the tokens generated so far."""
    model, inputs, media = loaded(family)
    attn(model, "sdpa")
    params = TokenTransform.build("yopo", CASES[case]).params
    editor = _install(model, CASES[case])
    steps = 4
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, suppress_tokens=media,
                                 output_scores=True, return_dict_in_generate=True)
    finally:
        editor.remove()
    length = inputs["input_ids"].shape[1]
    sequence = out.sequences[0]
    assert sequence.shape[0] == length + steps
    for step, score in enumerate(out.scores):
        ids = sequence[None, :length + step]
        grown = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "mm_token_type_ids" in inputs:  # Qwen: the generated tokens are text
            types = inputs["mm_token_type_ids"]
            grown["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, step)], dim=1)
        want = _oracle_logits(model, grown, params, media)[0, -1]
        want[media] = float("-inf")
        finite = torch.isfinite(want)
        torch.testing.assert_close(score[0].float()[finite], want[finite], rtol=1e-4, atol=1e-4)
        assert int(sequence[length + step]) == int(want.argmax())
