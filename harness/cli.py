"""The `harness` command: `models`, `tasks`, `methods`, `run` (prune -> evaluate), and the reports built from run records:
`table`, `plot`, `export`, plus `grid` / `sweep` (many runs, then all three reports)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.errors import HarnessError, check_output


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Prune with tamp, evaluate through lmms-eval.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the short model names")
    sub.add_parser("tasks", help="list the offline tasks shipped in tasks/")
    m = sub.add_parser("methods", help="list every registered method (the same as `tamp methods`)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    r = sub.add_parser("run", help="prune (or reuse a cached artifact) and evaluate on lmms-eval tasks")
    r.add_argument("--model", required=True, help="a name from `harness models`, a local checkpoint dir or an HF id")
    r.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero, in [0, 1); 0 = dense")
    r.add_argument("--method", default="tamp", help="a registered method (`harness methods` lists them)")
    r.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    r.add_argument("--tasks", default=None, help="comma-separated lmms-eval tasks (default: the model's)")
    r.add_argument("--limit", type=int, default=None, help="evaluate the first N documents of each task")
    r.add_argument("--calib", default=None, help="LLaVA .json[:IMAGE_DIR] | text:FILE[,FILE...] | synthetic | picture-qa")
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
    r.add_argument("--batch-size", type=int, default=None,
                   help="questions per generate call (default: chosen from the model and device; 8 on a CPU)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan (wrapper, calibration, tasks; cached? data present?) and run nothing")
    t = sub.add_parser("table", help="the paper's table from run records: methods x benchmarks + average")
    _runs_arg(t)
    t.add_argument("--model", default=None, help="only this model (the name its records are filed under)")
    t.add_argument("--sparsity", type=float, default=None, help="only this sparsity (dense rows always shown)")
    t.add_argument("--pattern", default=None, help="only this pattern: unstructured, 2:4, 4:8")
    t.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv"])
    t.add_argument("--relative", action="store_true", help="show each score as %% of the dense model's")
    t.add_argument("--cost", nargs="?", const="all", default=None, metavar="PARTS",
                   help="add the measured cost: flops, latency, decode, memory, weights (comma-separated; these five "
                   "when none named); also tokens (visual tokens kept), layers (visual tokens per decoder layer, "
                   "mean), encoder, projector (the vision side's FLOPs), throughput (questions per second)")
    t.add_argument("--out", type=Path, default=None, help="also write the table(s) to this file")
    pl = sub.add_parser("plot", help="sparsity-performance curves from run records, or per-layer allocations")
    _runs_arg(pl)
    pl.add_argument("--out", type=Path, required=True, help="FILE.png (FILE.svg is written too)")
    pl.add_argument("--model", default=None)
    pl.add_argument("--pattern", default=None)
    pl.add_argument("--x", choices=["sparsity", "tflops", "tokens"], default="sparsity",
                    help="x axis: sparsity (curves per method), measured prefill TFLOPs per sample (the cost axis) or "
                    "the visual tokens kept per sample (a token method's budgets on one line)")
    pl.add_argument("--allocation", type=Path, action="append", default=None, metavar="ARTIFACT",
                    help="plot per-layer sparsity of this artifact dir or pruning.json instead (repeat to compare)")
    e = sub.add_parser("export", help="write/merge the leaderboard CSV (one row per task metric)")
    _runs_arg(e)
    e.add_argument("--csv", type=Path, required=True, help="the leaderboard file (merged if it exists)")
    g = sub.add_parser("grid", help="run a grid file (grids/*.yaml) cell by cell, then write table, plot and CSV")
    g.add_argument("file", type=Path, help="the grid YAML, e.g. grids/table1.yaml")
    _grid_args(g)
    sw = sub.add_parser("sweep", help="one model, some methods, a range of sparsities (+ dense), then the reports")
    sw.add_argument("--model", required=True)
    sw.add_argument("--methods", default="magnitude,wanda,sparsegpt,owl,tamp", help="comma-separated registered methods")
    sw.add_argument("--sparsities", default="0.3,0.4,0.5,0.6,0.7", help="comma-separated, each in (0, 1)")
    sw.add_argument("--tasks", default=None, help="comma-separated tasks (default: the model's)")
    sw.add_argument("--pattern", default="unstructured")
    sw.add_argument("--calib", default=None)
    sw.add_argument("--nsamples", type=int, default=None)
    sw.add_argument("--seed", type=int, default=42)
    sw.add_argument("--seeds", default=None, metavar="N,N,...",
                    help="prune each calibrated cell once per seed (e.g. 0,1,2); tables show mean ± spread over seeds")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="a method parameter for every cell, e.g. --set fastv_keep=0.25 (repeatable)")
    sw.add_argument("--token-budgets", default=None, metavar="SHARE,...",
                    help="run each token method that takes the common budget once per share of visual tokens kept, "
                         "e.g. 0.333,0.222,0.111 (192/128/64 of 576); recorded, one table row per budget")
    sw.add_argument("--out-dir", type=Path, default=Path("results/sweeps"), help="where the table and plot go")
    sw.add_argument("--csv", type=Path, default=Path("results/leaderboard.csv"), help="the leaderboard to merge into")
    _grid_args(sw)
    return p


def _runs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=Path, default=Path("results/runs"), help="the run records folder")
    p.add_argument("--published", type=Path, default=None,
                   help="published numbers to show beside ours (default results/reference/published.csv)")


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan (cached? data present?) and run nothing")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N documents of each task")
    p.add_argument("--output", type=Path, default=Path("results/runs"), help="where run records go")
    p.add_argument("--artifacts", type=Path, default=Path("results/artifacts"), help="the pruned-artifact cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None,
                   help="questions per generate call (default: chosen from the model and device)")
    p.add_argument("--force", action="store_true", help="re-evaluate tasks that already have a run record")
    p.add_argument("--published", type=Path, default=None, help="published numbers (default results/reference/published.csv)")
    c = p.add_argument_group("where the cells run (defaults: the grid file's `executor:` block)")
    c.add_argument("--executor", default="local", metavar="{local,ray,slurm}",
                   help="local: one after another here (default); ray: Ray tasks; slurm: SLURM jobs through submitit")
    c.add_argument("--ray-address", dest="address", default=None,
                   help="the Ray cluster to join (default RAY_ADDRESS, else a local cluster)")
    c.add_argument("--cell-cpus", dest="cpus", type=int, default=None, help="CPUs per cell (default 1)")
    c.add_argument("--cell-gpus", dest="gpus_per_cell", type=int, default=None,
                   help="GPUs per cell (default --gpus; 0 with --device cpu)")
    c.add_argument("--partition", default=None, help="SLURM partition")
    c.add_argument("--time", type=int, default=None, help="SLURM minutes per job (default 1440; requeued past it)")
    c.add_argument("--array-parallelism", type=int, default=None, help="SLURM: at most this many cells at once")


def _names(text: str | None, what: str) -> list[str] | None:
    """A comma-separated option: None when not given; given but empty is refused (not taken as the default)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise HarnessError(f"--{what} is empty: name at least one, or leave --{what} out for the default")
    return names


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--{what} takes comma-separated numbers, got '{text}'") from None
    if not values:
        raise HarnessError(f"--{what} is empty")
    return values


