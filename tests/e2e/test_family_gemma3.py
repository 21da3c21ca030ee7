"""Gemma 3 end to end: `harness run` on tiny-gemma3 through lmms-eval with a weight and a token method (the token
method re-applied by the tamp_gemma3 wrapper at load), and lmms-eval's own CLI evaluating the artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "tamp_smoke_vqa,tamp_smoke_mc"


def test_harness_run_then_lmms_eval_cli(tmp_path: Path, tiny_root: Path) -> None:
    runs, art = tmp_path / "runs", tmp_path / "artifacts"
    assert main(["run", "--model", "tiny-gemma3", "--method", "wanda+fastv", "--sparsity", "0.5", "--tasks", SMOKE,
                 "--nsamples", "2", "--limit", "2", "--output", str(runs), "--artifacts", str(art), "--device", "cpu",
                 "--max-empty-fraction", "1"]) == 0
    run = next((runs / "tiny-gemma3").iterdir())
    vqa = json.loads((run / "tamp_smoke_vqa_limit2.json").read_text())
    assert vqa["empty_answers"]["total"] == 2
    assert "acc,none" in json.loads((run / "tamp_smoke_mc_limit2.json").read_text())["metrics"]
    artifact = next(p for p in art.iterdir() if (p / "pruning.json").is_file())
    assert json.loads((artifact / "pruning.json").read_text())["transform"]["method"] == "fastv"

    out = tmp_path / "lmms-out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_gemma3", "--model_args", f"pretrained={artifact}",
           "--tasks", SMOKE, "--include_path", str(ROOT / "tasks"), "--batch_size", "1", "--limit", "2",
           "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    results = list(out.glob("*/*_results.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results[0].read_text())
    assert "harness.wrappers.gemma3" in data["config"]["model_backend"]
    assert "exact_match,none" in data["results"]["tamp_smoke_vqa"]
    assert "acc,none" in data["results"]["tamp_smoke_mc"]
    assert "token method fastv" in proc.stderr + proc.stdout  # the artifact's token method was re-applied
