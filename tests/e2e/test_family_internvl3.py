"""tiny-internvl3 end to end: `harness run` with a weight and a token method through lmms-eval on the smoke tasks,
then lmms-eval's own CLI evaluating the artifact through `tamp_internvl3` (the entry point), the pool re-applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-internvl3"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Path:
    root = tmp_path_factory.mktemp("internvl3")
    assert main(["run", "--model", MODEL, "--method", "wanda+pool", "--sparsity", "0.5", "--tasks",
                 "tamp_smoke_vqa,tamp_smoke_mc", "--nsamples", "4", "--limit", "2", "--device", "cpu",
                 "--output", str(root / "runs"), "--artifacts", str(root / "art"), "--max-empty-fraction", "1"]) == 0
    return root


def test_harness_run_prunes_pools_and_evaluates(run: Path) -> None:
    folder = run / "runs" / MODEL / "wanda+pool_s0.50_unstructured"
    vqa = json.loads((folder / "tamp_smoke_vqa_limit2.json").read_text())
    mc = json.loads((folder / "tamp_smoke_mc_limit2.json").read_text())
    assert "exact_match,none" in vqa["metrics"] and "acc,none" in mc["metrics"]
    assert vqa["transform"]["method"] == "pool" and vqa["pruning"]["sparsity"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    cost = vqa["cost"]
    # 64 x 64 or smaller smoke images: each tile's 4 x 4 grid pooled 2 x 2 to 2 x 2, a quarter of the tokens
    assert cost["visual_tokens_in"] == 4 * cost["visual_tokens_kept"] > 0


def test_lmms_eval_cli_evaluates_the_artifact(run: Path, tmp_path: Path) -> None:
    artifact = next(p for p in (run / "art").iterdir() if (p / "pruning.json").is_file())
    out = tmp_path / "lmms-out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_internvl3", "--model_args",
           f"pretrained={artifact},device=cpu,max_empty_fraction=1", "--tasks", "tamp_smoke_vqa,tamp_smoke_mc",
           "--include_path", str(ROOT / "tasks"), "--batch_size", "1", "--limit", "1", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    results = list(out.glob("*/*_results.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results[0].read_text())
    assert data["config"]["model"] == "tamp_internvl3"
    assert "harness.wrappers.internvl3" in data["config"]["model_backend"]
    assert "exact_match,none" in data["results"]["tamp_smoke_vqa"] and "acc,none" in data["results"]["tamp_smoke_mc"]
    assert "token method pool" in proc.stderr + proc.stdout  # the artifact's transform re-applied at load
