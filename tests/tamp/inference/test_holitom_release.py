"""HoliTom on the tiny LLaVA-OneVision (the release's model) with a video, against the release re-stated: the
vision tower run as the release runs it (eager, `output_attentions=True`, the feature layer's [frames, H, T, T]
averaged over heads then queries, pooled as the frames are), the outer step by the loop re-statements of
tests/tamp/algorithms/test_holitom.py, the new sequence run through the LLM as a prompt (re-packed positions); the
inner merge from that run's own layer K - 1 attention and layer K input. Ours forms the vision attention from the
layer's own query and key, under eager and sdpa alike. Other families are refused with one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tamp.errors import TampError
from tamp.inference.flops import ModelShape
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.algorithms.test_holitom import inner_by_hand, video_by_hand
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.test_aim_release import _embeddings, _language_logits

OUTER = {"holitom_keep": 0.5, "holitom_tau": 0.8, "holitom_inner": "off"}
FULL = {"holitom_keep": 0.5, "holitom_tau": 0.8, "holitom_k": 2, "holitom_r": 0.5}
KEEP_ALL = {"holitom_keep": 1.0, "holitom_tau": 1.5, "holitom_r": 0.0}  # tau > 1: nothing is static
K = 2


@pytest.fixture(scope="module")
def video(tiny_model):
    """(model, inputs, media ids): 6 frames, the first three the same picture (static tokens, one segment)."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    path = tiny_model("llava-onevision")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = load_processor(path)
    rng = np.random.default_rng(0)
    still = rng.integers(0, 256, (1, 60, 80, 3), dtype=np.uint8)
    frames = np.concatenate([still, still, still, rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(proc(text=[prompt], videos=[frames], return_tensors="pt"))
    media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
    return model, inputs, media


def _video_run(model, inputs: dict) -> tuple[int, int]:
    ids = inputs["input_ids"][0].tolist()
    token = get_adapter(model).media_token_ids["video"][0]
    start = ids.index(token)
    return start, start + ids.count(token)


def _release_attention(model, pixels: torch.Tensor) -> torch.Tensor:
    """[frames, pooled tokens]: the release's SigLIP call (eager, output_attentions), last layer's attention
    `.mean(dim=1).mean(dim=1)`, through get_2dPool (bilinear to ceil(side / 2))."""
    tower = model.model.vision_tower
    saved = model.config._attn_implementation
    attn(model, "eager")
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        attn(model, saved)
    weights = out.attentions[model.config.vision_feature_layer].mean(dim=1).mean(dim=1)
    side = math.isqrt(weights.shape[1])
    grid = weights.view(-1, side, side, 1).permute(0, 3, 1, 2)
    half = math.ceil(side / 2)
    return torch.nn.functional.interpolate(grid, size=[half, half], mode="bilinear").permute(0, 2, 3, 1).flatten(1)


def _release_prompt(model, inputs: dict, params: dict) -> torch.Tensor:
    """The sequence entering the LLM in the release: the video's tokens replaced by the outer step's, newline
    last."""
    embeds = _embeddings(model, inputs)
    start, end = _video_run(model, inputs)
    pixels = inputs["pixel_values_videos"][0]
    attention = _release_attention(model, pixels)
    frames = embeds[start:end - 1].view(pixels.shape[0], -1, embeds.shape[-1])
    _, states = video_by_hand(frames, attention, params["holitom_keep"], params["holitom_tau"], 0.6, 0.0, 7, 1024)
    return torch.cat([embeds[:start], torch.tensor(states), embeds[end - 1:]])


def _run(model, params: dict, inputs: dict, layer: int = 0):
    """Our run: logits, the states decoder layer `layer` ran on, the editor."""
    seen: list[torch.Tensor] = []
    dropper = TokenTransform.build("holitom", params).install(model)
    hook = get_adapter(model).language_stack(model).layers[layer].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0]
    finally:
        hook.remove()
        dropper.remove()
    return logits, seen[0], dropper


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
def test_outer_merge_equals_the_release(video, implementation: str) -> None:
    model, inputs, _ = video
    attn(model, implementation)
    want = _release_prompt(model, inputs, OUTER)
    logits, states, dropper = _run(model, OUTER, inputs)
    assert states.shape == want.shape and states.shape[0] < inputs["input_ids"].shape[1]
    torch.testing.assert_close(states, want, rtol=0, atol=1e-5)
    kept = dropper.kept_by_layer[0][0]
    torch.testing.assert_close(logits[kept], _language_logits(model, want), rtol=0, atol=1e-4)
    start, end = _video_run(model, inputs)
    stats = dropper.history[-1]
    assert stats.visual_in == end - start and stats.visual_kept_per_layer[0] == want.shape[0] - (
        inputs["input_ids"].shape[1] - (end - start))


def _release_inner(model, want: torch.Tensor, start: int, visual: int) -> tuple[list[int], torch.Tensor]:
    """The release's layer-K merge on its prompt: (kept rows of the re-packed sequence, layer K's input)."""
    language = model.get_submodule(get_adapter(model).language_stack(model).name.rsplit(".", 1)[0])
    saved = model.config._attn_implementation
    attn(model, "eager")
    try:
        with torch.no_grad():
            out = language(inputs_embeds=want[None], output_attentions=True, output_hidden_states=True,
                           use_cache=False)
    finally:
        attn(model, saved)
    row = out.attentions[K - 1][0].mean(dim=0)[-1]
    hidden = out.hidden_states[K][0]
    kept, states = inner_by_hand(hidden[start:start + visual], row[start:start + visual],
                                 round(visual * (1 - FULL["holitom_r"])))
    rows = list(range(start)) + [start + i for i in kept] + list(range(start + visual, want.shape[0]))
    full = hidden.clone()
    full[[start + i for i in kept]] = states
    return rows, full[rows]


def test_inner_merge_equals_the_release(video) -> None:
    """Ours under sdpa (the last row formed from the layer's query and key) against the release's eager run."""
    model, inputs, _ = video
    attn(model, "sdpa")
    want = _release_prompt(model, inputs, FULL)
    start, end = _video_run(model, inputs)
    visual = want.shape[0] - (inputs["input_ids"].shape[1] - (end - start))
    rows, states = _release_inner(model, want, start, visual)
    _, got, dropper = _run(model, FULL, inputs, layer=K)
    entry = dropper.kept_by_layer[0][0]
    assert dropper.kept_by_layer[K][0].tolist() == entry[rows].tolist()
    torch.testing.assert_close(got, states, rtol=0, atol=1e-4)
    assert dropper.history[-1].visual_kept_per_layer[K] == round(visual * 0.5)


def _recompute_step(model, seq: torch.Tensor, rows: list[int], states: torch.Tensor | None, prompt: int) -> torch.Tensor:
    """The release's model on `seq` (its prompt and the tokens generated so far) without a cache: from layer K the
    prompt keeps `rows` (their layer-K states overwritten by `states`), the generated tokens all stay."""
    layers = get_adapter(model).language_stack(model).layers
    keep = torch.tensor(rows + list(range(prompt, seq.shape[0])))

    def cut(module, args, kwargs, first: bool):
        hidden = args[0] if args else kwargs["hidden_states"]
        if first:
            hidden = hidden.clone()
            if states is not None:
                hidden[0, rows] = states
            hidden = hidden[:, keep]
        kwargs = dict(kwargs)
        kwargs["position_embeddings"] = tuple(t[:, keep] for t in kwargs["position_embeddings"])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            kwargs["attention_mask"] = mask[:, :, keep][:, :, :, keep]
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    hooks = [layers[i].register_forward_pre_hook(lambda m, a, k, i=i: cut(m, a, k, i == K), with_kwargs=True)
             for i in range(K, len(layers))]
    try:
        return _language_logits(model, seq)[-1]
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("params", (OUTER, FULL), ids=("outer", "full"))
def test_cached_generation_equals_a_recompute(video, params: dict) -> None:
    """Greedy decoding with the KV cache equals decoding the release's prompt without one, step by step (with the
    inner merge: the prompt cut and merged at layer K, positions kept)."""
    model, inputs, media = video
    attn(model, "sdpa")
    seq = _release_prompt(model, inputs, params)
    prompt = seq.shape[0]
    rows, states = list(range(prompt)), None
    if params.get("holitom_inner", "merge") == "merge":
        start, end = _video_run(model, inputs)
        rows, layer_input = _release_inner(model, seq, start, prompt - (inputs["input_ids"].shape[1] - (end - start)))
        states = layer_input
    dropper = TokenTransform.build("holitom", params).install(model)
    try:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                   output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    steps = []
    for step in range(3):
        last = _recompute_step(model, seq, rows, states, prompt)
        last[media] = -math.inf
        steps.append(int(last.argmax()))
        seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([steps[-1]]))])
        torch.testing.assert_close(generated.scores[step][0], last, rtol=0, atol=1e-4)
    assert generated.sequences[0, inputs["input_ids"].shape[1]:].tolist() == steps


