"""Executor settings (the grid file's `executor:` block and the flags) and their one-line errors; the artifact
cache's lock on a key. The grids that really run on Ray and submitit are in tests/e2e/test_grid_executors.py."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cache import key_lock
from harness.cli import main
from harness.errors import HarnessError
from harness.executors import ExecutorOptions, cell_gpus, executor_options, parse_block
from harness.grid import load_grid

GRID = "models: [tiny-llava]\nmethods: [magnitude]\nsparsities: [0.5]\ntasks: [tamp_smoke_mc]\n"


def test_block_then_flags() -> None:
    block = parse_block({"partition": "gpu", "time": 240, "array_parallelism": 8, "cpus": 8, "mem_gb": 64.5,
                         "slurm": {"account": "proj"}, "cluster": "local"}, "g.yaml")
    opts = executor_options("slurm", block, partition="long", time=None, cpus=None, gpus=2, address=None,
                            array_parallelism=None)
    assert opts == ExecutorOptions(kind="slurm", partition="long", time=240, array_parallelism=8, cpus=8, gpus=2,
                                   mem_gb=64.5, cluster="local", slurm={"account": "proj"})
    assert executor_options("local", {}) == ExecutorOptions()


def test_cell_gpus_follow_the_device() -> None:
    assert cell_gpus(ExecutorOptions(), gpus=2, device="auto") == 2
    assert cell_gpus(ExecutorOptions(), gpus=1, device="cpu") == 0
    assert cell_gpus(ExecutorOptions(gpus=4), gpus=1, device="cpu") == 4


@pytest.mark.parametrize("block,match", [
    ({"partiton": "gpu"}, "unknown key.*partiton.*allowed: .*partition"),
    ({"time": "1h"}, "time must be an integer >= 1"),
    ({"gpus": -1}, "gpus must be an integer >= 0"),
    ({"cpus": True}, "cpus must be an integer >= 1"),
    ({"mem_gb": 0}, "mem_gb must be a positive number"),
    ({"cluster": "kubernetes"}, "cluster must be one of slurm, local"),
    ({"slurm": ["account=x"]}, "slurm maps sbatch options"),
    ({"partition": 3}, "partition must be a string"),
    (["ray"], "'executor' maps settings"),
])
def test_bad_executor_block(block: object, match: str) -> None:
    with pytest.raises(HarnessError, match=match):
        parse_block(block, "g.yaml")


def test_grid_file_executor_block(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GRID + "executor: {partition: gpu, time: 60}\n")
    assert load_grid(path).executor == {"partition": "gpu", "time": 60}
    path.write_text(GRID + "executor: {partion: gpu}\n")
    with pytest.raises(HarnessError, match="executor: unknown key"):
        load_grid(path)


@pytest.mark.parametrize("flags,message", [
    (["--executor", "kubernetes"], "error: --executor kubernetes: unknown; choose one of local, ray, slurm"),
    (["--executor", "slurm", "--time", "0"], "error: --time must be at least 1, got 0"),
    (["--executor", "ray", "--cell-gpus", "-1"], "error: --cell-gpus must be at least 0, got -1"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, flags: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g.yaml").write_text(GRID)
    assert main(["grid", str(tmp_path / "g.yaml"), "--output", str(tmp_path / "runs"), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind,module", [("ray", "ray"), ("slurm", "submitit")])
def test_missing_extra_says_what_to_install(tmp_path: Path, kind: str, module: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    (tmp_path / "g.yaml").write_text(GRID)
    assert main(["grid", str(tmp_path / "g.yaml"), "--output", str(tmp_path / "runs"), "--executor", kind]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --executor {kind} needs the '{module}' package: pip install 'tamp-harness[cluster]' "
                   "(`make install` installs it)"]
    assert not (tmp_path / "runs").exists()


def test_unreachable_ray_address_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "g.yaml").write_text(GRID)
    assert main(["grid", str(tmp_path / "g.yaml"), "--output", str(tmp_path / "runs"), "--executor", "ray",
                 "--ray-address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there")
    assert not (tmp_path / "runs").exists()


def test_slurm_without_sbatch_says_where_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "sbatch" else real(name, *a, **k))
    (tmp_path / "g.yaml").write_text(GRID)
    assert main(["grid", str(tmp_path / "g.yaml"), "--output", str(tmp_path / "runs"), "--executor", "slurm",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --executor slurm: no `sbatch` on this machine; run the grid on a SLURM login")
    assert not list(tmp_path.rglob("*.json"))


HOLD = """
import sys, time
from pathlib import Path
from harness.cache import key_lock
lock = key_lock(Path(sys.argv[1]), "k1")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    """kill -9 of the process pruning an artifact (a preempted node) leaves no lock that blocks the next one."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = key_lock(tmp_path, "k1")
        with pytest.raises(TimeoutError):  # filelock's Timeout: held by a live process
            lock.acquire(timeout=0)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        lock.acquire(timeout=60)  # released by the kernel with its holder
        assert lock.is_locked
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
