"""`--executor local` (the default): the cells one after another in this process, as `harness grid` always did."""

from __future__ import annotations

from harness.executors.cells import CellJob, CellOutcome, execute


def run_local(jobs: list[CellJob]) -> list[CellOutcome]:
    outcomes = []
    for i, job in enumerate(jobs, 1):
        print(f"\n=== [{i}/{len(jobs)}] {job.label} ===", flush=True)
        outcome = execute(job)
        if outcome.error is not None:
            print(f"error: {job.label}: {outcome.error}", flush=True)
        outcomes.append(outcome)
    return outcomes