def test_keeping_everything_leaves_the_logits(video) -> None:
    model, inputs, _ = video
    attn(model, "sdpa")
    with torch.no_grad():
        dense = model(**inputs).logits
    dropper = TokenTransform.build("holitom", KEEP_ALL).install(model)
    try:
        with torch.no_grad():
            ours = model(**inputs).logits
    finally:
        dropper.remove()
    torch.testing.assert_close(ours, dense, rtol=0, atol=1e-5)
    assert dropper.history[-1].scoring_flops > 0  # the vision attention and the layer's last row were computed


def _total(model, inputs: dict) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return float(counter.get_total_flops())


@pytest.mark.parametrize("params", (OUTER, FULL, {**FULL, "holitom_d": 0.5}), ids=("outer", "full", "contextual"))
def test_flops_match_the_counter(video, params: dict) -> None:
    """Everything FlopCounterMode sees (vision tower, projector, LLM) with HoliTom, less the dense run, equals the
    analytic LLM difference plus what it declared: the vision attention's q k^T, DPC-KNN's distances, the inner
    merge's similarities and the last row."""
    model, inputs, _ = video
    attn(model, "eager")
    dense = _total(model, inputs)
    dropper = TokenTransform.build("holitom", params).install(model)
    try:
        ours = _total(model, inputs)
    finally:
        dropper.remove()
    shape = ModelShape.of(model, get_adapter(model))
    n = inputs["input_ids"].shape[1]
    stats = dropper.history[-1]
    analytic = shape.prefill(stats.tokens_per_layer, n)["dense"] - shape.prefill([n] * len(stats.tokens_per_layer),
                                                                                 n)["dense"]
    assert ours - dense == pytest.approx(analytic + stats.scoring_flops, rel=1e-6)
    assert stats.tokens_per_layer[0] < n


