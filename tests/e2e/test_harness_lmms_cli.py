"""lmms-eval's own CLI finds our wrapper through the entry point and evaluates an artifact on our smoke task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_lmms_eval_with_tamp_wrapper(tmp_path: Path, tiny_root: Path) -> None:
    art = tmp_path / "artifacts"
    assert main(["run", "--model", "tiny-llava-next", "--method", "magnitude", "--sparsity", "0.5", "--tasks",
                 "tamp_smoke_vqa", "--limit", "1", "--output", str(tmp_path / "runs"), "--artifacts", str(art),
                 "--device", "cpu", "--max-empty-fraction", "1"]) == 0
    artifact = next(p for p in art.iterdir() if (p / "pruning.json").is_file())
    out = tmp_path / "lmms-out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_llava_hf", "--model_args", f"pretrained={artifact}",
           "--tasks", "tamp_smoke_vqa,tamp_smoke_mc", "--include_path", str(ROOT / "tasks"), "--batch_size", "1",
           "--limit", "2", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    results = list(out.glob("*/*_results.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results[0].read_text())
    assert data["config"]["model"] == "tamp_llava_hf"
    assert "harness.wrappers.llava_hf" in data["config"]["model_backend"]
    assert "exact_match,none" in data["results"]["tamp_smoke_vqa"]
    assert "acc,none" in data["results"]["tamp_smoke_mc"]  # multiple choice: the loglikelihood tuple fix works
    assert len(list(out.glob("*/*_samples_tamp_smoke_vqa.jsonl"))) == 1
