"""The analytic prefill FLOP count against torch.utils.flop_counter.FlopCounterMode (eager attention, so the
attention matmuls are ops the counter sees), per family, with and without FastV and AIM, and with pruned weights."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tamp.inference.flops import ModelShape
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn
from tests.tamp.inference.methods import SETTINGS


def _counted(model, inputs: dict) -> tuple[float, float]:
    """FlopCounterMode's FLOPs inside the decoder layers, and in the LM head."""
    stack = get_adapter(model).language_stack(model)
    root = type(model).__name__
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    layers = sum(sum(counts.get(f"{root}.{stack.name}.{i}", {}).values()) for i in range(len(stack.layers)))
    head = sum(v for name, ops in counts.items() if name.endswith("lm_head") for v in ops.values())
    return float(layers), float(head)


CASES = (("fastv", {"fastv_keep": 1.0}), ("fastv", {"fastv_keep": 0.5}), ("fastv", {"fastv_keep": 0.25}),
         ("aim", SETTINGS["aim"]), ("aim", {"aim_stages": "prune", "aim_prune_start": 1, "aim_prune_step": 0.5}),
         ("yopo", SETTINGS["yopo"]), ("yopo", {"yopo_strategies": "ffn", "yopo_ffn_keep": 0.25}),
         ("divprune", SETTINGS["divprune"]), ("divprune", {"divprune_keep": 0.25}),
         ("pdrop", SETTINGS["pdrop"]), ("pdrop", {"pdrop_rank": "own", "pdrop_lambda": 0.25}),
         ("random", SETTINGS["random"]), ("dart", SETTINGS["dart"]),
         ("dart", {"dart_k": 1, "dart_keep": 0.25, "dart_image_pivots": 2, "dart_text_pivots": 1}),
         ("pool", SETTINGS["pool"]), ("pool", {"pool_keep": 0.222}))


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("family", FAMILIES)
def test_analytic_flops_match_the_counter(loaded, family: str, case: int) -> None:
    """The layers' linears and attention matmuls from the per-layer token counts, plus what the method spent on
    scoring (FastV's last row, AIM's merge similarities and PageRank), less the MLP channels YOPO's visual rows
    skipped, against every matmul the counter saw."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    method, params = CASES[case]
    dropper = TokenTransform.build(method, params).install(model)
    try:
        layers, head = _counted(model, inputs)
    finally:
        dropper.remove()
    shape = ModelShape.of(model, get_adapter(model))
    stats = dropper.history[-1]
    got = shape.prefill(stats.tokens_per_layer, inputs["input_ids"].shape[1])
    assert got["dense"] - got["head"] + stats.scoring_flops - stats.skipped_flops == pytest.approx(layers, rel=1e-6)
    assert got["head"] == pytest.approx(head, rel=1e-9)
    if params.get("fastv_keep", 0) < 1 and params.get("yopo_strategies") != "ffn":
        assert stats.tokens_per_layer[-1] < inputs["input_ids"].shape[1]
    if method == "yopo":
        assert stats.skipped_flops > 0


def test_nonzero_flops_follow_the_pruned_weights(loaded) -> None:
    """Dense FLOPs do not change with pruning (dense kernels), the non-zero count does: 2 n nnz per linear."""
    model, inputs, _ = loaded("llava-next")
    adapter = get_adapter(model)
    layers = adapter.language_stack(model).layers
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        with torch.no_grad():
            for layer in layers:
                for mod in layer.modules():
                    if isinstance(mod, torch.nn.Linear):
                        mod.weight[:, ::2] = 0  # half of every matrix
        shape = ModelShape.of(model, adapter)
        n = inputs["input_ids"].shape[1]
        flops = shape.prefill([n] * len(layers), n)
        linears = [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        nnz = sum(int((m.weight != 0).sum()) for m in linears)
        dense = sum(m.weight.numel() for m in linears)
        assert flops["nonzero"] - flops["attention"] - flops["head"] == 2 * n * nnz
        assert flops["dense"] - flops["attention"] - flops["head"] == 2 * n * dense
        attn(model, "eager")
        counted, _ = _counted(model, inputs)
        assert flops["dense"] - flops["head"] == pytest.approx(counted, rel=1e-9)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])


YOPO_ATTENTION = ({"yopo_strategies": "heads"}, {"yopo_strategies": "attn", "yopo_window": 3},
                  {"yopo_strategies": "attn", "yopo_window": 3, "yopo_window_causal": True},
                  {"yopo_strategies": "layers+ffn+heads+attn", "yopo_layer": 3, "yopo_window": 3},  # release
                  {"yopo_strategies": "layers+ffn+heads+attn", "yopo_layer": 3, "yopo_window": 3,
                   "yopo_semantics": "removal"})


@pytest.mark.parametrize("case", range(len(YOPO_ATTENTION)))
@pytest.mark.parametrize("family", FAMILIES)
def test_yopo_heads_and_window_flops_match_the_counter(loaded, family: str, case: int) -> None:
    """Pruned visual heads (their q rows, o_proj columns and attention matmuls skipped by visual rows) and the
    windowed visual attention (non-visual keys + w^2 gathered keys instead of every key): the analytic count
    less what the dropper recorded as skipped, against the counter within 1% (in fact to 1e-6)."""
    from tamp.methods import yopo

    model, inputs, _ = loaded(family)
    attn(model, "eager")
    built = TokenTransform.build("yopo", YOPO_ATTENTION[case])
    pruned = [[0], [1, 3], [], [0, 1, 2, 3]]
    dropper = TokenTransform(built.method, built.params, {yopo.PRUNED_HEADS: pruned}).install(model)
    try:
        layers, _ = _counted(model, inputs)
    finally:
        dropper.remove()
    stats = dropper.history[-1]
    got = ModelShape.of(model, get_adapter(model)).prefill(stats.tokens_per_layer, inputs["input_ids"].shape[1])
    assert got["dense"] - got["head"] - stats.skipped_flops == pytest.approx(layers, rel=1e-6)
    assert stats.skipped_flops != 0