def _seeds(text: str | None) -> list[int] | None:
    """--seeds: comma-separated integers, each a calibration draw of its own."""
    if text is None:
        return None
    from harness.grid import parse_seeds

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--seeds takes comma-separated integers, got '{text}'") from None
    return parse_seeds(values, "--seeds")


def main(argv: list[str] | None = None) -> int:
    from tamp.console import run_command

    args = _parser().parse_args(argv)
    left = "finished tasks are saved and a cached artifact is only ever complete: run the same command to resume"
    from tamp.atomic_write import DiskFull  # any of harness's writes (tables, CSV, grid reports) on a full disk

    return run_command(lambda: _dispatch(args), (HarnessError, DiskFull),
                       left if args.command in ("run", "grid", "sweep") else "nothing was written")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        from harness.model_specs import MODELS

        rows = [(s.name, s.source if not s.source.startswith("tiny-") else "built offline by tamp", s.family,
                 s.wrapper, s.calib or "(pass --calib)", ", ".join(s.tasks)) for s in MODELS.values()]
        print(tabulate(rows, headers=["name", "source", "family", "lmms-eval wrapper", "calibration", "default tasks"],
                       tablefmt="github"))
        return 0
    if args.command == "methods":
        from tamp.methods.listing import render

        print(render(as_json=args.json))
        return 0
    if args.command == "tasks":
        from harness.tasks_catalog import tasks_dir

        rows = [(y.stem, str(y.relative_to(tasks_dir()))) for y in sorted(tasks_dir().rglob("*.yaml"))]
        print(tabulate(rows, headers=["task", "yaml"], tablefmt="github"))
        print("\nAll of lmms-eval's tasks: python -m lmms_eval tasks list")
        return 0
    if args.command == "run":
        _precheck(args.overrides)  # a typo is refused before torch, transformers and lmms-eval load
        from harness.evaluate import quiet_loguru
        from harness.run import RunOptions, run

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        quiet_loguru()
        if args.dry_run:
            return _run_plan(args)
        opts = RunOptions(model=args.model, sparsity=args.sparsity, method=args.method, pattern=args.pattern,
                          tasks=_names(args.tasks, "tasks"), limit=args.limit, calib=args.calib, nsamples=args.nsamples,
                          seqlen=args.seqlen, seed=args.seed, overrides=args.overrides, output=args.output,
                          artifacts=args.artifacts, gpus=args.gpus, device=args.device, dtype=args.dtype,
                          force=args.force, max_empty_fraction=args.max_empty_fraction,
                          batch_size=args.batch_size)
        from harness.executors.progress import cell_progress

        label = f"{args.model} {args.method}" + (f" {args.sparsity:.0%}" if args.sparsity is not None else "")
        with cell_progress(label) as cell:  # one bar for the run, the phase on one line
            rows = run(opts, started=cell.start)
        print()
        print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4f"))
        return 0
    if args.command in ("table", "plot", "export"):
        return _reports(args)
    if args.command in ("grid", "sweep"):
        return _grid(args)
    raise AssertionError(args.command)


