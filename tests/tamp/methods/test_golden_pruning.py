"""Golden hashes: every method on every tiny family writes the very same weights, and harness runs plan the very
same artifact keys, as when tests/golden/pruning_hashes.json was recorded (SmolLM2's Wanda / SparseGPT weights
are checked in test_smollm2_pruned.py, which prunes them anyway). The method-registry refactor must leave all of
these bit-identical.

They run in `make test` (~5 min of it); the weight hashes are also marked `golden` for `make golden`."""

from __future__ import annotations

from typing import Any

import pytest

from tamp.config import PruneConfig
from tamp.methods.base import WeightMethod
from tamp.methods.registry import builtin_methods
from tamp.models.families import TINY_FAMILIES
from tamp.pipeline import prune
from tests.golden_hashes import artifact_digest, check_golden

# ECoFLaP's zeroth-order estimate runs a forward pass per noise draw: 8 draws keep it to seconds per model.
OVERRIDES: dict[str, dict[str, Any]] = {"ecoflap": {"ecoflap_samples": 8}}
PRUNE_CASES = [(f, m, "unstructured") for f in TINY_FAMILIES for m, meth in builtin_methods().items()
                                                                   if isinstance(meth, WeightMethod)] + \
    [(f, m, "2:4") for f in ("llava-next", "qwen2-vl") for m in ("magnitude", "wanda", "sparsegpt", "tamp")]


def _case_id(family: str, method: str, pattern: str) -> str:
    return f"{family}/{method}/{pattern}"


@pytest.mark.golden
@pytest.mark.parametrize("family,method,pattern", PRUNE_CASES, ids=[_case_id(*c) for c in PRUNE_CASES])
def test_tiny_pruned_weights_match_golden(tiny_model, tmp_path, family, method, pattern):
    cfg = PruneConfig.from_preset(method, sparsity=0.0 if method == "dense" else 0.5, pattern=pattern,
                                  calib="synthetic", nsamples=4, seqlen=32, seed=42, **OVERRIDES.get(method, {}))
    out = tmp_path / "artifact"
    prune(str(tiny_model(family)), cfg, out, device="cpu")
    check_golden("pruned", _case_id(family, method, pattern), artifact_digest(out))


# harness runs: (model, method, sparsity, pattern, extra --set) -> the artifact key they would use
KEY_CASES = [
    ("tiny-llava-next", "tamp", 0.5, "unstructured", []),
    ("tiny-llava-next", "wanda", 0.5, "2:4", []),
    ("tiny-llava-next", "dense", 0.0, "unstructured", []),
    ("tiny-qwen2-vl", "owl", 0.6, "unstructured", ["owl_lambda=0.1"]),
    ("tiny-qwen2.5-omni", "sparsegpt", 0.5, "unstructured", []),
]


@pytest.mark.parametrize("model,method,sparsity,pattern,sets", KEY_CASES,
                         ids=[f"{c[0]}/{c[1]}/{c[2]}/{c[3]}" for c in KEY_CASES])
def test_harness_artifact_keys_match_golden(monkeypatch, tmp_path, model, method, sparsity, pattern, sets):
    """The key hashes tamp's own source on purpose (an edited checkout never reuses stale weights); that part is
    held fixed here so the rest (model, config, calibration fingerprint, dtype) is what must stay identical."""
    import harness.cache
    from harness.run import RunOptions, plan

    monkeypatch.setattr(harness.cache, "tamp_code_fingerprint", lambda: {"version": "fixed", "source_sha256": "0"})
    opts = RunOptions(model=model, sparsity=sparsity, method=method, pattern=pattern, tasks=["tamp_smoke_vqa"],
                      calib="synthetic", nsamples=8, seed=42, overrides=sets, output=tmp_path / "runs",
                      artifacts=tmp_path / "artifacts", device="cpu")
    check_golden("artifact_keys", f"{model}/{method}/{sparsity}/{pattern}/{','.join(sets)}", plan(opts).key)
