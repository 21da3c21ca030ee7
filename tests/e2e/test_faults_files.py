"""What a run leaves on disk when the cluster is shared or the run is killed (tamp.atomic_write, tamp.console).

- Permissions follow the umask (0o022 and 0o077 here) for records, JSON tables, pruning.json and the artifact
  folder with everything in it: tempfile's 0600 / 0700 would hide them from the group.
- A temp named by a writer that is no longer alive (the PID of a finished subprocess) is removed by the next
  write into the same folder; one named by a live writer (this process) stays.
- SIGTERM (what SLURM and Ray send first) ends `tamp` / `harness` as Ctrl-C does: one line, no partial output,
  no temp left, but exit 143.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import harness.cli
import tamp.cli
from harness.records import write_json, write_jsonl
from tamp.artifacts import write_json_atomic
from tamp.atomic_write import HOST, current_umask, is_stale, remove_stale, temp_path
from tests.helpers import STOPPABLE_COMMANDS, STOPPABLE_IDS

ROOT = Path(__file__).resolve().parents[2]


def _env(tiny_root: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TAMP_CACHE": str(tiny_root),
            "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the one before is put back."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The PID of a process that has finished (and been reaped): no writer with it is alive."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- permissions ----------------------------------------------------------------------------------------------

def _record(where: Path) -> list[Path]:
    path = where / "runs" / "m" / "wanda_s0.50_unstructured" / "task.json"
    write_json(path, {"metrics": {"acc": 0.5}})
    return [path]


def _samples(where: Path) -> list[Path]:
    path = where / "runs" / "task_samples.jsonl"
    write_jsonl(path, [{"doc_id": 0}, {"doc_id": 1}])
    return [path]


def _json(where: Path) -> list[Path]:
    path = where / "pruning.json"
    write_json_atomic(path, {"config": {}})
    return [path]


def _table(where: Path) -> list[Path]:
    record = where / "runs" / "m" / "wanda_s0.50_unstructured" / "tamp_smoke_vqa.json"
    write_json(record, {"schema": 1, "model": {"name": "m"}, "method": "wanda", "sparsity": 0.5,
                        "pattern": "unstructured", "task": "tamp_smoke_vqa", "limit": None,
                        "metrics": {"exact_match,none": 0.5}})
    assert harness.cli.main(["table", "--runs", str(where / "runs"), "--out", str(where / "table.md")]) == 0
    return [record, where / "table.md"]


WRITERS: dict[str, Callable[[Path], list[Path]]] = {"record": _record, "samples": _samples, "json": _json,
                                                    "table": _table}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=["umask-022", "umask-077", "umask-002"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_written_files_follow_the_umask(writer: str, mask: int, umask: Callable[[int], None], tmp_path: Path) -> None:
    umask(mask)
    assert current_umask() == mask
    for path in WRITERS[writer](tmp_path):
        assert _mode(path) == 0o666 & ~mask, (path, oct(_mode(path)))
    assert not [p for p in tmp_path.rglob(".*")], "a temp file was left"


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_an_artifact_folder_and_its_files_follow_the_umask(mask: int, umask: Callable[[int], None], tiny_model,
                                                           tmp_path: Path) -> None:
    tiny = tiny_model("llava-next")
    umask(mask)
    out = tmp_path / "art"
    assert tamp.cli.main(["prune", "--model", str(tiny), "--method", "magnitude", "--out", str(out),
                          "--device", "cpu"]) == 0
    assert _mode(out) == 0o777 & ~mask
    inside = list(out.rglob("*"))
    assert any(p.name == "pruning.json" for p in inside) and any(p.suffix == ".safetensors" for p in inside)
    for path in inside:
        expected = 0o777 & ~mask if path.is_dir() else 0o666 & ~mask
        assert _mode(path) == expected, (path, oct(_mode(path)))


# ---- stale temps of dead writers ---------------------------------------------------------------------------------

def _temps(folder: Path, target: str, pid: int, dead_pid: int) -> tuple[list[Path], list[Path]]:
    """(stale, live) temps beside `target` in `folder`: a file and a folder each, named as the writers name them."""
    stale = [folder / f".{target}.tmp-{HOST}-{dead_pid}-aaaa1111", folder / f".{target}.old-{HOST}-{dead_pid}-bbbb2222"]
    live = [folder / f".{target}.tmp-{HOST}-{pid}-cccc3333", folder / f".{target}.tmp-{HOST}-1-dddd4444"]
    for path in stale + live:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"half")
    return stale, live


def test_a_temp_name_says_whether_its_writer_is_alive(dead_pid: int, tmp_path: Path) -> None:
    mine = temp_path(tmp_path / "x")
    assert mine.name.startswith(f".x.tmp-{HOST}-{os.getpid()}-") and not is_stale(mine.name)
    assert is_stale(f".x.tmp-{HOST}-{dead_pid}-abcdef12")
    assert not is_stale(f".x.tmp-{'0' * 8 if HOST != '0' * 8 else '1' * 8}-{dead_pid}-abcdef12")  # other host
    assert not is_stale(f".x.tmp-{dead_pid}")  # an older name says nothing about its writer: kept
    assert not is_stale("x.json")
    (tmp_path / f".x.tmp-{HOST}-{dead_pid}-abcdef12").write_text("half")
    (tmp_path / "x.json").write_text("{}")
    assert [p.name for p in remove_stale(tmp_path)] == [f".x.tmp-{HOST}-{dead_pid}-abcdef12"]


@pytest.mark.parametrize("writer", ["record", "json"])
def test_a_file_writer_removes_dead_writers_temps_beside_it(writer: str, dead_pid: int, tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "m" / "wanda_s0.50_unstructured" if writer == "record" else tmp_path
    name = "task.json" if writer == "record" else "pruning.json"
    stale, live = _temps(folder, name, os.getpid(), dead_pid)
    (written,) = WRITERS[writer](tmp_path)
    assert written.name == name and json.loads(written.read_text())
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)


def test_tamp_prune_removes_dead_writers_temps_beside_out(tiny_model, dead_pid: int, tmp_path: Path) -> None:
    """Two prunes into the same place: the first over a killed run's leftovers, the second (--overwrite) over a
    killed overwrite's `.old-` copy; a live writer's temps stay through both."""
    tiny = tiny_model("llava-next")
    out = tmp_path / "art"
    stale, live = _temps(tmp_path, "art", os.getpid(), dead_pid)
    assert tamp.cli.main(["prune", "--model", str(tiny), "--method", "magnitude", "--out", str(out),
                          "--device", "cpu"]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    stale_again = tmp_path / f".art.old-{HOST}-{dead_pid}-eeee5555"
    stale_again.mkdir()
    assert tamp.cli.main(["prune", "--model", str(tiny), "--method", "magnitude", "--out", str(out),
                          "--device", "cpu", "--overwrite"]) == 0
    assert not stale_again.exists() and all(p.exists() for p in live)
    assert (out / "pruning.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["art", *(p.name for p in live)])


def test_the_cache_removes_a_killed_pruners_key_folder_and_the_save_inside(tmp_path: Path, tiny_root: Path,
                                                                           dead_pid: int) -> None:
    """Under the key's lock every temp of that key is a dead holder's: the key folder (older `.KEY.tmp-PID` name
    and the current one) and the folder tamp's save filled beside it (`..KEY.tmp-...`). Other keys' temps follow
    the PID rule: a dead writer's go, a live writer's stay."""
    from harness.cache import ensure_artifact, valid_artifact
    from harness.run import RunOptions, plan_run

    root = tmp_path / "artifacts"
    p = plan_run(RunOptions(model="tiny-llava-next", method="magnitude", sparsity=0.5, limit=2, device="cpu",
                            output=tmp_path / "runs", artifacts=root))
    key_temps = [root / f".{p.key}.tmp-{dead_pid}", root / f".{p.key}.tmp-{HOST}-{dead_pid}-cache1",
                 root / f"..{p.key}.tmp-{dead_pid}.tmp-x1y2z3", root / f"..{p.key}.tmp-{HOST}-{dead_pid}-a.tmp-b"]
    for path in key_temps:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"half")
    stale, live = _temps(root, "otherkey", os.getpid(), dead_pid)
    path, reused, _ = ensure_artifact(root, p.key, p.key_inputs, p.spec, p.recipe, "cpu")
    assert not reused and valid_artifact(path, p.key)
    assert not any(t.exists() for t in key_temps + stale)
    assert all(t.exists() for t in live)
    assert sorted(x.name for x in root.iterdir() if x.name.startswith(".") and not x.name.endswith(".lock")) == \
        sorted(t.name for t in live)


def test_a_trained_model_build_removes_a_killed_builds_temp(tmp_path: Path, dead_pid: int,
                                                            umask: Callable[[int], None]) -> None:
    """The build a test trains into the user's cache (`.trained-*.tmp-*` beside it after a kill); its folder and
    weights get the umask's permissions (safetensors alone would write 0600)."""
    from tamp.testing.tiny_training import Recipe, build_trained_tiny, trained_cache_name

    quick = Recipe(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, vision_hidden=32,
                   vision_intermediate=64, vision_layers=2, vision_steps=3, vision_batch=4, steps=3, batch=2, warmup=1)
    name = trained_cache_name("llava-next")
    stale, live = _temps(tmp_path, name, os.getpid(), dead_pid)
    umask(0o022)
    out = build_trained_tiny("llava-next", tmp_path / name, recipe=quick)
    assert (out / "training.json").is_file()
    assert _mode(out) == 0o755 and _mode(out / "model.safetensors") == 0o644
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *(p.name for p in live)])