def _reports(args: argparse.Namespace) -> int:
    if args.command == "export":
        check_output(args.csv, "--csv", directory=False)
    elif args.out is not None:
        check_output(args.out, "--out", directory=False)
    if args.command == "plot" and args.allocation:
        from harness.plots import plot_allocation

        for path in plot_allocation(args.allocation, args.out):
            print(f"wrote {path}")
        return 0
    from harness.collect import headline_frame, load_published

    if args.command == "export":
        from harness.leaderboard import export

        total, new = export(args.runs, args.csv)
        print(f"wrote {args.csv}: {total} rows ({new} from the records in {args.runs})")
        return 0
    df, pub = headline_frame(args.runs), load_published(args.published)
    if df.empty:
        raise HarnessError(f"no finished run records under {args.runs} (run `harness run` first)")
    if args.command == "table":
        from harness.cost_columns import parse_parts
        from harness.tables import build_tables, render

        cost = parse_parts(args.cost) if args.cost is not None else ()
        tables = build_tables(df, pub, model=args.model, sparsity=args.sparsity, pattern=args.pattern,
                              relative=args.relative, cost=cost)
        if not tables:
            raise HarnessError("no run records match --model/--sparsity/--pattern; `harness table` alone shows all")
        text = render(tables, args.format)
        print(text)
        if args.out:
            from tamp.atomic_write import write_text_atomic

            write_text_atomic(args.out, text)
            print(f"wrote {args.out}")
        return 0
    from harness.plots import plot_cost, plot_curves

    axis = {"tflops": "prefill_tflops", "tokens": "visual_tokens_kept"}.get(args.x)
    paths = plot_cost(df, args.out, model=args.model, x=axis) if axis else \
        plot_curves(df, pub, args.out, model=args.model, pattern=args.pattern)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _precheck(overrides: list[str]) -> None:
    """`--set` items checked (syntax, field, type) before the ML stack is imported."""
    from harness.errors import tamp_errors
    from tamp.overrides import precheck

    with tamp_errors():
        precheck(overrides)


