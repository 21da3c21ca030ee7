"""`--executor ray`: each cell a Ray task asking for its GPUs, on the cluster `ray.init` finds.

The address is --ray-address / the block's `address`, else RAY_ADDRESS, else a local cluster started here (and
shut down at the end). Ray reruns a cell whose worker died (a lost node, kill -9) up to `retries` times; the
cell resumes where it was. Workers must see the same installation and the same --output / --artifacts folders
(a shared filesystem).
"""

from __future__ import annotations

import os

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


def run_on_ray(jobs: list[CellJob], options: ExecutorOptions, gpus: int) -> list[CellOutcome]:
    started = _connect(options.address)
    try:
        per_cell = cell_gpus(options, gpus, jobs[0].opts.device)
        have = ray.cluster_resources().get("GPU", 0)
        if per_cell > have:
            print(f"warning: each cell asks for {per_cell} GPU(s) and the Ray cluster has {have:g} now; cells wait "
                  "until the cluster has them (--device cpu runs cells on CPUs)", flush=True)
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
