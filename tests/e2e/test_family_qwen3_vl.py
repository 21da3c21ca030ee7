"""tiny-qwen3-vl end to end: `harness run` with a weight + token method through lmms-eval on the smoke tasks, lmms-eval's
own CLI on the artifact it made, and the wrapper's stand-in for qwen-vl-utils on a smoke video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict[str, Path]:
    """tiny-qwen3-vl, TAMP 50% + AIM, one document of each smoke task."""
    root = tmp_path_factory.mktemp("qwen3-vl")
    dirs = {"runs": root / "runs", "artifacts": root / "artifacts"}
    assert main(["run", "--model", "tiny-qwen3-vl", "--method", "tamp+aim", "--sparsity", "0.5", "--nsamples", "2",
                 "--limit", "1", "--device", "cpu", "--output", str(dirs["runs"]), "--artifacts",
                 str(dirs["artifacts"]), "--max-empty-fraction", "1"]) == 0
    return dirs


def test_harness_run_evaluates_the_smoke_tasks(run: dict[str, Path]) -> None:
    folder = run["runs"] / "tiny-qwen3-vl" / "tamp+aim_s0.50_unstructured"
    vqa = json.loads((folder / "tamp_smoke_vqa_limit1.json").read_text())
    assert "exact_match,none" in vqa["metrics"] and vqa["model"]["wrapper"] == "tamp_qwen3_vl"
    assert vqa["pruning"]["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert vqa["pruning"]["transform"]["method"] == "aim"
    mc = json.loads((folder / "tamp_smoke_mc_limit1.json").read_text())
    assert "acc,none" in mc["metrics"]


def test_lmms_eval_cli_evaluates_the_artifact(run: dict[str, Path], tmp_path: Path) -> None:
    artifact = next(p for p in run["artifacts"].iterdir() if (p / "pruning.json").is_file())
    out = tmp_path / "lmms-out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_qwen3_vl", "--model_args", f"pretrained={artifact}",
           "--tasks", "tamp_smoke_vqa,tamp_smoke_mc", "--include_path", str(ROOT / "tasks"), "--batch_size", "1",
           "--limit", "1", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    results = list(out.glob("*/*_results.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results[0].read_text())
    assert data["config"]["model"] == "tamp_qwen3_vl"
    assert "harness.wrappers.qwen3_vl" in data["config"]["model_backend"]
    assert "exact_match,none" in data["results"]["tamp_smoke_vqa"] and "acc,none" in data["results"]["tamp_smoke_mc"]


def test_vision_info_stand_in_samples_and_resizes_a_video() -> None:
    from harness.wrappers.qwen3_vl import vision_info_without_qwen_vl_utils

    video = ROOT / "tasks" / "tamp_smoke_av" / "data" / "video" / "square_red_left.mp4"
    messages = [{"role": "user", "content": [
        {"type": "video", "video": str(video), "nframes": 6, "min_pixels": 32 * 32, "max_pixels": 64 * 96},
        {"type": "text", "text": "Where does it go?"}]}]
    images, videos, kwargs = vision_info_without_qwen_vl_utils(messages, return_video_kwargs=True,
                                                               image_patch_size=16, return_video_metadata=True)
    assert images is None and kwargs == {"do_sample_frames": False}
    (frames, metadata), = videos
    assert frames.shape[0] == 6 and frames.shape[1] == 3
    assert frames.shape[2] % 32 == 0 and frames.shape[3] % 32 == 0 and frames.shape[2] * frames.shape[3] <= 64 * 96
    assert metadata["fps"] > 0 and len(metadata["frames_indices"]) == 6
    assert metadata["frames_indices"] == sorted(metadata["frames_indices"])
