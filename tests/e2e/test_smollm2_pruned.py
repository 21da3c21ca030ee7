"""The literature's ordering on real weights: SmolLM2-135M at 50%, text calibration, perplexity.

dense < {wanda, sparsegpt} << magnitude (reference figures in shared/docs/real-weights.md:
26.02, 53.89, 39.99, 416.4). Prints the measured perplexities.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tamp.config import PruneConfig
from tamp.engine.sequential import prune_model
from tamp.eval.perplexity import perplexity
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model
from tamp.pipeline import prune
from tamp.recipe import code_versions, recipe_for, resolve_parts, weight_config
from tests.golden_weights import artifact_tensors, check_pruned

pytestmark = pytest.mark.slow

LICENSES = Path("/usr/share/common-licenses")
CALIB = "text:" + ",".join(str(LICENSES / n) for n in ("GPL-2", "LGPL-2.1", "MPL-2.0", "Apache-2.0"))
EVAL_FILES = [LICENSES / "GPL-3", LICENSES / "GFDL-1.3"]


def _cfg(method: str, pattern: str = "unstructured") -> PruneConfig:
    return weight_config(method, sparsity=0.5, pattern=pattern, calib=CALIB, nsamples=32, seqlen=256,
                                   seed=0)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, float]:
    """Perplexity per method; wanda goes through the whole CLI pipeline and a from_pretrained reload."""
    from transformers import AutoModelForCausalLM

    from tamp.calibration.loader import build_calibration

    loaded = load_model("smollm2")
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ppl = {"dense": perplexity(loaded.model, loaded.tokenizer, EVAL_FILES)}
    pruned: dict[str, dict[str, torch.Tensor]] = {}
    calib = build_calibration(CALIB, loaded, 32, 256, 0)
    adapter = get_adapter(loaded.model)
    for method in ("magnitude", "sparsegpt"):
        loaded.model.load_state_dict(dense_state)
        cfg = _cfg(method)
        prune_model(loaded.model, adapter, calib.batches, cfg, resolve_parts(cfg), "cpu")
        ppl[method] = perplexity(loaded.model, loaded.tokenizer, EVAL_FILES)
        pruned[method] = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    out = tmp_path_factory.mktemp("smollm2") / "wanda"
    info = prune("smollm2", recipe_for(_cfg("wanda")), out, device="cpu")
    assert info["calibration"]["fingerprint"] == calib.fingerprint
    pruned["wanda"] = artifact_tensors(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl["wanda"] = perplexity(reloaded, loaded.tokenizer, EVAL_FILES)
    ppl["wanda_pruning_seconds"] = sum(v for k, v in info["timings"].items() if k in ("capture", "statistics", "masks", "rerun"))
    print("SmolLM2-135M perplexities at 50%:", {k: round(v, 2) for k, v in ppl.items()})
    return {**ppl, "pruned": pruned, "dense_state": dense_state}


# Sequential pruning of 30 layers cascades a near-tie flip into later layers (tests/golden_weights.py), measured
# across AVX-512 and AVX2 kernels as the largest share of a matrix's sampled mask bits that differ: Wanda 0.98%,
# SparseGPT 5.5%. Magnitude pruning reads no activation: the near-tie rule holds for it.
FLIP_SHARE = {"magnitude": None, "wanda": 0.03, "sparsegpt": 0.10}


@pytest.mark.golden
@pytest.mark.parametrize("method", ("magnitude", "sparsegpt", "wanda"))
def test_pruned_weights_match_golden(results, method):
    """The recorded masks and values (tests/golden_weights.py), within what rounding can move on any CPU."""
    where = "artifact" if method == "wanda" else "in-memory"
    check_pruned(f"smollm2/{method}/unstructured/{where}", results["pruned"][method], results["dense_state"],
                 flip_share=FLIP_SHARE[method], versions=code_versions(recipe_for(_cfg(method))))


def test_dense_matches_reference(results):
    assert results["dense"] == pytest.approx(26.02, rel=0.01)


def test_all_pruned_worse_than_dense(results):
    for method in ("magnitude", "wanda", "sparsegpt"):
        assert results[method] > results["dense"] * 1.05, method


def test_wanda_and_sparsegpt_far_below_magnitude(results):
    assert results["wanda"] < results["magnitude"] / 3
    assert results["sparsegpt"] < results["magnitude"] / 3
    assert results["sparsegpt"] < results["wanda"]  # also what the reference figures show (39.99 vs 53.89)


def test_close_to_the_independent_reference_figures(results):
    """Same procedure as real-weights.md: our numbers should land near the published re-implementations."""
    assert results["wanda"] == pytest.approx(53.89, rel=0.10)
    assert results["sparsegpt"] == pytest.approx(39.99, rel=0.10)
    assert results["magnitude"] == pytest.approx(416.4, rel=0.10)
