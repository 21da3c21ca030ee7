"""An artifact written by tamp before the recipe (2026-12-07: every method's parameters flat in pruning.json's
config) still loads, inspects and evaluates: tests/fixtures/artifact-format-2026-12 is tiny LLaVA-NeXT pruned by
`tamp prune --model tiny-llava-next --method wanda+fastv --sparsity 0.5 --calib synthetic --nsamples 2 --seqlen 64`
on main at commit 35258d5."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.evaluate import evaluate_in_process, load_wrapper
from harness.tasks_catalog import task_manager
from tamp.artifacts import PER_MATRIX, read_pruning_json
from tamp.config import PruneConfig
from tamp.inspect_report import inspect_artifact

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artifact-format-2026-12"


def test_an_artifact_of_the_flat_config_format_loads_and_evaluates(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(FIXTURE, artifact)
    info = read_pruning_json(artifact, PER_MATRIX)
    assert "params" not in info["config"] and info["config"]["das_mode"] == "released"  # the old, flat layout
    cfg = PruneConfig.from_dict(info["config"])
    assert (cfg.method, cfg.sparsity, cfg.nsamples, cfg.params) == ("wanda", 0.5, 2, {})
    report = inspect_artifact(artifact, per_matrix=False)  # the old transform section fits today's schema
    assert "method:   wanda+fastv (allocation=uniform" in report and "\ntransform: fastv (fastv_k=2" in report
    lm = load_wrapper("tamp_llava_hf", f"pretrained={artifact}", "cpu")
    lm.take_cost()
    result = evaluate_in_process(lm, "tamp_smoke_vqa", 2, task_manager("tamp_llava_hf"))
    assert "exact_match,none" in result["results"]["tamp_smoke_vqa"]
    cost = lm.take_cost()
    tokens = cost["tokens_per_layer"]
    assert tokens[2] < tokens[1]  # FastV (K=2), re-applied from the old transform section, dropped tokens
