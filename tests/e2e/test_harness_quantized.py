"""`harness run` of a pruned, quantized and token-reduced tiny LLaVA-NeXT through lmms-eval, and its table row."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.cli import main
from tests.helpers import load_weights


def test_tamp_gptq_fastv_runs_end_to_end(tiny_root: Path, tmp_path: Path, capsys) -> None:
    runs, artifacts = tmp_path / "runs", tmp_path / "artifacts"
    method = "tamp+gptq-w4g32+fastv"
    assert main(["run", "--model", "tiny-llava-next", "--method", method, "--sparsity", "0.5", "--tasks",
                 "tamp_smoke_vqa", "--nsamples", "4", "--limit", "2", "--device", "cpu", "--output", str(runs),
                 "--artifacts", str(artifacts)]) == 0
    record = json.loads((runs / "tiny-llava-next" / f"{method}_s0.50_unstructured" /
                         "tamp_smoke_vqa_limit2.json").read_text())
    assert record["method"] == method
    pruning = record["pruning"]
    assert pruning["quantization"]["grid"] == "w4g32" and pruning["transform"]["method"] == "fastv"
    artifact = Path(record["artifact"]["path"])
    weights = load_weights(artifact)
    for name in pruning["per_matrix"]:
        w = weights[f"{name}.weight"]
        groups = w.reshape(w.shape[0], -1, 32)
        assert max(len(torch.unique(g)) for row in groups for g in row) <= 16, name
    capsys.readouterr()
    assert main(["table", "--runs", str(runs), "--model", "tiny-llava-next"]) == 0
    assert "TAMP + GPTQ w4g32 + FastV" in capsys.readouterr().out
