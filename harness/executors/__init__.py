"""Where a grid's cells run (`harness grid --executor local|ray|slurm`): this process, a Ray cluster, or SLURM
through submitit. Each cell is one job (cells.py); Ray and submitit do the scheduling, the retries and the
requeueing, and this package only submits cells to them and follows their progress (progress.py).

The executor's settings (options.py) come from the grid file's `executor:` block, overridden by flags.
"""

from __future__ import annotations

from pathlib import Path

from harness.executors.cells import CellJob, CellOutcome
from harness.executors.local import run_local
from harness.executors.options import (
    EXECUTORS,
    ExecutorOptions,
    cell_gpus,
    check_available,
    executor_options,
    parse_block,
)

__all__ = ["EXECUTORS", "ExecutorOptions", "cell_gpus", "check_available", "executor_options", "parse_block",
           "run_jobs"]


def run_jobs(jobs: list[CellJob], options: ExecutorOptions, gpus: int, logs: Path) -> list[CellOutcome]:
    """Run every job where the options say; one outcome per job, in order, once all of them have ended."""
    if not jobs:
        return []
    if options.kind == "local":
        return run_local(jobs)
    check_available(options)
    if options.kind == "ray":
        from harness.executors.ray_tasks import run_on_ray

        return run_on_ray(jobs, options, gpus)
    from harness.executors.slurm_jobs import run_with_submitit

    return run_with_submitit(jobs, options, gpus, logs)