def _grid(args: argparse.Namespace) -> int:
    if args.command == "sweep":
        _precheck(args.overrides)
    from harness.evaluate import quiet_loguru
    from harness.executors import check_available, executor_options
    from harness.grid import Settings, load_grid, run_grid, sweep_grid, write_reports

    if args.command == "grid":
        grid = load_grid(args.file)
    else:
        grid = sweep_grid(args.model, _names(args.methods, "methods"), _floats(args.sparsities, "sparsities"),
                          _names(args.tasks, "tasks"), args.pattern, args.out_dir, args.csv, calib=args.calib,
                          nsamples=args.nsamples, seed=args.seed, overrides=list(args.overrides),
                          seeds=_seeds(args.seeds),
                          budgets=None if args.token_budgets is None else _floats(args.token_budgets, "token-budgets"))
    executor = executor_options(args.executor, grid.executor, address=args.address, cpus=args.cpus,
                                gpus=args.gpus_per_cell, partition=args.partition, time=args.time,
                                array_parallelism=args.array_parallelism)
    settings = Settings(output=args.output, artifacts=args.artifacts, limit=args.limit, device=args.device,
                        dtype=args.dtype, gpus=args.gpus, force=args.force, executor=executor,
                        batch_size=args.batch_size)
    quiet_loguru()
    if args.dry_run:
        _print_plan(grid, settings)
        print(f"executor: {executor.kind}")
        return 0
    check_available(executor)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    failed = run_grid(grid, settings)
    for path in write_reports(grid, settings, args.published):
        print(f"wrote {path}")
    if failed:
        print(f"\n{len(failed)} cell(s) failed (the others are done and cached; fix and run again to resume):",
              file=sys.stderr)
        by_reason: dict[str, list[str]] = {}  # cells failing for one reason (data a sweep shares): one line
        for cell, why in failed:
            by_reason.setdefault(why, []).append(cell.label)
        for why, labels in by_reason.items():
            print(f"  - {', '.join(labels)}: {why}", file=sys.stderr)
        return 1
    return 0


def _print_plan(grid: Any, settings: Any) -> None:
    """A dry run's plan: the cells, the data each needs and whether it is present, what is missing."""
    from harness.grid import dry_run

    plan = dry_run(grid, settings)
    print(f"plan for {grid.name}: {len(plan.cells)} cells, {plan.evaluations} task evaluations, "
          f"{plan.cached} already cached (nothing is run in a dry run)\n")
    print(tabulate(plan.cells, headers="keys", tablefmt="github"))
    print()
    print(tabulate(plan.data, headers="keys", tablefmt="github"))
    print("\nmissing before it can run:" if plan.missing else "\nall data present")
    for line in plan.missing:
        print(f"  - {line}")
    print(f"outputs: {', '.join(str(p) for p in grid.outputs.values()) or '(none)'}")


def _run_plan(args: argparse.Namespace) -> int:
    """`harness run --dry-run`: the run's one cell planned as a grid's (the same resolution of model, recipe,
    wrapper, calibration and tasks), loading no model and writing nothing."""
    from harness.errors import tamp_errors
    from harness.grid import Grid, Settings
    from tamp.recipe import DENSE, compose

    with tamp_errors():
        weight, _, _ = compose(args.method)
    if args.sparsity is None and weight != DENSE:
        raise HarnessError("--sparsity is required (0 evaluates the dense model)")
    grid = Grid(name=f"run: {args.model}", models=[args.model], methods=[args.method],
                sparsities=[args.sparsity or 0.0], tasks=_names(args.tasks, "tasks"), pattern=args.pattern,
                calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                overrides=list(args.overrides))
    settings = Settings(output=args.output, artifacts=args.artifacts, limit=args.limit, device=args.device,
                        dtype=args.dtype, gpus=args.gpus, force=args.force, batch_size=args.batch_size)
    _print_plan(grid, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
