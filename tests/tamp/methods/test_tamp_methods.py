"""TAMP proper and the allocation baselines on tiny models of every family: budgets, bounds, direction."""

from __future__ import annotations

import pytest
import torch

from tamp.pipeline import prune
from tamp.recipe import recipe_for, weight_config
from tests.helpers import generate_once, load_weights

FAMILIES = ("llama", "qwen2", "llava", "llava-next", "qwen2-vl", "qwen2.5-vl",
            "qwen3-vl", "internvl3", "gemma3", "smolvlm")
PRESETS = ("owl", "ecoflap", "das", "amia", "tamp")


def _prune(tiny_model, tmp_path, family, method, pattern="unstructured", **kw):
    cfg = weight_config(method, sparsity=kw.pop("sparsity", 0.5), pattern=pattern, calib="synthetic",
                                  nsamples=4, seqlen=32, seed=kw.pop("seed", 42), **kw)
    out = tmp_path / f"{family}-{method}-{pattern.replace(':', 'of')}"
    return out, prune(str(tiny_model(family)), recipe_for(cfg), out, device="cpu")


def _kept(info) -> int:
    return sum(m["numel"] - m["zeros"] for m in info["per_matrix"].values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", PRESETS)
def test_preset_on_family(tiny_model, tmp_path, family, method):
    out, info = _prune(tiny_model, tmp_path, family, method)
    per = info["per_matrix"]
    total = sum(m["numel"] for m in per.values())
    targets = [m["target"] for m in per.values()]
    assert all(0.0 <= t <= 0.6 + 1e-9 for t in targets), targets
    # the allocation's budget is exact; per-row rounding of each matrix costs at most one weight per row
    planned_keep = sum(m["numel"] * (1 - m["target"]) for m in per.values())
    assert abs(planned_keep - total * 0.5) <= len(per), (planned_keep, total)
    rows = sum(m["shape"][0] for m in per.values())
    assert abs(_kept(info) - planned_keep) <= rows
    for name, m in per.items():  # Wanda prunes each row at the matrix's own sparsity
        assert m["zeros"] == m["shape"][0] * int(m["shape"][1] * m["target"]), name
    if method in ("amia", "tamp"):
        details = info["engine"]
        assert 0 < details["selected_tokens"] <= details["candidate_tokens"]
    if method in ("owl", "ecoflap", "das", "tamp"):
        assert len(set(round(t, 9) for t in targets)) > 1, "the allocation is not uniform"
    generate_once(out, family)


@pytest.mark.parametrize("method", ("das", "tamp", "owl"))
def test_nm_skips_the_allocation_and_says_so(tiny_model, tmp_path, method):
    out, info = _prune(tiny_model, tmp_path, "llava-next", method, pattern="2:4")
    assert any("cannot apply under N:M" in w for w in info["warnings"])
    weights = load_weights(out)
    for name in info["per_matrix"]:
        w = weights[name + ".weight"]
        assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()), name


def test_owl_gives_more_outlier_blocks_less_sparsity(tiny_model, tmp_path):
    _, info = _prune(tiny_model, tmp_path, "llama", "owl")
    ratios = info["engine"]["owl_outlier_ratios"]["model.layers"]
    block_sparsity = [info["per_matrix"][f"model.layers.{i}.mlp.down_proj"]["target"] for i in range(len(ratios))]
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(block_sparsity[a] >= block_sparsity[b] - 1e-12 for a, b in zip(order, order[1:]))
    assert sum(block_sparsity) / len(block_sparsity) == pytest.approx(0.5, abs=1e-9)
    _, flipped = _prune(tiny_model, tmp_path / "f", "llama", "owl", owl_released_sign=True)
    flipped_sparsity = [flipped["per_matrix"][f"model.layers.{i}.mlp.down_proj"]["target"] for i in range(len(ratios))]
    assert all(flipped_sparsity[a] <= flipped_sparsity[b] + 1e-12 for a, b in zip(order, order[1:]))


def test_das_paper_mode_gives_one_sparsity_per_block(tiny_model, tmp_path):
    _, info = _prune(tiny_model, tmp_path, "llava-next", "das", das_mode="paper")
    per = info["per_matrix"]
    for i in range(4):
        block = {m["target"] for n, m in per.items() if f"layers.{i}." in n}
        assert len(block) == 1
    total = sum(m["numel"] for m in per.values())
    assert sum(m["numel"] * m["target"] for m in per.values()) / total == pytest.approx(0.5, abs=1e-9)


