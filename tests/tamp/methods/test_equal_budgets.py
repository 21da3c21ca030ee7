"""Equal token budgets, checked: every registered token method that maps the common budget (`token_budget`) keeps
share x n visual tokens at the field's three shares, on a 576-token LLaVA-1.5-style prompt (32 layers, as
LLaVA-1.5-7B's depth sets PyramidDrop's stages) and on the trained tiny LLaVA-NeXT's 36 (4 layers).

Retained visual tokens: for a method whose plan drops once (FastV, DART: after layer K; the methods acting before
layer 0), the visual tokens left after that drop, as their papers count; for a staged method (several drops:
PyramidDrop), the visual tokens per layer averaged over every layer, as the PyramidDrop paper compares at 192 /
128 / 64. Tolerance: 1% of share x 576 (PyramidDrop's integer schedule over 32 layers lands within 0.6%; the
others exactly on round(share x n)), and half a token of share x 36. On 36 tokens some methods cannot go as low as
a ninth: what a method keeps at a share of 0.01 is its floor (PyramidDrop: layer 0 runs on all 36, so no 4-layer
schedule averages below 9; VisPruner: the 4 LLaVA-NeXT newlines the release keeps plus a patch per crop), the
target is the larger of the two, and the floor itself must stay below a quarter of the tokens (a method that
ignored the budget would not), or within one token of it for SparseVLM (layer 0 runs on all 36 and each of its
three stages recycles at least one cluster mean: 36, 2, 1, 1 average 10; its release counts at 0.333 average 19.5).

Video methods (HoliTom), which refuse image families at install, are checked on a video instead: 4 frames of
random pixels on the tiny Qwen2-VL (64 tokens per frame) and 8 on the tiny LLaVA-OneVision (the release's model: 4
pooled tokens per frame and a newline), the visual tokens entering the LLM after the outer step against share x the
video's visual tokens. The release's rule: the share is raised to s' = s x total / (total - saved) (capped at 1),
each segment keeps round(static x s') clusters and each frame ceil(moving x s') tokens; unrounded these sum to
exactly s x total, so the count lies in (s x total - segments / 2, s x total + frames + segments / 2], plus the
newline: the tolerance is that bound with segments <= frames. A fully static clip is the one case the cap breaks:
every frame merges into one segment, s' = s x frames > 1 is capped at 1, and the video keeps its one frame's
worth (the tiny OneVision's 32-frame smoke clips: 4 clusters and the newline at every budget). The inner merge
inside the LLM is not counted: HoliTom's budget (the release's RETAIN_RATIO, the paper's retain ratio) is the share
of video tokens entering the LLM, and the inner merge's fixed HOLITOM_r acts on top of it at every budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.token_bench import TokenShape, build
from tamp.errors import TampError
from tamp.methods.base import TokenMethod
from tamp.methods.registry import all_methods
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform

SHARES = (0.333, 0.222, 0.111)
FLOOR_SHARE = 0.01
BUDGETED = sorted(name for name, m in all_methods().items() if isinstance(m, TokenMethod) and m.budget is not None)
SHAPE = TokenShape(hidden=64, intermediate=128, heads=2, kv_heads=2, layers=32, visual=576, text=24, dtype="float32")


def staged(method: str) -> bool:
    """Whether the method drops in several stages at the first budget on LLaVA-1.5's 32 layers (on 4 layers a
    staged schedule can collapse into one drop: it is still counted layer-averaged)."""
    params = TokenTransform.build(method, {"token_budget": SHARES[0]}).params
    return len(all_methods()[method].plan(dict(params), 32).drops) > 1


def refuses_images(model: torch.nn.Module, method: str) -> bool:
    """Whether the method refuses an image family at install (a video method), asked of the method itself."""
    try:
        TokenTransform.build(method, {"token_budget": SHARES[0]}).install(model).remove()
    except TampError:
        return True
    return False


def retained(model: torch.nn.Module, inputs: dict, method: str, share: float) -> float:
    """The visual tokens `method` keeps at the budget `share` (after its drop, or layer-averaged when staged)."""
    dropper = TokenTransform.build(method, {"token_budget": share}).install(model)
    try:
        with torch.no_grad():
            model(**inputs, logits_to_keep=1)
        visual = dropper.history[-1].visual_kept_per_layer
    finally:
        dropper.remove()
    return sum(visual) / len(visual) if staged(method) else float(visual[-1])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small run fastest on one thread; two threads on a loaded machine spend 20x the time in
    their barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llava_576():
    model, inputs = build(SHAPE, torch.device("cpu"))
    return model, inputs


@pytest.fixture(scope="module")
def tiny_36():
    from transformers import AutoModelForImageTextToText

    from tamp.calibration.pictures import heldout_scenes, render
    from tamp.models.shipped import folder
    from tamp.processors import load_processor

    path = folder("llava-next")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = load_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(proc(text=[prompt], images=[render(heldout_scenes(1)[0])], return_tensors="pt"))
    return model, inputs


def test_the_registry_has_budgeted_methods() -> None:
    assert {"fastv", "dart", "pdrop", "pool", "random"} <= set(BUDGETED)
    assert staged("pdrop") and not staged("fastv") and not staged("dart")


@pytest.fixture(scope="module")
def videos(tiny_model):
    """[(model, inputs, video tokens, frames, newlines)]: random frames (no token static across frames) on the
    tiny Qwen2-VL (4 temporal frames of 8 x 8 merged tokens) and LLaVA-OneVision (8 frames of 2 x 2 pooled ones)."""
    from transformers import AutoModelForImageTextToText

    from tamp.processors import load_processor

    out = []
    for family, frames, side, newlines in (("qwen2-vl", 8, 224, 0), ("llava-onevision", 8, 64, 1)):
        path = tiny_model(family)
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        proc = load_processor(path)
        pixels = np.random.default_rng(0).integers(0, 256, (frames, side, side, 3), dtype=np.uint8)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
        prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = dict(proc(text=[prompt], videos=[pixels], return_tensors="pt"))
        token = get_adapter(model).media_token_ids["video"][0]
        n = int((inputs["input_ids"] == token).sum())
        llm_frames = frames // 2 if family == "qwen2-vl" else frames  # Qwen2-VL: a temporal patch of 2 frames
        out.append((model, inputs, n, llm_frames, newlines))
    return out


def test_video_methods_at_each_budget(llava_576, videos) -> None:
    model, _ = llava_576
    video_methods = [m for m in BUDGETED if refuses_images(model, m)]
    assert "holitom" in video_methods
    for method in video_methods:
        for video_model, inputs, n, frames, newlines in videos:
            for share in SHARES:
                dropper = TokenTransform.build(method, {"token_budget": share}).install(video_model)
                try:
                    with torch.no_grad():
                        video_model(**inputs, logits_to_keep=1)
                    got = dropper.history[-1].visual_kept_per_layer[0]  # entering the LLM, before any inner step
                finally:
                    dropper.remove()
                low, high = share * n - frames / 2, share * n + frames * 1.5 + newlines
                assert low < got <= high, (method, n, share, got)


@pytest.mark.parametrize("method", BUDGETED)
def test_576_visual_tokens_at_each_budget(llava_576, method: str) -> None:
    model, inputs = llava_576
    if refuses_images(model, method):
        pytest.skip("refuses image families: checked by test_video_methods_at_each_budget")
    for share in SHARES:
        got = retained(model, inputs, method, share)
        assert abs(got - share * 576) <= 0.01 * share * 576, (method, share, got)


@pytest.mark.parametrize("method", BUDGETED)
def test_36_visual_tokens_at_each_budget(tiny_36, method: str) -> None:
    model, inputs = tiny_36
    if refuses_images(model, method):
        pytest.skip("refuses image families: checked by test_video_methods_at_each_budget")
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert visual == 36  # a 4 x 4 base tile and 4 rows of 4 patches + newline
    floor = retained(model, inputs, method, FLOOR_SHARE)
    assert floor <= visual / 4 + (1 if method == "sparsevlm" else 0), (method, floor)
    for share in SHARES:
        got = retained(model, inputs, method, share)
        assert abs(got - max(share * visual, floor)) <= 0.5, (method, share, got, floor)


def test_pool_budget_count_without_a_share_is_refused(llava_576) -> None:
    from tamp.errors import TampError

    model, _ = llava_576
    with pytest.raises(TampError, match="pool_keep is unset"):
        TokenTransform.build("pool", {"pool_count": "budget"}).install(model)