def test_images_pass_the_outer_step_as_in_the_release(loaded) -> None:
    """An image prompt: the outer step leaves it as the release's (video only) does; the inner merge takes it."""
    model, inputs, _ = loaded("llava-onevision")
    attn(model, "sdpa")
    with torch.no_grad():
        dense = model(**inputs).logits[0]
    logits, _, dropper = _run(model, OUTER, inputs)
    torch.testing.assert_close(logits, dense, rtol=0, atol=1e-5)
    _, _, dropper = _run(model, FULL, inputs)
    stats = dropper.history[-1]
    assert stats.visual_kept_per_layer[0] == stats.visual_in > stats.visual_kept_per_layer[K]


# refused at install, before any hook, through the method's config_problem (the same line `harness run` gives at plan time)
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"}))
def test_other_families_are_refused(loaded, family: str) -> None:
    model, _, _ = loaded(family)
    with pytest.raises(TampError, match="^--method holitom: holitom merges video frames") as caught:
        TokenTransform.build("holitom", OUTER).install(model)
    assert "\n" not in str(caught.value)


def test_budget_maps_the_share() -> None:
    from tamp.recipe import build_recipe

    for share, tau in ((0.10, 0.65), (0.111, 0.65), (0.15, 0.8), (0.25, 0.8)):
        recipe = build_recipe("holitom", 0, overrides=[f"token_budget={share}"])
        assert recipe.token is not None
        assert recipe.token.params["holitom_keep"] == pytest.approx(share)
        assert recipe.token.params["holitom_tau"] == pytest.approx(tau)


# --- Qwen2-VL / 2.5-VL (beyond the release): a frame is a temporal patch, a token's attention its 2 x 2 patches'
# mean (Qwen2.5-VL's put back from the tower's window order) ------------------------------------------------------
QWEN = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
NO_DEEPSTACK = ("qwen2-vl", "qwen2.5-vl")  # a plain language-model call is the reference (Qwen3-VL adds DeepStack)


@pytest.fixture(scope="module")
def qwen_videos(tiny_model):
    cache: dict[str, tuple] = {}

    def get(family: str) -> tuple:
        if family not in cache:
            cache[family] = _qwen_video(tiny_model, family)
        return cache[family]

    return get


