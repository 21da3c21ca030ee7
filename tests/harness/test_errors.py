"""Bad input: one `error: ...` line on stderr and exit code 2, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model", "--sparsity", "0.5"], "unknown model 'no-such-model'"),
    (["--model", "tiny-llava-next", "--sparsity", "0.5", "--method", "nope"], "unknown method 'nope'"),
    (["--model", "tiny-llava-next", "--sparsity", "1.0"], "--sparsity must be in [0, 1), got 1.0"),
    (["--model", "tiny-llava-next", "--sparsity", "-0.1"], "--sparsity must be in [0, 1), got -0.1"),
    (["--model", "tiny-llava-next"], "--sparsity is required"),
    (["--model", "tiny-llava-next", "--method", "dense", "--sparsity", "0.5"], "--method dense keeps every weight"),
    (["--model", "tiny-llava-next", "--sparsity", "0.6", "--pattern", "2:4"], "pattern 2:4 fixes the sparsity"),
    (["--model", "tiny-llava-next", "--sparsity", "0.5", "--calib", "/no/such/calib.json"],
     "calibration file not found: /no/such/calib.json"),
    (["--model", "tiny-llava-next", "--sparsity", "0.5", "--calib", "text:/no/such.txt"],
     "calibration text file not found: /no/such.txt"),
    (["--model", "llava-next", "--sparsity", "0.5", "--calib", "/no/sharegpt4v.json"],
     "calibration file not found"),
    (["--model", "tiny-llava-next", "--sparsity", "0.5", "--limit", "0"], "--limit must be at least 1"),
    (["--model", "tiny-llava-next", "--sparsity", "0.5", "--tasks", "tamp_smoke_vqa,not_a_task"],
     "unknown task not_a_task; `harness tasks` lists ours"),
    (["--model", "llava-next", "--method", "magnitude", "--sparsity", "0.5", "--tasks", "textvqa_val"],
     "task 'textvqa_val' needs the dataset 'lmms-lab-encoder/textvqa', which is not in the local Hugging Face cache"
     " and offline mode is set; fetch it first with `hf download --repo-type dataset lmms-lab-encoder/textvqa`"),
    (["--model", "llava-next", "--method", "magnitude", "--sparsity", "0.5", "--tasks", "mvbench"],
     "task 'mvbench_"),  # a group: each subtask's dataset is checked
])
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    code = main(["run", *args, "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "art")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "art").exists()  # nothing was pruned


def test_models_and_tasks_listings(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("llava-next", "llava-1.5", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen2-audio",
                 "tiny-llava-next", "llava-hf/llama3-llava-next-8b-hf", "tamp_llava_hf", "clotho_aqa_test"):
        assert name in out
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "tamp_smoke_vqa" in out and "tamp_smoke_mc" in out
