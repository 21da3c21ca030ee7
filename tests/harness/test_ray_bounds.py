"""`--executor ray` never waits forever: a local cluster (which cannot grow) without a GPU runs the cells on CPU, or
refuses an explicit GPU ask in one line; a joined cluster with no node that fits a cell is waited on for at most
`node_wait` seconds, with a progress line, then refused in one line. The wait runs here on a fake clock and fake
nodes; one short test starts a real local Ray cluster."""

from __future__ import annotations

import signal

import pytest

from harness.errors import HarnessError
from harness.executors.options import ExecutorOptions, executor_options, parse_block
from harness.executors.ray_tasks import _fit_local, fits, wait_for_node


class FakeCluster:
    """Nodes that appear at given times, on a clock that moves only when the driver sleeps."""

    def __init__(self, *appear: tuple[float, dict[str, float]]) -> None:
        self.now, self.appear, self.slept = 0.0, list(appear), []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def nodes(self) -> list[dict[str, float]]:
        return [node for at, node in self.appear if at <= self.now]


CPU_NODE = {"CPU": 16.0, "memory": 1e10}
GPU_NODE = {"CPU": 8.0, "GPU": 4.0}
ONE_GPU = {"GPU": 1.0, "CPU": 1.0}


def test_a_node_that_fits_is_used_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster((0, CPU_NODE), (0, GPU_NODE))
    wait_for_node(ONE_GPU, cluster.nodes, 600, cluster.clock, cluster.sleep)
    assert cluster.slept == [] and capsys.readouterr().out == ""
    assert fits({"GPU": 0.0, "CPU": 1.0}, CPU_NODE) and not fits(ONE_GPU, CPU_NODE) and not fits({"CPU": 9.0}, GPU_NODE)


def test_a_node_added_while_waiting_ends_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    """An autoscaler adds a GPU node after 70 s: two progress lines, then the cells go."""
    cluster = FakeCluster((0, CPU_NODE), (70, GPU_NODE))
    wait_for_node(ONE_GPU, cluster.nodes, 600, cluster.clock, cluster.sleep, poll_s=30)
    assert cluster.slept == [30, 30, 30]
    assert capsys.readouterr().out.splitlines() == [
        f"waiting for a Ray node with 1 GPU, 1 CPU for a cell: {s} s of at most 600 s (executor: node_wait)"
        for s in (0, 30, 60)]


