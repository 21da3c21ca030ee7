"""The bad-input endings that need a process of their own: lmms-eval's CLI exit code on a refused artifact, Ctrl-C
(a real SIGINT) and a reader that closes the pipe (`| head`). The in-process rows are in tests/e2e/test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tamp.cli
from tests.helpers import STOPPABLE_COMMANDS, STOPPABLE_IDS, tamper_zeros

ROOT = Path(__file__).resolve().parents[2]


def _env(tiny_root: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TAMP_CACHE": str(tiny_root),
            "TQDM_DISABLE": "1"}


def _one_error_line(stderr: str) -> str:
    """The error line, checked to be the only one and the last, with no traceback before it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr[-3000:]
    return lines[-1]


def test_lmms_eval_cli_exits_non_zero_on_a_tampered_artifact(tiny_model, tiny_root: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    assert tamp.cli.main(["prune", "--model", str(tiny_model("llava-next")), "--method", "magnitude", "--out",
                          str(artifact), "--device", "cpu"]) == 0
    tamper_zeros(artifact)
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_llava_hf", "--model_args", f"pretrained={artifact}",
           "--tasks", "tamp_smoke_vqa", "--include_path", str(ROOT / "tasks"), "--batch_size", "1", "--limit", "1",
           "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tiny_root), timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = _one_error_line(proc.stderr)
    assert "do not carry the sparsity pruning.json records" in line and "verify_sparsity=false" in line
    assert not list((tmp_path / "out").glob("*/*_results.json"))


def _interrupt_once_torch_is_loaded(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Start `cmd`, send SIGINT once it has mapped torch (it is inside the command by then), wait for it.

    The command starts with SIGINT at its default, as from a terminal. A suite launched in the background by a
    non-interactive shell (`make test &`) inherits SIGINT ignored, and so would the command: Python then installs
    no KeyboardInterrupt handler and every SIGINT is lost (the command ran to the end, exit 0)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the command finished before it could be interrupted"
    # A SIGINT that lands while a C extension is still importing can be lost (seen on a loaded machine: the
    # command ran to the end), so send it again every few seconds until the process ends.
    for _ in range(40):
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=3)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("command, left", STOPPABLE_COMMANDS, ids=STOPPABLE_IDS)
def test_ctrl_c_is_one_line_and_exit_130(command: list[str], left: str, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, *[arg.replace("OUT", str(out)) for arg in command]]
    proc = _interrupt_once_torch_is_loaded(cmd, _env(tiny_root), tmp_path)
    assert proc.returncode == 130, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert line.startswith("error: interrupted (Ctrl-C); ") and left in line
    assert not out.exists() or not any(p.name == "pruning.json" for p in out.rglob("*"))


@pytest.mark.parametrize("command", ["harness-table", "tamp-inspect"])
def test_closed_pipe_ends_quietly(command: str, tiny_root: Path, tmp_path: Path) -> None:
    """`harness table | head`: the reader leaves before anything is written; no BrokenPipeError traceback."""
    if command == "harness-table":
        record = tmp_path / "runs" / "m" / "wanda_s0.50_unstructured" / "tamp_smoke_vqa.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"schema": 1, "model": {"name": "m"}, "method": "wanda", "sparsity": 0.5,
                                      "pattern": "unstructured", "task": "tamp_smoke_vqa", "limit": None,
                                      "metrics": {"exact_match,none": 0.5}}))
        cmd = [sys.executable, "-m", "harness.cli", "table", "--runs", str(tmp_path / "runs"), "--format", "latex"]
    else:
        info = {"model": {"id": "m", "family": "llama"}, "per_matrix": {},
                "config": {"method": "wanda", "allocation": "uniform", "token_selection": "all", "scoring": "wanda",
                           "pattern": "unstructured"},
                "sparsity": {"target": 0.5, "sparsity": 0.5, "zeros": 1, "numel": 2, "matrices": 1, "model_zeros": 1,
                             "model_params": 4}}
        (tmp_path / "pruning.json").write_text(json.dumps(info))
        cmd = [sys.executable, "-m", "tamp.cli", "inspect", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tiny_root), cwd=tmp_path)
    proc.stdout.close()  # long before the command has imported anything, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert err == "", err
