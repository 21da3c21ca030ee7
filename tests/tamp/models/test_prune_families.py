"""Every method x pattern on a tiny model of every family: exact sparsity, untouched modules, generation."""

from __future__ import annotations

import json

import pytest
import torch

from tamp.pipeline import prune
from tamp.recipe import recipe_for, weight_config
from tests.helpers import generate_once, load_weights

FAMILIES = ("llama", "qwen2", "llava", "llava-next", "qwen2-vl", "qwen2.5-vl",
            "qwen3-vl", "internvl3", "gemma3", "smolvlm")
METHODS = ("magnitude", "wanda", "sparsegpt")


def _prune(tiny_model, tmp_path, family, method, pattern="unstructured", sparsity=0.5, **kw):
    cfg = weight_config(method, sparsity=sparsity, pattern=pattern, calib="synthetic", nsamples=4,
                                  seqlen=32, seed=kw.pop("seed", 42), **kw)
    out = tmp_path / f"{family}-{method}-{pattern.replace(':', 'of')}"
    info = prune(str(tiny_model(family)), recipe_for(cfg), out, device="cpu")
    return out, info


def _check_exact(name: str, w: torch.Tensor, method: str, pattern: str, s: float) -> None:
    zeros = w == 0
    if pattern != "unstructured":
        n, m = map(int, pattern.split(":"))
        groups = zeros.reshape(w.shape[0], -1, m).sum(-1)
        assert bool((groups == n).all()), f"{name}: not {pattern}"
    elif method == "magnitude":
        assert int(zeros.sum()) == int(w.numel() * s), name
    elif method == "wanda":
        assert bool((zeros.sum(1) == int(w.shape[1] * s)).all()), f"{name}: row counts"
    else:  # sparsegpt: exact per 128-column block over the whole block
        blocks = [zeros[:, i:i + 128] for i in range(0, w.shape[1], 128)]
        assert sum(int(b.sum()) for b in blocks) == sum(int(b.numel() * s) for b in blocks), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ("unstructured", "2:4"))
def test_method_on_family(tiny_model, tmp_path, family, method, pattern):
    out, info = _prune(tiny_model, tmp_path, family, method, pattern)
    before, after = load_weights(tiny_model(family)), load_weights(out)
    pruned = set(info["per_matrix"])
    assert len(pruned) == 4 * 7  # 4 decoder blocks x q, k, v, o, gate, up, down
    assert set(before) == set(after)
    for key, tensor in after.items():
        module = key.removesuffix(".weight")
        if module in pruned:
            _check_exact(key, tensor, method, pattern, 0.5)
        else:
            assert torch.equal(tensor, before[key]), f"{key} changed but is not a pruned matrix"
    assert info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    on_disk = json.loads((out / "pruning.json").read_text())
    assert on_disk["config"]["method"] == method and on_disk["config"]["pattern"] == pattern
    assert on_disk["sparsity"]["zeros"] == sum(int((after[k + ".weight"] == 0).sum()) for k in pruned)
    for key in ("git_commit", "versions", "timings", "peak_memory", "calibration", "created"):
        assert key in on_disk
    if method != "magnitude":
        assert len(on_disk["calibration"]["fingerprint"]) == 64
    generate_once(out, family)


def test_same_seed_same_masks_and_other_seed_differs(tiny_model, tmp_path):
    a, _ = _prune(tiny_model, tmp_path / "a", "llava-next", "wanda")
    b, _ = _prune(tiny_model, tmp_path / "b", "llava-next", "wanda")
    c, _ = _prune(tiny_model, tmp_path / "c", "llava-next", "wanda", seed=7)
    wa, wb, wc = load_weights(a), load_weights(b), load_weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k] == 0, wc[k] == 0) for k in wa)


def test_dense_sparsity_zero_writes_the_same_model(tiny_model, tmp_path):
    out, info = _prune(tiny_model, tmp_path, "llava", "wanda", sparsity=0.0)
    before, after = load_weights(tiny_model("llava")), load_weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert info["sparsity"]["zeros"] == 0
    generate_once(out, "llava")


@pytest.mark.parametrize("family", ("llava", "qwen2-vl", "smolvlm"))
def test_prune_vision_option(tiny_model, tmp_path, family):
    out, info = _prune(tiny_model, tmp_path, family, "wanda", prune_vision=True)
    vision = [k for k in info["per_matrix"] if "vision" in k or "visual" in k]
    assert vision, "vision tower linears were not pruned"
    assert all(info["per_matrix"][k]["sparsity"] == pytest.approx(0.5, abs=0.02) for k in vision)
    generate_once(out, family)