def test_no_node_ever_stops_after_node_wait(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster((0, CPU_NODE), (0, {"CPU": 2.0}))
    with pytest.raises(HarnessError) as err:
        wait_for_node(ONE_GPU, cluster.nodes, 100, cluster.clock, cluster.sleep, poll_s=30)
    assert cluster.slept == [30, 30, 30, 10] and cluster.now == 100  # never past the bound
    assert len(capsys.readouterr().out.splitlines()) == 4
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("no node of the Ray cluster has 1 GPU, 1 CPU for a cell (at most 0 GPU, 16 CPU per "
                              "node) after 100 s of waiting; add such a node")
    assert "(executor: {node_wait: SECONDS} in the grid file)" in message


def test_node_wait_zero_does_not_wait(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster()
    with pytest.raises(HarnessError, match=r"has 2 GPU, 4 CPU for a cell \(at most 0 GPU, 0 CPU per node\) after 0 s"):
        wait_for_node({"GPU": 2.0, "CPU": 4.0}, cluster.nodes, 0, cluster.clock, cluster.sleep)
    assert cluster.slept == [] and capsys.readouterr().out == ""


def test_node_wait_is_an_executor_setting() -> None:
    assert ExecutorOptions().node_wait == 600
    assert executor_options("ray", parse_block({"node_wait": 30}, "g.yaml")).node_wait == 30
    assert executor_options("ray", parse_block({"node_wait": 0}, "g.yaml")).node_wait == 0
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(HarnessError, match=f"g.yaml: executor: node_wait must be an integer >= 0, got {bad!r}"):
            parse_block({"node_wait": bad}, "g.yaml")


# ---- the local cluster started here: what this machine has, and never more -----------------------------------------

NO_GPU = {"CPU": 4.0, "memory": 1e9}
HANG_GUARD_S = 300  # far past a loaded machine's Ray start (~45 s): a cell queued forever fails instead of hanging


def test_local_without_gpu_runs_auto_cells_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fit_local(1, ExecutorOptions(kind="ray"), "auto", NO_GPU) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["note: the local Ray cluster has no GPU (and a local cluster cannot grow): cells run on CPU; pass "
                   "--device cpu to say so, or --ray-address to join a cluster with GPUs"]
    assert _fit_local(0, ExecutorOptions(kind="ray"), "cpu", NO_GPU) == 0 and capsys.readouterr().out == ""
    assert _fit_local(1, ExecutorOptions(kind="ray"), "auto", {"CPU": 4.0, "GPU": 2.0}) == 1


@pytest.mark.parametrize("options, device, have, message", [
    (ExecutorOptions(kind="ray", gpus=1), "auto", NO_GPU,
     "each cell asks for 1 GPU(s) (--cell-gpus) and the local Ray cluster started here has 0, which it cannot grow"),
    (ExecutorOptions(kind="ray"), "cuda", NO_GPU, "each cell asks for 2 GPU(s) (--gpus, --device cuda)"),
    (ExecutorOptions(kind="ray"), "auto", {"CPU": 4.0, "GPU": 1.0}, "asks for 2 GPU(s) (--gpus, --device auto) and "
     "the local Ray cluster started here has 1"),
    (ExecutorOptions(kind="ray", cpus=8), "cpu", NO_GPU, "each cell asks for 8 CPUs (--cell-cpus) and the local Ray "
     "cluster started here has 4, which it cannot grow; ask for at most 4"),
], ids=["cell-gpus", "device-cuda", "two-gpus-of-one", "cpus"])
def test_local_refuses_an_ask_it_cannot_meet(options: ExecutorOptions, device: str, have: dict[str, float],
                                             message: str) -> None:
    per_cell = 0 if device == "cpu" else (options.gpus or 2)
    with pytest.raises(HarnessError) as err:
        _fit_local(per_cell, options, device, have)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # starts a real Ray cluster: ~10 s on an idle machine
def test_a_local_ray_cluster_without_gpu_runs_the_cell(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A real local cluster started by run_on_ray, on a machine that shows it no GPU, a cell of `--device auto` and
    `--gpus 1`: it runs (here it fails at once, an unknown model: the point is that Ray scheduled it) instead of
    being queued forever for a GPU."""
    import ray

    from harness.executors.cells import CellJob
    from harness.executors.ray_tasks import run_on_ray
    from harness.run import RunOptions

    if ray.is_initialized():
        pytest.skip("a Ray cluster is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # Ray's GPU detection: none
    # a loaded machine starts the raylet and its agents slowly (Ray gives up after 30 s by default)
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "180")
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "180000")
    job = CellJob("nope", RunOptions(model="no-such-model-xyz", sparsity=0.5, output=tmp_path / "runs",
                                     artifacts=tmp_path / "art"))
    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"run_on_ray still waits after {HANG_GUARD_S} s: the cell is queued for a GPU forever")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_GUARD_S)
    try:
        outcomes = run_on_ray([job], ExecutorOptions(kind="ray", node_wait=0), gpus=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not ray.is_initialized()  # the cluster it started is shut down
    out = capsys.readouterr().out
    assert "note: the local Ray cluster has no GPU (and a local cluster cannot grow): cells run on CPU" in out
    assert "submitted 1 cell(s) to Ray (0 GPU, 1 CPU each)" in out
    assert [o.label for o in outcomes] == ["nope"] and "unknown model 'no-such-model-xyz'" in outcomes[0].error
