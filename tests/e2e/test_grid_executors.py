"""A tiny grid (tiny LLaVA-NeXT, magnitude + wanda at 30% and 50%, the smoke tasks, 2 documents) through each
executor: on a local Ray cluster and through submitit's local executor the records equal those of
`--executor local` (metrics, artifact keys). Two cells needing one artifact at the same time prune it once; a
grid killed (kill -9) in the middle of a cell resumes, leaving the finished records as they were."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow

GRID = """
name: tiny cluster grid
models: [tiny-llava-next]
methods: [magnitude, wanda]
sparsities: [0.3, 0.5]
nsamples: 4
tasks: [tamp_smoke_vqa, tamp_smoke_mc]
outputs: {{table: {out}/table.md}}
{extra}"""
CELLS = ["magnitude_s0.30", "magnitude_s0.50", "wanda_s0.30", "wanda_s0.50"]
HANG_GUARD_S = 600  # a subprocess that never prints what the test waits for fails the test instead of hanging it


def write_grid(root: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grid.yaml"
    path.write_text(GRID.format(out=root / "out", extra=extra))
    return path


def grid_args(root: Path) -> list[str]:
    return ["--limit", "2", "--device", "cpu", "--output", str(root / "runs"), "--artifacts", str(root / "artifacts")]


def records(runs: Path) -> dict[str, dict]:
    return {p.relative_to(runs).as_posix(): json.loads(p.read_text()) for p in sorted(runs.rglob("*_limit2.json"))}


def assert_same_records(got: Path, want: Path) -> None:
    a, b = records(got), records(want)
    assert len(b) == 8 and set(a) == set(b)
    for name in b:
        assert a[name]["metrics"] == b[name]["metrics"], name
        assert a[name]["artifact_key"] == b[name]["artifact_key"], name
        assert (a[name]["method"], a[name]["sparsity"], a[name]["limit"]) == \
            (b[name]["method"], b[name]["sparsity"], b[name]["limit"])


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Path:
    """The reference: the same grid with `--executor local` (the default), its records under <root>/runs."""
    root = tmp_path_factory.mktemp("grid-local")
    assert main(["grid", str(write_grid(root)), *grid_args(root)]) == 0
    assert sorted({name.split("/")[1].removesuffix("_unstructured") for name in records(root / "runs")}) == CELLS
    return root


def test_ray_executor_equals_local(local_grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert main(["grid", str(write_grid(tmp_path)), *grid_args(tmp_path), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "4 cell(s), 0 finished already, 4 to run (--executor ray)" in out
    assert "[cells: 4/4 done, 0 running or queued, 0 failed]" in out
    assert_same_records(tmp_path / "runs", local_grid / "runs")
    assert (tmp_path / "out" / "table.md").is_file()


def test_submitit_executor_equals_local(local_grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--executor slurm` with submitit's local backend (`cluster: local`): the SLURM settings mapped through
    submitit's AutoExecutor, each cell a job (a subprocess here), its logs under the output folder."""
    grid = write_grid(tmp_path, "executor: {cluster: local, partition: gpu, time: 30, array_parallelism: 2, "
                                "slurm: {account: tiny}}\n")
    assert main(["grid", str(grid), *grid_args(tmp_path), "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 cell(s) through submitit (local: jobs" in out and "[cells: 4/4 done, 0 running, 0 failed]" in out
    assert_same_records(tmp_path / "runs", local_grid / "runs")
    logs = tmp_path / "runs" / "logs" / "slurm"
    assert len(list(logs.glob("*_log.out"))) == 4 and len(list(logs.glob("*_result.pkl"))) == 4
    # resumed with every record there: nothing is submitted, and the table is written again
    assert main(["grid", str(grid), *grid_args(tmp_path), "--executor", "slurm"]) == 0
    assert "4 cell(s), 4 finished already, 0 to run" in capsys.readouterr().out


class Lines:
    """A subprocess's merged stdout/stderr, read on a thread so the test can wait for a line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while sum(text in line for line in self.lines) < count:
            assert self.proc.poll() is None or self.thread.is_alive(), f"exited before '{text}':\n{self.text()}"
            assert time.monotonic() < deadline, f"never printed '{text}':\n{self.text()}"
            time.sleep(0.2)

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self) -> int:
        code = self.proc.wait(timeout=HANG_GUARD_S)
        self.thread.join(timeout=60)
        return code


def harness_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def test_two_cells_needing_one_artifact_prune_it_once(tmp_path: Path, tiny_root: Path) -> None:
    """Two `harness run`s (two cells, other tasks) of the same model, method and sparsity, both waiting on the
    artifact's lock at once (the test holds it until both wait): one prunes, the other reuses, both record."""
    from harness.cache import key_lock
    from harness.run import RunOptions, plan_run

    common = ["--model", "tiny-llava-next", "--method", "magnitude", "--sparsity", "0.5", *grid_args(tmp_path)]
    key = plan_run(RunOptions(model="tiny-llava-next", method="magnitude", sparsity=0.5, limit=2, device="cpu",
                          output=tmp_path / "runs", artifacts=tmp_path / "artifacts")).key
    (tmp_path / "artifacts").mkdir()
    lock = key_lock(tmp_path / "artifacts", key)
    lock.acquire()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    try:
        runs = [Lines(harness_cmd("run", *common, "--tasks", task), env) for task in ("tamp_smoke_vqa", "tamp_smoke_mc")]
        for r in runs:
            r.wait_for(f"waiting for another process pruning artifact {key}")
    finally:
        lock.release()
    assert [r.finish() for r in runs] == [0, 0], "\n".join(r.text() for r in runs)
    logs = [r.text() for r in runs]
    assert sum(log.count("wrote artifact") for log in logs) == 1
    assert sum(log.count("reusing artifact") for log in logs) == 1
    recs = list(records(tmp_path / "runs").values())
    assert len(recs) == 2 and {r["artifact_key"] for r in recs} == {key}
    assert sorted(r["timings"]["prune_reused"] for r in recs) == [False, True]


def test_grid_killed_mid_cell_resumes(tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of the grid while its second cell evaluates (its artifact written, its tasks not all recorded):
    the same command finishes the grid, reusing that artifact; the first cell's records keep their mtimes."""
    grid = write_grid(tmp_path).read_text().replace("[magnitude, wanda]", "[magnitude]")
    (tmp_path / "grid.yaml").write_text(grid)
    run = Lines(harness_cmd("grid", str(tmp_path / "grid.yaml"), *grid_args(tmp_path)),
                {**os.environ, "TQDM_DISABLE": "1"})
    try:
        run.wait_for("=== [2/2]")
        run.wait_for("wrote artifact", count=2)
    finally:
        os.killpg(run.proc.pid, signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    first = sorted((tmp_path / "runs" / "tiny-llava-next" / "magnitude_s0.30_unstructured").glob("*_limit2.json"))
    assert len(first) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    assert len(records(tmp_path / "runs")) < 4  # the second cell was cut short

    capsys.readouterr()
    assert main(["grid", str(tmp_path / "grid.yaml"), *grid_args(tmp_path)]) == 0
    log = capsys.readouterr().out
    assert len(records(tmp_path / "runs")) == 4
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes
    assert "wrote artifact" not in log and log.count("reusing artifact") == 1  # the second cell's, pruned before


def test_ray_reruns_a_cell_whose_worker_was_killed(tmp_path: Path, tiny_root: Path) -> None:
    """A preempted node, on Ray: kill -9 of the worker running a cell (held, by the test, waiting on its artifact's
    lock: a deterministic moment mid-cell). Ray runs the cell again on a new worker; the grid ends with every record,
    the other cell's records as they were, the artifact pruned once."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs: the test holds one cell while the other runs")
    import re

    from harness.cache import key_lock
    from harness.run import RunOptions, plan_run

    (tmp_path / "grid.yaml").write_text(write_grid(tmp_path).read_text().replace("[magnitude, wanda]", "[magnitude]"))
    key = plan_run(RunOptions(model="tiny-llava-next", method="magnitude", sparsity=0.5, limit=2, device="cpu",
                          output=tmp_path / "runs", artifacts=tmp_path / "artifacts")).key
    (tmp_path / "artifacts").mkdir()
    lock = key_lock(tmp_path / "artifacts", key)
    lock.acquire()
    waiting = f"waiting for another process pruning artifact {key}"
    run = Lines(harness_cmd("grid", str(tmp_path / "grid.yaml"), *grid_args(tmp_path), "--executor", "ray"),
                {**os.environ, "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"})
    try:
        run.wait_for("[cells: 1/2 done")
        run.wait_for(waiting)
        first = sorted((tmp_path / "runs" / "tiny-llava-next" / "magnitude_s0.30_unstructured").glob("*_limit2.json"))
        mtimes = {p: p.stat().st_mtime_ns for p in first}
        pid = int(re.search(r"pid=(\d+)\)", next(line for line in run.lines if waiting in line)).group(1))
        os.kill(pid, signal.SIGKILL)
        run.wait_for(waiting, count=2)  # the cell again, on a new worker
    finally:
        lock.release()
    assert run.finish() == 0, run.text()
    pids = {int(m.group(1)) for line in run.lines if waiting in line and (m := re.search(r"pid=(\d+)\)", line))}
    assert len(pids) == 2 and pid in pids
    assert "[cells: 2/2 done, 0 running or queued, 0 failed]" in run.text()
    assert len(first) == 2 and {p: p.stat().st_mtime_ns for p in first} == mtimes
    assert len(records(tmp_path / "runs")) == 4 and run.text().count("wrote artifact") == 2  # one per cell


def test_stale_temp_dir_of_a_killed_pruner_is_cleared(tmp_path: Path, tiny_root: Path) -> None:
    """A process killed while pruning leaves `.<key>.tmp-<pid>`; the next holder of the key's lock removes it."""
    from harness.cache import ensure_artifact, valid_artifact
    from harness.run import RunOptions, plan_run

    p = plan_run(RunOptions(model="tiny-llava-next", method="magnitude", sparsity=0.5, limit=2, device="cpu",
                        output=tmp_path / "runs", artifacts=tmp_path / "artifacts"))
    stale = tmp_path / "artifacts" / f".{p.key}.tmp-999999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    path, reused, _ = ensure_artifact(tmp_path / "artifacts", p.key, p.key_inputs, p.spec, p.recipe, "cpu")
    assert not reused and valid_artifact(path, p.key) and not stale.exists()
    shutil.rmtree(path)


SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "sinfo", "munged", "munge")
SLURM_CONF = """ClusterName=tamptest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
ReturnToService=2
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=tiny Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d, name)).is_file()), None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid_file: Path) -> None:
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node SLURM on this machine (Debian's slurmctld + slurmd + munge), started for these tests and stopped
    after them; skipped with the reason where it cannot be (CI machines without SLURM, not root)."""
    missing = [name for name in SLURM_BINARIES if _binary(name) is None]
    if missing:
        pytest.skip(f"no SLURM on this machine ({', '.join(missing)} not found; Debian: apt-get install slurmctld "
                    "slurmd slurm-client munge): the grid through real SLURM is not run")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd and munged needs root: the grid through real SLURM is not run")
    import socket

    root = tmp_path_factory.mktemp("slurm")
    (root / "spool").mkdir()
    (root / "state").mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, ctld_port=_free_port(), d_port=_free_port(),
                                      cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munge = subprocess.run([_binary("munge"), "-n"], capture_output=True).returncode != 0
    if started_munge:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", _binary("munged")], check=False)
    subprocess.run([_binary("slurmctld"), "-L", str(root / "slurmctld.log")], env=env, check=False)
    subprocess.run([_binary("slurmd"), "-L", str(root / "slurmd.log")], env=env, check=False)
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run([_binary("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True,
                                           text=True).stdout:
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-500:] for p in root.glob("*.log"))
                pytest.skip(f"SLURM is installed but its daemons did not come up within 60 s: {logs}")
            time.sleep(0.5)
        yield {"SLURM_CONF": str(conf), "partition": "tiny"}
    finally:
        _stop(root / "slurmd.pid")
        _stop(root / "slurmctld.pid")
        if started_munge:
            _stop(Path("/run/munge/munged.pid"))


def test_real_slurm_equals_local(slurm: dict[str, str], local_grid: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny grid through a real (one-node) SLURM: sbatch job array, each cell a job, records as local's."""
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    grid = write_grid(tmp_path, f"executor: {{partition: {slurm['partition']}, time: 30, array_parallelism: 2}}\n")
    assert main(["grid", str(grid), *grid_args(tmp_path), "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 cell(s) through submitit (slurm: jobs" in out and "[cells: 4/4 done" in out
    assert_same_records(tmp_path / "runs", local_grid / "runs")
    assert len(list((tmp_path / "runs" / "logs" / "slurm").glob("*_log.out"))) == 4
