"""The tamp command as a user runs it: build-tiny, prune, inspect, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tamp.cli import main


def test_build_prune_inspect_through_the_console_script(tmp_path):
    exe = [sys.executable, "-m", "tamp.cli"]
    model = tmp_path / "tiny"
    run = lambda *a: subprocess.run([*exe, *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("build-tiny", "--family", "llava-next", "--out", str(model))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "pruned"
    r = run("prune", "--model", str(model), "--method", "sparsegpt", "--sparsity", "0.5", "--calib", "synthetic",
            "--nsamples", "2", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "target:   50.00%   achieved over pruned matrices: 50.00%" in r.stdout
    r = run("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert re.search(r"\| model.language_model.layers.0.self_attn.q_proj +\| 64x64 +\| 50.00% +\| 50.00% +\|", r.stdout)
    assert json.loads((out / "pruning.json").read_text())["config"]["scoring"] == "sparsegpt"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--pattern", "3:2"], "N:M"),
        (["--pattern", "2:4", "--sparsity", "0.6"], "fixes the sparsity at 0.5"),
        (["--calib", "missing.json"], "calibration file not found"),
        (["--calib", "text:/nonexistent/file.txt"], "/nonexistent/file.txt"),
        (["--calib", "mystery"], "unknown --calib"),
        (["--nsamples", "0"], "--nsamples must be at least 1"),
        (["--device", "tpu"], "unknown --device"),
    ],
)
def test_bad_prune_input_gives_one_line_error(tiny_model, tmp_path, capsys, args, message):
    base = ["prune", "--model", str(tiny_model("llama")), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_unknown_model_and_family(tmp_path, capsys):
    assert main(["prune", "--model", "no-such-model", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["build-tiny", "--family", "gpt5", "--out", str(tmp_path / "t")]) == 2
    assert "gpt5" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["prune", "--model", str(tiny_model("llama")), "--method", "magnitude", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_model("llama")), "--method", "magnitude", "--out", str(out),
                 "--overwrite"]) == 0
    assert (out / "pruning.json").exists() and not (out / "something").exists()


def test_inspect_non_artifact(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no pruning.json" in capsys.readouterr().err


def test_registry_tiny_name_builds_on_demand(tiny_root, tmp_path):
    assert main(["prune", "--model", "tiny-llama", "--method", "wanda", "--nsamples", "2", "--seqlen", "16",
                 "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert (tiny_root / "tiny" / "llama-seed0" / "config.json").exists()
