"""The analytic prefill FLOP count against torch.utils.flop_counter.FlopCounterMode (eager attention, so the
attention matmuls are ops the counter sees), per family, with and without each token method, and with pruned
weights; the vision encoder's and projector's count, and the whole prefill the cost meter records."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tamp.inference.cost import CostMeter, summarize
from tamp.inference.flops import ModelShape
from tamp.inference.vision_flops import VisionMeter, vision_parts
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, YOPO_FAMILIES, attn
from tests.tamp.inference.methods import METHODS, SETTINGS


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
         ("pool", SETTINGS["pool"]), ("pool", {"pool_keep": 0.222}),
         ("sparsevlm", {}), ("sparsevlm", {"sparsevlm_keep": 0.222, "sparsevlm_cluster_size": 2}),
         ("cdpruner", SETTINGS["cdpruner"]), ("cdpruner", {"cdpruner_keep": 0.25, "cdpruner_text": "all"}),
         ("dart", {"token_budget": 0.222}), ("pool", {"token_budget": 0.222}), ("pdrop", {"token_budget": 0.333}),
         ("sparsevlm", {"token_budget": 0.222}), ("cdpruner", {"token_budget": 0.222}))


def _applies(family: str, method: str | None) -> bool:
    """Whether the family takes the method (Gemma 3 refuses YOPO: docs/models.md)."""
    return method != "yopo" or family in YOPO_FAMILIES


@pytest.mark.parametrize(("family", "case"), [(f, c) for f in FAMILIES for c in range(len(CASES))
                                              if _applies(f, CASES[c][0])])
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
@pytest.mark.parametrize("family", YOPO_FAMILIES)
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


def _vision_counted(model, inputs: dict) -> tuple[dict[str, float], float]:
    """FlopCounterMode's FLOPs in the vision encoder (the tower less a projector inside it) and the projector, and
    the whole model's."""
    tower, projector = vision_parts(model, get_adapter(model))
    names = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    total = {name: float(sum(counts.get(f"{root}.{names[id(m)]}", {}).values())) for name, m in
             (("tower", tower), ("projector", projector))}
    inside = names[id(projector)].startswith(names[id(tower)] + ".")
    encoder = total["tower"] - total["projector"] if inside else total["tower"]
    return {"encoder": encoder, "projector": total["projector"]}, float(sum(counts["Global"].values()))


@pytest.mark.parametrize(("family", "method"), [(f, m) for f in FAMILIES for m in (None, *METHODS) if _applies(f, m)])
def test_recorded_prefill_flops_cover_the_vision_side(loaded, family: str, method: str | None) -> None:
    """What the cost meter records for a prefill (vision encoder + projector + language model + the method's
    scoring) against every matmul and convolution the counter saw in the whole model, dense and with each token
    method; the encoder's and the projector's parts against the counter's in those modules. Within 1% (in fact
    to 1e-6: both count the same operations)."""
    model, inputs, _ = loaded(family)
    attn(model, "eager")
    dropper = TokenTransform.build(method, SETTINGS[method]).install(model) if method else None
    meter = CostMeter(model, dropper)
    try:
        parts, total = _vision_counted(model, inputs)
    finally:
        meter.remove()
        if dropper is not None:
            dropper.remove()
    recorded = meter.prefills[-1]
    assert parts["encoder"] > 0 and parts["projector"] > 0
    assert recorded["encoder"] == pytest.approx(parts["encoder"], rel=1e-6)
    assert recorded["projector"] == pytest.approx(parts["projector"], rel=1e-6)
    assert recorded["dense"] == pytest.approx(total, rel=1e-6)
    summary = summarize([meter.export()])
    assert summary["prefill_tflops_encoder"] * 1e12 == pytest.approx(parts["encoder"], rel=1e-6)
    assert summary["prefill_tflops"] * 1e12 == pytest.approx(total, rel=1e-6)


def test_the_projector_part_follows_the_rows_it_ran_on(loaded) -> None:
    """A method that removes tokens before the projector (VisionZip's kind) declares nothing: the projector's part
    is what its linears ran on. Half the image features through the projector cost half its dense count, as
    the counter sees it."""
    model, _, _ = loaded("llava")
    tower, projector = vision_parts(model, get_adapter(model))
    meter = VisionMeter(tower, projector)
    width = projector.linear_1.in_features
    try:
        features = torch.randn(1, 8, width)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            projector(features)
            full = meter.take()
            projector(features[:, :4])
            half = meter.take()
    finally:
        meter.remove()
    assert full.dense["encoder"] == 0 and full.dense["projector"] == 2 * half.dense["projector"]
    assert full.dense["projector"] + half.dense["projector"] == pytest.approx(
        sum(counter.get_flop_counts()["Global"].values()), rel=1e-9)


def test_nonzero_vision_flops_follow_pruned_vision_weights(loaded) -> None:
    """--prune-vision: the non-zero count of the encoder's linears halves with half their weights zero, the dense
    count does not change."""
    model, inputs, _ = loaded("qwen2-vl")
    tower, projector = vision_parts(model, get_adapter(model))
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)
               and not any(m is p for p in projector.modules())]
    saved = [m.weight.detach().clone() for m in linears]
    try:
        dense_meter = VisionMeter(tower, projector)
        with torch.no_grad():
            model(**inputs)
        before = dense_meter.take()
        dense_meter.remove()
        with torch.no_grad():
            for m in linears:
                m.weight[:, ::2] = 0
        meter = VisionMeter(tower, projector)
        with torch.no_grad():
            model(**inputs)
        after = meter.take()
        meter.remove()
    finally:
        with torch.no_grad():
            for m, w in zip(linears, saved):
                m.weight.copy_(w)
    assert after.dense == before.dense
    assert after.nonzero["projector"] == before.nonzero["projector"]
    assert after.nonzero["encoder"] < before.nonzero["encoder"]


def test_generate_charges_the_vision_side_to_its_prefill(loaded) -> None:
    """generate() runs the vision tower before the prefill's own forward (transformers 5): the meter still charges
    it to that prefill, as much as a plain forward does, and nothing to the decode steps."""
    model, inputs, _ = loaded("llava-next")
    meter = CostMeter(model)
    try:
        with torch.no_grad():
            model(**inputs)
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        meter.remove()
    forward, generated = meter.prefills
    assert forward["encoder"] > 0 and generated["encoder"] == forward["encoder"]
    assert generated["projector"] == forward["projector"]  # (its LM head runs for the last position only)
