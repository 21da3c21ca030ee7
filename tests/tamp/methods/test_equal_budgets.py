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
ignored the budget would not).
"""

from __future__ import annotations

import pytest
import torch

from bench.token_bench import TokenShape, build
from tamp.methods.base import TokenMethod
from tamp.methods.registry import all_methods
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


@pytest.mark.parametrize("method", BUDGETED)
def test_576_visual_tokens_at_each_budget(llava_576, method: str) -> None:
    model, inputs = llava_576
    for share in SHARES:
        got = retained(model, inputs, method, share)
        assert abs(got - share * 576) <= 0.01 * share * 576, (method, share, got)


@pytest.mark.parametrize("method", BUDGETED)
def test_36_visual_tokens_at_each_budget(tiny_36, method: str) -> None:
    model, inputs = tiny_36
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert visual == 36  # a 4 x 4 base tile and 4 rows of 4 patches + newline
    floor = retained(model, inputs, method, FLOOR_SHARE)
    assert floor <= visual / 4, (method, floor)
    for share in SHARES:
        got = retained(model, inputs, method, share)
        assert abs(got - max(share * visual, floor)) <= 0.5, (method, share, got, floor)


def test_pool_budget_count_without_a_share_is_refused(llava_576) -> None:
    from tamp.errors import TampError

    model, _ = llava_576
    with pytest.raises(TampError, match="pool_keep is unset"):
        TokenTransform.build("pool", {"pool_count": "budget"}).install(model)
