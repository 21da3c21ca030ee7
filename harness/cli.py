"""The `harness` command: `models` (the registry), `tasks` (our offline tasks) and `run` (prune -> evaluate)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tabulate import tabulate

from harness.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Prune with tamp, evaluate through lmms-eval.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the short model names")
    sub.add_parser("tasks", help="list the offline tasks shipped in tasks/")
    r = sub.add_parser("run", help="prune (or reuse a cached artifact) and evaluate on lmms-eval tasks")
    r.add_argument("--model", required=True, help="a name from `harness models`, a local checkpoint dir or an HF id")
    r.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero, in [0, 1); 0 = dense")
    r.add_argument("--method", default="tamp", help="a tamp preset (tamp, wanda, sparsegpt, owl, ..., dense)")
    r.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    r.add_argument("--tasks", default=None, help="comma-separated lmms-eval tasks (default: the model's)")
    r.add_argument("--limit", type=int, default=None, help="evaluate the first N documents of each task")
    r.add_argument("--calib", default=None, help="LLaVA .json[:IMAGE_DIR] | text:FILE[,FILE...] | synthetic")
    r.add_argument("--nsamples", type=int, default=None, help="calibration samples (default: the model's)")
    r.add_argument("--seqlen", type=int, default=None, help="tokens per text calibration segment")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any tamp PruneConfig field, as in `tamp prune --set`")
    r.add_argument("--output", type=Path, default=Path("results/runs"), help="where run records go")
    r.add_argument("--artifacts", type=Path, default=Path("results/artifacts"), help="the pruned-artifact cache")
    r.add_argument("--gpus", type=int, default=1, help="N > 1: evaluate data-parallel via `accelerate launch`")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (pruning and evaluation)")
    r.add_argument("--dtype", default="auto", help="dtype tamp loads the model in: auto, float32, bfloat16, float16")
    r.add_argument("--force", action="store_true", help="re-evaluate tasks that already have a run record")
    r.add_argument("--max-empty-fraction", type=float, default=0.5,
                   help="fail when more than this fraction of a task's answers is empty (default 0.5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        from harness.registry import MODELS

        rows = [(s.name, s.source if not s.source.startswith("tiny-") else "built offline by tamp", s.family,
                 s.wrapper, s.calib or "(pass --calib)", ", ".join(s.tasks)) for s in MODELS.values()]
        print(tabulate(rows, headers=["name", "source", "family", "lmms-eval wrapper", "calibration", "default tasks"],
                       tablefmt="github"))
        return 0
    if args.command == "tasks":
        from harness.tasks_catalog import tasks_dir

        rows = [(y.stem, str(y.relative_to(tasks_dir()))) for y in sorted(tasks_dir().rglob("*.yaml"))]
        print(tabulate(rows, headers=["task", "yaml"], tablefmt="github"))
        print("\nAll of lmms-eval's tasks: python -m lmms_eval tasks list")
        return 0
    if args.command == "run":
        from harness.run import RunOptions, run

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _quiet_loguru(os.environ.get("HARNESS_LOG_LEVEL", "WARNING"))
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        opts = RunOptions(model=args.model, sparsity=args.sparsity, method=args.method, pattern=args.pattern,
                          tasks=tasks, limit=args.limit, calib=args.calib, nsamples=args.nsamples,
                          seqlen=args.seqlen, seed=args.seed, overrides=args.overrides, output=args.output,
                          artifacts=args.artifacts, gpus=args.gpus, device=args.device, dtype=args.dtype,
                          force=args.force, max_empty_fraction=args.max_empty_fraction)
        rows = run(opts)
        print()
        print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4f"))
        return 0
    raise AssertionError(args.command)


def _quiet_loguru(level: str) -> None:
    """lmms-eval logs through loguru at DEBUG by default (thousands of task-index lines): keep warnings."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level=level)


if __name__ == "__main__":
    sys.exit(main())
