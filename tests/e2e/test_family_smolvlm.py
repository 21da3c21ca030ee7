"""SmolVLM end to end: `harness run` on tiny-smolvlm through lmms-eval with a weight + token method (Wanda + pool: each
tile pooled on its own), then lmms-eval's own CLI evaluating that artifact through `tamp_smolvlm`."""

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
    art = tmp_path / "artifacts"
    assert main(["run", "--model", "tiny-smolvlm", "--method", "wanda+pool", "--sparsity", "0.5", "--tasks", SMOKE,
                 "--limit", "2", "--nsamples", "4", "--output", str(tmp_path / "runs"), "--artifacts", str(art),
                 "--device", "cpu", "--max-empty-fraction", "1"]) == 0
    run = tmp_path / "runs" / "tiny-smolvlm" / "wanda+pool_s0.50_unstructured"
    vqa = json.loads((run / "tamp_smoke_vqa_limit2.json").read_text())
    assert "exact_match,none" in vqa["metrics"]
    assert "acc,none" in json.loads((run / "tamp_smoke_mc_limit2.json").read_text())["metrics"]
    cost = vqa["cost"]
    # the smoke images are split into 2 x 2 tiles + the global image, 16 tokens each; pool keeps 2 x 2 of each 4 x 4
    assert cost["visual_tokens_in"] == 80 and cost["visual_tokens_kept"] == 20

    artifact = next(p for p in art.iterdir() if (p / "pruning.json").is_file())
    out = tmp_path / "lmms-out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_smolvlm", "--model_args", f"pretrained={artifact}",
           "--tasks", SMOKE, "--include_path", str(ROOT / "tasks"), "--batch_size", "1", "--limit", "2",
           "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    results = list(out.glob("*/*_results.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results[0].read_text())
    assert data["config"]["model"] == "tamp_smolvlm"
    assert "harness.wrappers.smolvlm" in data["config"]["model_backend"]
    assert "exact_match,none" in data["results"]["tamp_smoke_vqa"]
    assert "acc,none" in data["results"]["tamp_smoke_mc"]
