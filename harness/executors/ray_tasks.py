"""`--executor ray`: each cell a Ray task asking for its GPUs, on the cluster `ray.init` finds.

The address is --ray-address / the block's `address`, else RAY_ADDRESS, else a local cluster started here (and
shut down at the end). Ray reruns a cell whose worker died (a lost node, kill -9) up to `retries` times; the
cell resumes where it was. Workers must see the same installation and the same --output / --artifacts folders
(a shared filesystem).

Nothing waits forever for resources the cluster lacks. A local cluster started here cannot grow: without a GPU
its cells run on CPU (see `_fit_local`). A cluster joined by address may grow (an autoscaler adding a node), so
the driver waits for a node that has what a cell asks, at most `node_wait` seconds (`wait_for_node`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import ray
from ray.exceptions import RayError

from harness.errors import HarnessError
from harness.executors.cells import CellJob, CellOutcome, run_cell
from harness.executors.options import ExecutorOptions, cell_gpus
from harness.executors.progress import Progress, one_line


def _connect(address: str | None) -> bool:
    """Join (or start) the cluster; True when this call started Ray, which is then shut down at the end."""
    if ray.is_initialized():  # the caller's own cluster (a notebook, a test)
        return False
    local = address is None and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True) if local else \
            ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        raise HarnessError(f"--ray-address {address or os.environ.get('RAY_ADDRESS')}: no Ray cluster there "
                           f"({one_line(exc)}); start one (`ray start --head`) or leave the address out") from None
    return True


POLL_S = 30.0  # how often the driver looks again for a node that fits a cell, printing a progress line


def _asked(gpus: int, cpus: int) -> dict[str, float]:
    return {"GPU": float(gpus), "CPU": float(cpus)}


def _text(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(name, 0.0):g} {name}" for name in ("GPU", "CPU"))


def fits(ask: dict[str, float], node: dict[str, float]) -> bool:
    """The node has (in total, busy or not) what one cell asks."""
    return all(node.get(name, 0.0) >= amount for name, amount in ask.items())


def wait_for_node(ask: dict[str, float], nodes: Callable[[], list[dict[str, float]]], limit_s: float,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                  poll_s: float = POLL_S) -> None:
    """Return once some node of the cluster (`nodes()`: each live node's total resources) has what one cell asks.

    Ray would queue a cell no node can run forever (its autoscaler logging an error every half minute), so the
    driver waits for such a node itself: a line each `poll_s` saying what it waits for and how long it has, then,
    after `limit_s` (executor: node_wait), one line naming what is missing."""
    start = clock()
    while True:
        seen = nodes()
        if any(fits(ask, node) for node in seen):
            return
        waited = clock() - start
        if waited >= limit_s:
            biggest = {name: max((n.get(name, 0.0) for n in seen), default=0.0) for name in ask}
            raise HarnessError(f"no node of the Ray cluster has {_text(ask)} for a cell (at most {_text(biggest)} per "
                               f"node) after {limit_s:g} s of waiting; add such a node, ask a cell for less "
                               "(--cell-gpus, --cell-cpus, --device cpu), or wait longer (executor: {node_wait: "
                               "SECONDS} in the grid file)")
        print(f"waiting for a Ray node with {_text(ask)} for a cell: {waited:.0f} s of at most {limit_s:g} s "
              "(executor: node_wait)", flush=True)
        sleep(max(0.0, min(poll_s, limit_s - waited)))


def _live_nodes() -> list[dict[str, float]]:
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def _fit_local(per_cell: int, options: ExecutorOptions, device: str, have: dict[str, float]) -> int:
    """The GPUs a cell asks of the local cluster started here, which has what this machine has and never more.

    Without a GPU, a cell that asked for one only because it evaluates on `--device auto` runs on CPU, with a
    one-line note: that is what `--executor local` does on the same machine with the same flags, so choosing Ray
    to spread the cells does not turn a grid that runs into one that stops (or, as before, one that waits forever).
    An explicit ask the machine cannot meet (--cell-gpus, --device cuda, --cell-cpus) is refused in one line
    rather than overridden."""
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    if per_cell > gpus and gpus == 0 and options.gpus is None and device == "auto":
        print("note: the local Ray cluster has no GPU (and a local cluster cannot grow): cells run on CPU; pass "
              "--device cpu to say so, or --ray-address to join a cluster with GPUs", flush=True)
        per_cell = 0
    elif per_cell > gpus:
        why = "--cell-gpus" if options.gpus is not None else f"--gpus, --device {device}"
        raise HarnessError(f"each cell asks for {per_cell} GPU(s) ({why}) and the local Ray cluster started here has "
                           f"{gpus:g}, which it cannot grow; ask for at most {gpus:g}, or join a cluster with GPUs "
                           "(--ray-address)")
    if options.cpus > cpus:
        raise HarnessError(f"each cell asks for {options.cpus} CPUs (--cell-cpus) and the local Ray cluster started "
                           f"here has {cpus:g}, which it cannot grow; ask for at most {cpus:g}")
    return per_cell


def run_on_ray(jobs: list[CellJob], options: ExecutorOptions, gpus: int) -> list[CellOutcome]:
    local = options.address is None and not os.environ.get("RAY_ADDRESS")
    started = _connect(options.address)
    try:
        device = jobs[0].opts.device
        per_cell = cell_gpus(options, gpus, device)
        if started and local:
            per_cell = _fit_local(per_cell, options, device, ray.cluster_resources())
        else:
            wait_for_node(_asked(per_cell, options.cpus), _live_nodes, options.node_wait)
        task = ray.remote(run_cell)
        refs = {task.options(num_cpus=options.cpus, num_gpus=per_cell, max_retries=options.retries,
                             name=f"cell {job.label}").remote(job): i for i, job in enumerate(jobs)}
        print(f"submitted {len(jobs)} cell(s) to Ray ({per_cell} GPU, {options.cpus} CPU each)", flush=True)
        outcomes: list[CellOutcome | None] = [None] * len(jobs)
        progress = Progress(len(jobs), "running or queued")
        pending = list(refs)
        progress.update(len(pending))
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    job = jobs[refs[ref]]
                    try:
                        outcome = ray.get(ref)
                    except RayError as exc:  # the worker died past its retries, or a bug raised in the cell
                        outcome = CellOutcome(job.label, f"the Ray task failed: {one_line(exc)}")
                    outcomes[refs[ref]] = outcome
                    progress.ended(outcome, len(pending))
        finally:
            for ref in pending:  # interrupted: the cells left are not worth keeping the cluster busy
                ray.cancel(ref)
        return [o for o in outcomes if o is not None]
    finally:
        if started:
            ray.shutdown()