def _qwen_video(tiny_model, family: str):
    """(model, inputs, media ids): 8 frames (4 temporal patches), the first four the same picture."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    path = tiny_model(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = load_processor(path)
    rng = np.random.default_rng(0)
    still = rng.integers(0, 256, (1, 60, 80, 3), dtype=np.uint8)
    frames = np.concatenate([still] * 4 + [rng.integers(0, 256, (4, 60, 80, 3), dtype=np.uint8)])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(proc(text=[prompt], videos=[frames], return_tensors="pt"))
    media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
    return model, inputs, media


def _qwen_expected(model, inputs: dict, params: dict, monkeypatch) -> tuple[list[int], torch.Tensor]:
    """(kept positions, states entering the LLM): the tower's last block run eager, its per-frame attention
    matrices recorded as eager_attention_forward returns them, mean over heads then queries, each token the mean
    of its 2 x 2 patches; the outer step re-stated on the frames' merged states."""
    import importlib

    from transformers.vision_utils import get_vision_window_index

    kind = model.config.model_type
    qwen = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    last = get_adapter(model).vision_stack(model).layers[-1].attn
    seen: list[torch.Tensor] = []
    eager = qwen.eager_attention_forward

    def record(module, *args, **kwargs):
        out, weights = eager(module, *args, **kwargs)
        if module is last:
            seen.append(weights[0].mean(dim=0).mean(dim=0))
        return out, weights

    monkeypatch.setattr(qwen, "eager_attention_forward", record)
    saved = model.config._attn_implementation
    attn(model, "eager")
    try:
        embeds = _embeddings(model, inputs)
    finally:
        attn(model, saved)
        monkeypatch.undo()
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert len(seen) == t
    units = torch.cat(seen).view(-1, 4).mean(dim=-1)
    if kind == "qwen2_5_vl":  # the tower ran its merge units in window order: unit window[i] sat at i
        vision = model.config.vision_config
        window, _ = get_vision_window_index(inputs["video_grid_thw"], vision.spatial_merge_size, vision.window_size,
                                            vision.patch_size)
        restored = torch.zeros_like(units)
        for i, unit in enumerate(window.tolist()):
            restored[unit] = units[i]
        units = restored
    attention = units.view(t, -1)
    ids = inputs["input_ids"][0].tolist()
    token = get_adapter(model).media_token_ids["video"][0]
    where = [p for p, i in enumerate(ids) if i == token]  # Qwen3-VL: a timestamp between frames
    per = len(where) // t
    frames = embeds[where].view(t, per, embeds.shape[-1])
    sources, states = video_by_hand(frames, attention, params["holitom_keep"], params["holitom_tau"], 0.6, 0.0, 7,
                                    1024)
    kept, rows = [], []
    for p in range(len(ids)):  # the video's tokens leave; at each frame's first slot, its kept tokens in order
        if ids[p] != token:
            kept.append(p)
            rows.append(embeds[p])
        elif where.index(p) % per == 0:
            f = where.index(p) // per
            for s, state in zip(sources, states):
                if s // per == f:
                    kept.append(where[s])
                    rows.append(torch.tensor(state))
    return kept, torch.stack(rows)