def test_das_released_mode_leaves_small_matrices_denser(tiny_model, tmp_path):
    """k/v (32 x 64) are smaller than q (64 x 64) and the MLP (128 x 64): the released allocation keeps more of them."""
    _, info = _prune(tiny_model, tmp_path, "llama", "das")
    per = info["per_matrix"]
    for i in range(4):
        k = per[f"model.layers.{i}.self_attn.k_proj"]["target"]
        gate = per[f"model.layers.{i}.mlp.gate_proj"]["target"]
        assert k < gate


def test_tamp_same_seed_same_masks(tiny_model, tmp_path):
    a, _ = _prune(tiny_model, tmp_path / "a", "qwen2-vl", "tamp")
    b, _ = _prune(tiny_model, tmp_path / "b", "qwen2-vl", "tamp")
    wa, wb = load_weights(a), load_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_amia_layer_scope_and_config_switches_are_recorded(tiny_model, tmp_path):
    _, info = _prune(tiny_model, tmp_path, "llava", "tamp", amia_scope="layer", das_positive_only=False)
    assert info["config"]["params"]["amia"]["amia_scope"] == "layer"
    assert info["config"]["params"]["das"]["das_positive_only"] is False
    assert info["engine"]["selected_tokens"] > 0


def test_attention_capture_matches_eager_attention_weights(tiny_model):
    """The last-row scores AMIA uses equal the model's own eager attention probabilities."""
    from transformers import AutoModelForCausalLM

    from tamp.engine.attention import capture_last_row_attention

    path = tiny_model("llama")
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    sdpa = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    ids = torch.arange(3, 40).unsqueeze(0)
    sink: list[torch.Tensor] = []
    with torch.inference_mode():
        want = eager(ids, output_attentions=True).attentions
        # the switch lives on the config the blocks share, so one forward reports every block in order
        with capture_last_row_attention(sdpa.model.layers[0], sink):
            sdpa(ids)
    assert len(sink) == len(want)
    for got, attn in zip(sink, want):
        torch.testing.assert_close(got, attn[:, :, -1, :].float().mean(1), rtol=1e-5, atol=1e-6)
    assert sdpa.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ("llama", "llava-next"))
def test_ecoflap_suffix_losses_equal_whole_model_losses(tiny_model, family):
    """ECoFLaP's scores from block-suffix losses match the obvious whole-model-forward re-statement."""
    from tamp.algorithms.allocations import zeroth_order_grad
    from tamp.calibration.loader import build_calibration
    from tamp.engine.context import Context, EngineResult, PhaseTimer, matrices_to_prune
    from tamp.methods.ecoflap import allocate, full_loss, lm_labels
    from tamp.models.adapters import get_adapter
    from tamp.models.loading import load_model

    loaded = load_model(str(tiny_model(family)))
    model, adapter = loaded.model, get_adapter(loaded.model)
    batches = build_calibration("synthetic", loaded, 2, 24, seed=0).batches
    cfg = weight_config("ecoflap", sparsity=0.5)
    stacks = adapter.stacks(model, False)
    linears = matrices_to_prune(model, stacks)
    result = EngineResult()
    ctx = Context(model, adapter, stacks, linears, batches, cfg, torch.device("cpu"), False, result,
                  PhaseTimer(result.timings, torch.device("cpu")))
    allocate(ctx)
    media = [i for ids in adapter.media_token_ids.values() for i in ids]
    expected: dict[str, float] = {}
    generator = torch.Generator()
    with torch.inference_mode():
        for index, (name, mod) in enumerate(linears.items()):
            original = mod.weight.data
            for b, batch in enumerate(batches):
                generator.manual_seed(cfg.seed * 1_000_003 + index * 10_007 + b)
                step = cfg.param("ecoflap_eps") * torch.randn(original.shape, generator=generator)
                mod.weight.data = original + step
                plus = full_loss(model, batch, lm_labels(batch, media))
                mod.weight.data = original - step
                minus = full_loss(model, batch, lm_labels(batch, media))
                block = name.split(".self_attn")[0].split(".mlp")[0]
                expected[block] = expected.get(block, 0.0) + zeroth_order_grad(plus, minus, cfg.param("ecoflap_eps"))
            mod.weight.data = original
    got = result.details["ecoflap_block_scores"]
    assert set(got) == set(expected)
    for block in got:
        assert got[block] == pytest.approx(expected[block], rel=0.02), block
