"""One grid cell as a job: what a worker (this process, a Ray worker, a SLURM job) needs to run it, and its outcome.

A cell is one `harness run`, which is resumable by itself (finished tasks skipped, the artifact pruned once
under its key's lock), so a job that is killed and run again, by hand or by Ray / submitit on another node,
finishes the cell without redoing or rewriting what was done.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.evaluate import quiet_loguru
from harness.executors.progress import cell_progress
from harness.run import RunOptions, run

# environment a cell's run depends on (caches, offline switches, log level), shipped with each job so that a
# worker on another node, started without the driver's environment, runs the same cell
SHIPPED_ENV = ("TAMP_", "HF_", "HARNESS_", "TRANSFORMERS_", "TOKENIZERS_", "TQDM_")


@dataclass
class CellJob:
    """A cell's `harness run` options (absolute paths: a worker's working directory is not the driver's)."""

    label: str
    opts: RunOptions
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class CellOutcome:
    label: str
    error: str | None = None  # the one-line reason a cell failed; None when it finished


def shipped_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(SHIPPED_ENV)}


def execute(job: CellJob) -> CellOutcome:
    """Run the cell here; a HarnessError (missing data, empty answers, ...) is the cell's failure, not the grid's."""
    try:
        with cell_progress(job.label) as cell:  # one bar for the cell, its phases on one line
            run(job.opts, started=cell.start)
    except HarnessError as exc:
        return CellOutcome(job.label, str(exc))
    return CellOutcome(job.label, None)


def run_cell(job: CellJob) -> CellOutcome:
    """The entry point of a remote worker: the driver's environment, quiet lmms-eval logs, then the cell."""
    os.environ.update(job.env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_loguru()
    print(f"=== {job.label} (on {socket.gethostname()}, pid {os.getpid()}) ===", flush=True)
    outcome = execute(job)
    if outcome.error is not None:
        print(f"error: {job.label}: {outcome.error}", flush=True)
    return outcome
