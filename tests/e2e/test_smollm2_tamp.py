"""TAMP and the allocation baselines on the real SmolLM2-135M, text-only (DAS and AMIA on text tokens alone)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tamp.engine.sequential import prune_model
from tamp.eval.perplexity import perplexity
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model
from tamp.recipe import resolve_parts, weight_config

pytestmark = pytest.mark.slow

LICENSES = Path("/usr/share/common-licenses")
CALIB = "text:" + ",".join(str(LICENSES / n) for n in ("GPL-2", "LGPL-2.1", "MPL-2.0", "Apache-2.0"))
EVAL_FILES = [LICENSES / "GPL-3"]
# ECoFLaP needs two loss evaluations per matrix and batch (420 block-suffix + LM-head passes on SmolLM2,
# minutes on 2 cores); it is covered on every tiny family, including suffix-loss == whole-model-loss.
METHODS = ("owl", "das", "amia", "tamp")


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    from tamp.calibration.loader import build_calibration

    loaded = load_model("smollm2")
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    adapter = get_adapter(loaded.model)
    calib = build_calibration(CALIB, loaded, 8, 128, 0)
    out = {"dense": {"ppl": perplexity(loaded.model, loaded.tokenizer, EVAL_FILES)}}
    for method in ("magnitude", *METHODS):
        loaded.model.load_state_dict(dense_state)
        cfg = weight_config(method, sparsity=0.5, calib=CALIB, nsamples=8, seqlen=128, seed=0)
        engine = prune_model(loaded.model, adapter, calib.batches, cfg, resolve_parts(cfg), "cpu")
        out[method] = {"ppl": perplexity(loaded.model, loaded.tokenizer, EVAL_FILES), "engine": engine,
                       "seconds": sum(engine.timings.values())}
    print("SmolLM2-135M, 50%, 8 x 128 calibration tokens, ppl on GPL-3:",
          {k: round(v["ppl"], 2) for k, v in out.items()})
    return out


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_text_only_and_is_sane(results, method):
    ppl = results[method]["ppl"]
    assert math.isfinite(ppl)
    assert results["dense"]["ppl"] < ppl < results["magnitude"]["ppl"] / 2


def test_amia_selected_a_subset_of_text_tokens(results):
    details = results["amia"]["engine"].details
    assert 0 < details["selected_tokens"] < details["candidate_tokens"]
    assert results["amia"]["engine"].token_counts == {"text": 8 * 128}
