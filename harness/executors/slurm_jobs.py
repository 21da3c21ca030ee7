"""`--executor slurm`: each cell a SLURM job (one job array per grid) through submitit.

Partition, time, GPUs and CPUs per job, memory, array parallelism and any other sbatch option come from the
grid file's `executor:` block or the flags. A cell is Checkpointable: when SLURM preempts it or its time runs
out, submitit requeues it as is and the cell resumes where it was. Each job's logs (stdout, stderr, the
submission script) are <output>/logs/slurm/<job id>_*.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import submitit

from harness.errors import HarnessError
from harness.executors.cells import CellJob, CellOutcome, run_cell
from harness.executors.options import ExecutorOptions, cell_gpus
from harness.executors.progress import Progress, one_line

POLL_S = 5.0  # how often the driver looks at its jobs (submitit caches sacct between looks)


class CellTask(submitit.helpers.Checkpointable):
    """A cell for submitit; its default checkpoint() resubmits the same call, which resumes the cell."""

    def __call__(self, job: CellJob) -> CellOutcome:
        return run_cell(job)


def make_executor(options: ExecutorOptions, gpus: int, folder: Path) -> submitit.AutoExecutor:
    """submitit's executor with the options mapped onto its parameters (generic ones, then slurm_* ones)."""
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise HarnessError("--executor slurm: no `sbatch` on this machine; run the grid on a SLURM login node, or try "
                           "it here with `cluster: local` in the grid file's executor block")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    except RuntimeError as exc:
        raise HarnessError(f"--executor slurm: {exc}") from None
    params = {"name": "tamp-grid", "timeout_min": options.time, "cpus_per_task": options.cpus, "gpus_per_node": gpus,
              "mem_gb": options.mem_gb, "slurm_partition": options.partition,
              "slurm_array_parallelism": options.array_parallelism,
              "slurm_additional_parameters": dict(options.slurm) or None}
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, AssertionError, ValueError) as exc:
        raise HarnessError(f"executor settings rejected by submitit: {one_line(exc)}") from None
    return executor


def run_with_submitit(jobs: list[CellJob], options: ExecutorOptions, gpus: int, logs: Path) -> list[CellOutcome]:
    per_cell = cell_gpus(options, gpus, jobs[0].opts.device)
    folder = logs / "slurm"
    executor = make_executor(options, per_cell, folder)
    try:
        with executor.batch():
            submitted = [executor.submit(CellTask(), job) for job in jobs]
    except Exception as exc:  # sbatch refused (no such partition, over a limit): one line, not a traceback
        raise HarnessError(f"submitting the cells failed: {one_line(exc)}") from None
    ids = ", ".join(s.job_id for s in submitted[:3]) + (", ..." if len(submitted) > 3 else "")
    print(f"submitted {len(jobs)} cell(s) through submitit ({options.cluster}: jobs {ids}; {per_cell} GPU, "
          f"{options.cpus} CPU each); logs in {folder}", flush=True)
    outcomes: dict[int, CellOutcome] = {}
    progress = Progress(len(jobs))
    while True:
        ended = [i for i, sub in enumerate(submitted) if i not in outcomes and sub.done()]
        for i in ended:
            outcomes[i] = _outcome(submitted[i], jobs[i])
        running = sum(s.state == "RUNNING" for i, s in enumerate(submitted) if i not in outcomes)
        for i in ended:
            progress.ended(outcomes[i], running)
        if len(outcomes) == len(jobs):
            return [outcomes[i] for i in range(len(jobs))]
        progress.update(running)
        time.sleep(POLL_S)


def _outcome(sub: submitit.Job, job: CellJob) -> CellOutcome:
    try:
        return sub.result()
    except Exception as exc:  # killed, out of time past its requeues, or a bug in the cell
        return CellOutcome(job.label, f"job {sub.job_id} failed ({one_line(exc)}); log {sub.paths.stderr}")