# ---- SIGTERM ---------------------------------------------------------------------------------------------------

def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr[-3000:]
    return lines[-1]


def _terminate_when(cmd: list[str], env: dict[str, str], cwd: Path, ready: Callable[[subprocess.Popen], bool],
                    ) -> subprocess.CompletedProcess:
    """Start `cmd`, send SIGTERM once `ready` says it is inside its command, wait for the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not ready(proc):
        time.sleep(0.05)
    assert proc.poll() is None, "the command finished before it could be terminated: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torch_loaded(proc: subprocess.Popen) -> bool:
    """The lazy commands import torch inside run_command: once it is mapped, SIGTERM has its handler."""
    return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("command, left", STOPPABLE_COMMANDS, ids=STOPPABLE_IDS)
def test_sigterm_is_one_line_and_exit_143(command: list[str], left: str, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, *[arg.replace("OUT", str(out)) for arg in command]]
    proc = _terminate_when(cmd, _env(tiny_root), tmp_path, _torch_loaded)
    assert proc.returncode == 143, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert line.startswith("error: terminated (SIGTERM); ") and left in line
    written = list(out.rglob("*")) if out.exists() else []
    assert not any(p.name == "pruning.json" for p in written)
    assert not [p for p in [*tmp_path.iterdir(), *written] if ".tmp-" in p.name or ".old-" in p.name]


# a command run the way `tamp` runs its commands, that holds a temp of the atomic writers open until SIGTERM comes
WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tamp.atomic_write import atomic_dir, atomic_file
    from tamp.console import run_command

    def command():
        out = Path(sys.argv[2])
        if sys.argv[1] == "dir":
            with atomic_dir(out) as tmp:
                (tmp / "weights.bin").write_bytes(b"x" * 1000)
                print("writing", flush=True)
                time.sleep(120)
        else:
            with atomic_file(out) as fh:
                fh.write("half")
                print("writing", flush=True)
                time.sleep(120)
        return 0

    sys.exit(run_command(command, (), "nothing half-written is left"))
""")


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_sigterm_mid_write_removes_the_temp(kind: str, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", WRITER_SCRIPT, kind, str(out)]
    # "writing" comes once the temp holds data, inside the writer's block
    proc = _terminate_when(cmd, _env(tiny_root), tmp_path, lambda p: p.stdout.readline() == "writing\n")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert _one_error_line(proc.stderr) == "error: terminated (SIGTERM); nothing half-written is left"
    assert list(tmp_path.iterdir()) == [], "the temp or a partial output was left"


def test_run_command_gives_back_the_sigterm_handler_it_found() -> None:
    from tamp.console import run_command

    before = signal.getsignal(signal.SIGTERM)
    seen: list[Any] = []
    assert run_command(lambda: seen.append(signal.getsignal(signal.SIGTERM)) or 0, (), "") == 0
    assert seen[0] not in (before, signal.SIG_DFL) and signal.getsignal(signal.SIGTERM) == before