def _positions(model, inputs: dict) -> torch.Tensor:
    """The 3-D mrope position ids the language model gets in a dense run."""
    stack = get_adapter(model).language_stack(model)
    language = model.get_submodule(stack.name.rsplit(".", 1)[0])
    seen: list[torch.Tensor] = []
    hook = language.register_forward_pre_hook(lambda m, a, k: seen.append(k["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("family", QWEN)
def test_qwen_outer_merge_equals_the_restatement(qwen_videos, family: str, monkeypatch) -> None:
    """The tokens kept, their states, and the logits at them: the language model run on the new sequence, each
    token at its own 3-D position."""
    model, inputs, _ = qwen_videos(family)
    kept, want = _qwen_expected(model, inputs, OUTER, monkeypatch)
    attn(model, "sdpa")  # ours under sdpa against the tower's eager matrices
    logits, states, dropper = _run(model, OUTER, inputs)
    assert dropper.kept_by_layer[0][0].tolist() == kept and len(kept) < inputs["input_ids"].shape[1]
    torch.testing.assert_close(states, want, rtol=0, atol=1e-5)
    if family not in NO_DEEPSTACK:
        return  # the states and positions above are all: a plain language-model call lacks DeepStack's features
    position = _positions(model, inputs)[..., kept]
    language = model.get_submodule(get_adapter(model).language_stack(model).name.rsplit(".", 1)[0])
    with torch.no_grad():
        hidden = language(inputs_embeds=want[None], position_ids=position, use_cache=False).last_hidden_state
        expected = model.get_output_embeddings()(hidden)[0]
    torch.testing.assert_close(logits[dropper.kept_by_layer[0][0]], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_keeping_everything_leaves_the_logits(qwen_videos, family: str) -> None:
    model, inputs, _ = qwen_videos(family)
    attn(model, "sdpa")
    with torch.no_grad():
        dense = model(**inputs).logits[0]
    logits, _, dropper = _run(model, KEEP_ALL, inputs)
    torch.testing.assert_close(logits, dense, rtol=0, atol=1e-5)
    assert dropper.history[-1].scoring_flops > 0


@pytest.mark.parametrize("family", QWEN)
def test_qwen_flops_match_the_counter(qwen_videos, family: str) -> None:
    """The full method (outer step and inner merge) on each family; the outer step alone is covered on
    LLaVA-OneVision above."""
    model, inputs, _ = qwen_videos(family)
    params = FULL
    attn(model, "eager")
    dense = _total(model, inputs)
    dropper = TokenTransform.build("holitom", params).install(model)
    try:
        ours = _total(model, inputs)
    finally:
        dropper.remove()
    shape = ModelShape.of(model, get_adapter(model))
    n = inputs["input_ids"].shape[1]
    stats = dropper.history[-1]
    analytic = shape.prefill(stats.tokens_per_layer, n)["dense"] - shape.prefill([n] * len(stats.tokens_per_layer),
                                                                                 n)["dense"]
    assert ours - dense == pytest.approx(analytic + stats.scoring_flops, rel=1e-6)
    assert stats.tokens_per_layer[0] < n


@pytest.mark.parametrize("family", NO_DEEPSTACK)
def test_qwen_cached_generation_equals_a_recompute(qwen_videos, family: str, monkeypatch) -> None:
    """The outer step: cached greedy decoding equals running the new sequence (each token at its own 3-D position,
    each generated token at the next text position, as in a dense run) without a cache, step by step."""
    model, inputs, media = qwen_videos(family)
    kept, seq = _qwen_expected(model, inputs, OUTER, monkeypatch)
    attn(model, "sdpa")
    position = _positions(model, inputs)
    following = int(position.max()) + 1
    position = position[..., kept]
    dropper = TokenTransform.build("holitom", OUTER).install(model)
    try:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                   output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    language = model.get_submodule(get_adapter(model).language_stack(model).name.rsplit(".", 1)[0])
    steps = []
    for step in range(3):
        with torch.no_grad():
            hidden = language(inputs_embeds=seq[None], position_ids=position, use_cache=False).last_hidden_state
            last = model.get_output_embeddings()(hidden)[0, -1]
        last[media] = -math.inf
        steps.append(int(last.argmax()))
        torch.testing.assert_close(generated.scores[step][0], last, rtol=0, atol=1e-4)
        seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([steps[-1]]))])
        position = torch.cat([position, torch.full((*position.shape[:-1], 1), following + step)], dim=-1)
    assert generated.sequences[0, inputs["input_ids"].shape[1]:].tolist() == steps


@pytest.mark.parametrize("family", QWEN)
def test_qwen_cached_generation_runs_and_keeps_the_cut(qwen_videos, family: str) -> None:
    """Cached greedy decoding with the full method (outer step, inner merge) runs, its first step's logits equal
    the prefill's last row, and the decode steps see only the kept tokens."""
    model, inputs, media = qwen_videos(family)
    attn(model, "sdpa")
    logits, _, _ = _run(model, FULL, inputs)
    dropper = TokenTransform.build("holitom", FULL).install(model)
    try:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=media,
                                   output_scores=True, return_dict_in_generate=True)
    finally:
        dropper.remove()
    first = logits[-1].clone()
    first[media] = -math.inf
    torch.testing.assert_close(generated.scores[0][0], first, rtol=0, atol=1e-4)
    stats = dropper.history[0]
    assert stats.visual_kept_per_layer[K] < stats.visual_kept_per_layer[0] < stats.visual_in


def test_the_inner_merge_keeps_one_token_at_least(video) -> None:
    """round(n x (1 - r)) = 0 (here r = 1) would leave no kept token to merge into (the release's merge fails):
    one stays, and every other visual token is averaged into it."""
    model, inputs, _ = video
    attn(model, "sdpa")
    _, _, dropper = _run(model, {**FULL, "holitom_r": 1.0}, inputs)
    assert dropper.history[-1].visual_kept_per_layer[K] == 1
