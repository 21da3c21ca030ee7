"""Batched evaluation without a model: --batch-size is checked, the automatic choice, the batch reaches lmms-eval, the
throughput is recorded and `harness table --cost throughput` shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.evaluate import (
    CPU_BATCH,
    MAX_BATCH,
    accelerate_command,
    batch_cost,
    default_batch_size,
    weight_bytes,
)
from harness.run import throughput
from tests.harness.test_cost_columns import cost, put, record, table

LLAMA3_8B = {"text_config": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                             "num_key_value_heads": 8}}


def test_a_batch_size_below_one_is_refused(tmp_path: Path) -> None:
    from harness.run import RunOptions, plan_run

    with pytest.raises(HarnessError, match="--batch-size must be at least 1, got 0"):
        plan_run(RunOptions(model="tiny-llava-next", sparsity=0.5, batch_size=0, output=tmp_path))


def test_the_automatic_batch_size() -> None:
    assert default_batch_size(LLAMA3_8B, "cpu") == CPU_BATCH
    # 8B with GQA: 2 x (2 x 32 layers x 1024 x 4096 tokens x 2 bytes) = 1 GiB per sample; half of 40 GiB free -> 20
    assert default_batch_size(LLAMA3_8B, "cuda:0", free_bytes=40 * 2**30) == 20
    assert default_batch_size(LLAMA3_8B, "cuda:0", free_bytes=200 * 2**30) == MAX_BATCH
    assert default_batch_size(LLAMA3_8B, "cuda", free_bytes=2**20) == 1


def test_the_weights_come_out_of_the_free_memory(tmp_path: Path) -> None:
    # chosen before loading: 56 GiB free less 16 GiB of bf16 weights leaves 40 GiB -> 20 (as above); a device the
    # weights fill answers 1
    assert default_batch_size(LLAMA3_8B, "cuda:0", free_bytes=56 * 2**30, weight_bytes=16 * 2**30) == 20
    assert default_batch_size(LLAMA3_8B, "cuda:0", free_bytes=8 * 2**30, weight_bytes=16 * 2**30) == 1
    assert default_batch_size(LLAMA3_8B, "cpu", free_bytes=0, weight_bytes=16 * 2**30) == CPU_BATCH
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"0" * 300)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"0" * 200)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 500


def test_the_automatic_choice_asks_the_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    import torch

    import harness.run as run_module

    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1024)
    asked: list[torch.device] = []

    def free(device: torch.device) -> tuple[int, int]:  # a fake 80 GB card with 24 GiB + the weights free
        asked.append(device)
        return 24 * 2**30 + 1024, 80 * 2**30

    monkeypatch.setattr("tamp.devices.choose_device", lambda name, per_process=False: "cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", free)
    assert run_module._auto_batch(tmp_path, "cuda") == 12  # half of 24 GiB at 1 GiB a sample
    assert asked == [torch.device("cuda:0")]


def test_the_batch_reaches_lmms_eval() -> None:
    cmd = accelerate_command(2, "tamp_llava_hf", "pretrained=/a", "mme", None, Path("/o"), batch_size=16)
    assert cmd[cmd.index("--batch_size") + 1] == "16"


def test_throughput_counts_every_question() -> None:
    got = throughput({"a": [{}] * 30, "b": [{}] * 10}, 20.0, 8)
    assert got == {"questions": 40, "eval_s": 20.0, "batch_size": 8, "questions_per_s": 2.0}


def test_cost_per_batch() -> None:
    """Two generate calls of 8 and 4 questions: per-call prefill (median) and decode time, the mean batch size."""
    prefills = [{"seconds": 0.5, "batch": 8, "batch_seconds": 4.0, "dense": 1e9, "nonzero": 1e9, "tokens": 10,
                 "visual_in": 4.0, "visual_kept": 4, "tokens_per_layer": [10.0], "visual_per_layer": [4.0]},
                {"seconds": 0.5, "batch": 4, "batch_seconds": 2.0, "dense": 1e9, "nonzero": 1e9, "tokens": 10,
                 "visual_in": 4.0, "visual_kept": 4, "tokens_per_layer": [10.0], "visual_per_layer": [4.0]}]
    got = batch_cost([{"prefills": prefills, "decode_steps": 24, "decode_s": 6.0, "peak_memory_mb": 1.0,
                       "peak_memory_how": None, "device": "cpu", "layers": 1}])
    assert (got["batch_size"], got["prefill_s_per_batch"], got["decode_s_per_batch"]) == (6.0, 3.0, 3.0)


def test_the_throughput_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    for task, speed in (("textvqa_val", 3.0), ("pope", 5.0)):
        put(runs, record("dense", 0.0, task, 0.5, {**cost(0.0001, 0.01, 250.0, 900.0), "questions_per_s": speed,
                                                   "batch_size": 8.0}))
    headers, rows, out = table(runs, capsys, "--cost", "throughput")
    assert headers[-1] == "Questions/s" and rows["Dense"][-1] == "4.00"
    assert "at batch size 8.00" in out
    headers, _, _ = table(runs, capsys, "--cost")
    assert "Questions/s" not in headers  # shown when named: it depends on the batch size a run chose
