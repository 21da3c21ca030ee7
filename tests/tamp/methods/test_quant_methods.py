"""The quantizers as methods: RTN and GPTQ alone and after pruning, in the engine's pass, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from tamp.algorithms.quantize import rtn_quantize
from tamp.errors import TampError
from tamp.pipeline import prune
from tamp.recipe import build_recipe
from tests.helpers import generate_once, load_weights

GROUP = 32  # divides the tiny models' widths (64, 128)


def _run(tiny_model, tmp_path, family: str, method: str, sparsity: float = 0.0, **sets):
    quantizes = any(part in ("rtn", "gptq") for part in method.split("+"))
    overrides = [f"{k}={v}" for k, v in {**({"quant_group": GROUP} if quantizes else {}), **sets}.items()]
    recipe = build_recipe(method, sparsity, overrides=overrides, calib="synthetic", nsamples=4, seqlen=32)
    out = tmp_path / f"{family}-{method.replace('+', '-')}"
    return out, prune(str(tiny_model(family)), recipe, out, device="cpu")


def _levels(w: torch.Tensor, group: int) -> int:
    """The most distinct values any (row, group of columns) of `w` holds."""
    return max(len(torch.unique(w[r, g:g + group])) for r in range(w.shape[0]) for g in range(0, w.shape[1], group))


@pytest.mark.parametrize("family", ["llama", "llava-next"])
def test_rtn_alone_equals_rounding_each_matrix(tiny_model, tmp_path, family: str) -> None:
    out, info = _run(tiny_model, tmp_path, family, "rtn")
    before, after = load_weights(tiny_model(family)), load_weights(out)
    assert info["quantization"]["grid"] == f"w4g{GROUP}" and info["quantization"]["matrices"] == len(info["per_matrix"])
    for name in info["per_matrix"]:
        key = f"{name}.weight"
        expect = rtn_quantize(before[key], 4, GROUP, True).weight.to(before[key].dtype)
        assert torch.equal(after[key], expect), name
    section = info["quantization"]
    assert section["format"] == "compressed-tensors pack-quantized"  # what vLLM serves, loaded dense by transformers
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["dequantize"] is True
    assert info["weight_bytes"]["stored"] < info["weight_bytes"]["loaded"]
    untouched = [k for k in before if not any(k == f"{n}.weight" for n in info["per_matrix"])]
    assert all(torch.equal(before[k], after[k]) for k in untouched)  # embeddings, norms, vision tower, lm_head
    generate_once(out, family)


@pytest.mark.parametrize(("family", "method"), [("llama", "wanda+gptq"), ("qwen2-vl", "tamp+gptq")])
def test_gptq_after_pruning_keeps_the_zeros_on_a_4_bit_grid(tiny_model, tmp_path, family: str, method: str) -> None:
    out, info = _run(tiny_model, tmp_path, family, method, 0.5)
    _, pruned_only = _run(tiny_model, tmp_path / "alone", family, method.split("+")[0], 0.5)
    weights = load_weights(out)
    for name, m in info["per_matrix"].items():
        w = weights[f"{name}.weight"]
        assert _levels(w, GROUP) <= 16, name
        # at least what the pruning zeroed; rounding may zero a few more small weights
        assert m["zeros"] >= pruned_only["per_matrix"][name]["zeros"] - w.shape[0], name
    assert info["sparsity"]["sparsity"] >= 0.5 - 0.02
    assert "quantize" in info["code_versions"]["algorithms"] and "engine" in info["code_versions"]
    assert json.loads((out / "pruning.json").read_text())["quantization"]["method"] == "gptq"
    generate_once(out, family)


def test_sparsegpt_and_gptq_prune_and_round_in_one_pass(tiny_model, tmp_path) -> None:
    out, info = _run(tiny_model, tmp_path, "llama", "sparsegpt+gptq", 0.5, quant_sym="false")
    assert info["engine"]["quantized_jointly"] == len(info["per_matrix"])
    # an asymmetric grid is saved dense (transformers' default load of such a checkpoint fails), and says so
    assert info["quantization"]["format"] == "dense"
    assert any("saved dense" in w and "asymmetric" in w for w in info["warnings"])
    weights = load_weights(out)
    for name, m in info["per_matrix"].items():
        assert m["zeros"] >= m["numel"] // 2, name  # SparseGPT's exact count per block, and rounding adds only zeros
        assert _levels(weights[f"{name}.weight"], GROUP) <= 16, name


def test_gptq_alone_needs_calibration_and_gptq_differs_from_rtn(tiny_model, tmp_path) -> None:
    out, info = _run(tiny_model, tmp_path, "llama", "gptq", quant_bits=3)
    assert info["calibration"] is not None and info["quantization"]["grid"] == f"w3g{GROUP}"
    rtn_out, _ = _run(tiny_model, tmp_path / "rtn", "llama", "rtn", quant_bits=3)
    gptq_w, rtn_w = load_weights(out), load_weights(rtn_out)
    changed = [n for n in info["per_matrix"] if not torch.equal(gptq_w[f"{n}.weight"], rtn_w[f"{n}.weight"])]
    assert changed == list(info["per_matrix"])  # the Hessian moved every matrix off plain rounding
    for name in info["per_matrix"]:
        assert _levels(gptq_w[f"{name}.weight"], GROUP) <= 8


@pytest.mark.parametrize(("method", "sparsity", "sets", "says"), [
    ("rtn+gptq", 0.0, [], "at most one weight method, one quantizer"),
    ("tamp", 0.5, ["quant_bits=4"], "add it to --method, e.g. tamp\\+gptq"),
    ("gptq", 0.0, ["quant_bits=9"], "quant_bits must be in 2..8"),
    ("gptq", 0.0, ["quant_group=0"], "quant_group must be a positive"),
    ("gptq", 0.5, [], "keeps every weight; it takes --sparsity 0 .* e.g. tamp\\+gptq"),
    ("rtn", 0.0, ["gptq_act_order=true"], "gptq_act_order is no parameter of rtn"),
])
def test_bad_quantization_requests_are_refused(method: str, sparsity: float, sets: list[str], says: str) -> None:
    with pytest.raises(TampError, match=says):
        build_recipe(method, sparsity, overrides=sets)


def test_names_carry_the_grid_and_read_back_as_the_same_recipe() -> None:
    """Runs are filed as weight+quantizer-grid+token; `--method` takes that name back (the grid in the name is
    the `--quant w4g128` of other tools); a recipe without a quantizer keys as it always did."""
    from harness.tables import method_label

    cases = {("tamp+gptq+fastv", 0.5, ()): "tamp+gptq-w4g128+fastv", ("gptq", 0, ()): "gptq-w4g128",
             ("rtn+fastv", 0, ("quant_bits=8", "quant_group=-1")): "rtn-w8+fastv",
             ("sparsegpt+gptq-w3g64-asym", 0.5, ()): "sparsegpt+gptq-w3g64-asym"}
    for (method, sparsity, sets), name in cases.items():
        recipe = build_recipe(method, sparsity, overrides=list(sets))
        assert recipe.name == name
        assert build_recipe(name, sparsity).key_inputs() == recipe.key_inputs()
    assert method_label("tamp+gptq-w4g128+fastv") == "TAMP + GPTQ w4g128 + FastV"
    assert method_label("rtn-w8") == "RTN w8"
    plain = build_recipe("tamp", 0.5).key_inputs()
    assert "quantization" not in plain and "quantize" not in plain["code"]["algorithms"]
    assert "quantize" not in build_recipe("sparsegpt", 0.5).key_inputs()["code"]["algorithms"]


@pytest.mark.parametrize(("method", "sets", "says"), [
    ("gptq-w4x", [], "'w4x' in 'gptq-w4x' is no grid"),
    ("gptq-w4g128", ["quant_bits=8"], "contradicts the grid 'w4g128'"),
    ("gptq-w9", [], "quant_bits must be in 2..8"),
])
def test_bad_grids_in_the_name_are_refused(method: str, sets: list[str], says: str) -> None:
    with pytest.raises(TampError, match=says):
        build_recipe(method, 0, overrides=sets)
