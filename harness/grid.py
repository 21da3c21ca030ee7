"""Experiment grids (grids/*.yaml, `make reproduce-table1`, `make sweep`): plan, run through `harness run`, report.

A grid is models x methods x sparsities on a list of tasks. Running it calls `harness run` once per
cell, so every cell is resumable (finished tasks are skipped, cached artifacts reused); a failing cell
is reported and the others still run. The cells run here one after another, or as jobs of a Ray or SLURM
cluster (harness/executors/). Once they have all ended, the table, the plot and the leaderboard CSV are
written from the records of the grid's own cells. A dry run loads no model and writes nothing: it
lists every cell, whether its artifact and results are cached, and what data must be present.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.cache import artifact_key, calibration_fingerprint, valid_artifact
from harness.collect import headline_frame, load_published
from harness.errors import HarnessError, check_output, tamp_errors
from harness.executors import ExecutorOptions, parse_block, run_jobs
from harness.executors.cells import CellJob, shipped_env
from harness.leaderboard import export
from harness.model_specs import expand_calib, resolve_model
from harness.records import load_record, record_path, with_budget
from harness.run import RunOptions, finished, missing_data, run_recipe, token_budget, token_problem
from harness.tables import build_tables, render
from harness.tasks_catalog import LOCAL_BUILDERS, dataset_paths, in_local_cache, task_manager, validate_tasks
from tamp.atomic_write import write_text_atomic
from tamp.config import check_sparsity
from tamp.errors import join_problems
from tamp.methods.base import TOKEN_BUDGET
from tamp.methods.registry import get
from tamp.models.loading import hf_cache_problem
from tamp.models.sources import TRAINED_PREFIX
from tamp.params import RUN_PARAMS

OUTPUT_KEYS = {"table", "plot", "csv"}


@dataclass
class Grid:
    name: str
    models: list[str]
    methods: list[str]
    sparsities: list[float]
    tasks: list[str] | None = None  # None: each model's default tasks
    pattern: str = "unstructured"
    calib: str | None = None
    nsamples: int | None = None
    seqlen: int | None = None
    seed: int = 42
    overrides: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    description: str = ""
    executor: dict[str, Any] = field(default_factory=dict)  # where cells run (the `executor:` block), not what
    seeds: list[int] | None = None  # each calibrated cell pruned once per seed (the others keep `seed`)
    # each cell whose token method takes the common token budget, once per budget (`harness sweep --token-budgets`)
    budgets: list[float] | None = None


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    sparsity: float
    seed: int | None = None  # a calibration seed of the grid's `seeds` (None: the grid's `seed`)
    budget: float | None = None  # a token budget of the grid's `budgets` (None: the method's own parameters)

    @property
    def label(self) -> str:
        return f"{self.model} {self.method} {self.sparsity:.0%}" + (f" seed {self.seed}" if self.seed is not None else "") \
            + (f" budget {self.budget:g}" if self.budget is not None else "")


def parse_seeds(value: Any, where: str) -> list[int]:
    """A list of distinct integer seeds (a grid file's `seeds:`, `--seeds 0,1,2`)."""
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise HarnessError(f"{where}: seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    if len(set(items)) != len(items):
        raise HarnessError(f"{where}: seeds must differ, got {items}")
    return [int(v) for v in items]


@dataclass(frozen=True)
class Key:
    """One key of a grid file: the type of its value, said as the error says it, and whether it may be left out.

    kinds: text, int, texts (a list of strings, or one), numbers (a list of numbers, or one), ints (a list of
    integers), mapping (checked by its own reader)."""

    kind: str
    required: bool = False


# the grid file's schema: every key, its type; load_grid checks each value against it before any use
GRID_SCHEMA: dict[str, Key] = {
    "name": Key("text"), "description": Key("text"), "models": Key("texts", True), "methods": Key("texts", True),
    "sparsities": Key("numbers", True), "pattern": Key("text"), "tasks": Key("texts"), "calib": Key("text"),
    "nsamples": Key("int"), "seqlen": Key("int"), "seed": Key("int"), "seeds": Key("ints"),
    "overrides": Key("texts"), "outputs": Key("mapping"), "executor": Key("mapping"),
    "token_budgets": Key("numbers"),  # as `harness sweep --token-budgets`: each budget-taking token cell once per share
}
GRID_KEYS = set(GRID_SCHEMA)
_KIND_TEXT = {"text": "a string", "int": "an integer", "texts": "a non-empty list of strings",
              "numbers": "a non-empty list of numbers", "ints": "a non-empty list of integers", "mapping": "a mapping"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(key: str, value: Any, path: Path) -> Any:
    """`value` of grid key `key` as its schema types it (a scalar where a list is expected is a list of one);
    a value of the wrong type is one line naming the key, what it got and what it takes."""
    kind = GRID_SCHEMA[key].kind
    if key == "pattern" and _is_int(value):  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
        raise HarnessError(f"{path}: pattern {value} is a number: YAML reads an unquoted N:M such as 2:4 as a "
                           "base-60 number; quote it, e.g. pattern: '2:4'")
    items = value if isinstance(value, list) else [value]
    ok = {"text": lambda: isinstance(value, str), "int": lambda: _is_int(value),
          "texts": lambda: bool(items) and all(isinstance(v, str) for v in items),
          "numbers": lambda: bool(items) and all(_is_int(v) or isinstance(v, float) for v in items),
          "ints": lambda: bool(items) and all(_is_int(v) for v in items),
          "mapping": lambda: isinstance(value, dict)}[kind]()
    if not ok:
        if kind in ("texts", "numbers", "ints") and not items:
            raise HarnessError(f"{path}: '{key}' must be a non-empty list")
        bad = next((v for v in items if not (isinstance(v, str) if kind == "texts" else
                                              _is_int(v) or (kind == "numbers" and isinstance(v, float)))), value)
        hint = " in [0, 1)" if key == "sparsities" else ""
        raise HarnessError(f"{path}: {key} must be {_KIND_TEXT[kind]}{hint}, got {bad!r}" +
                           ("; quote it if it is meant as text" if kind in ("text", "texts") else ""))
    if kind in ("texts", "numbers", "ints"):
        repeated = next((v for i, v in enumerate(items) if v in items[:i]), None)
        if repeated is not None:  # a repeat would be planned twice and run once
            raise HarnessError(f"{path}: {key} lists {repeated!r} more than once; each is run once, remove the repeat")
        return list(items)
    return value


def _read(path: Path) -> Any:
    """The grid file's YAML, or one line saying why it cannot be read."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"grid file not found: {path}") from None
    except IsADirectoryError:
        raise HarnessError(f"{path} is a folder; give a grid YAML file (e.g. grids/table1.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read grid file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def load_grid(path: Path) -> Grid:
    """Read and validate a grid YAML against GRID_SCHEMA (unknown keys are errors: a typo must not silently
    change the grid; a value of the wrong type is refused here, not deep inside a run)."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: a grid is a YAML mapping with models, methods, sparsities, tasks")
    unknown = sorted(map(str, set(data) - GRID_KEYS))
    if unknown:
        raise HarnessError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(GRID_KEYS))}")
    for key, spec in GRID_SCHEMA.items():
        if spec.required and key not in data:
            raise HarnessError(f"{path}: '{key}' is required")
    outputs = data.get("outputs") or {}
    if not isinstance(outputs, dict) or set(outputs) - OUTPUT_KEYS or not all(isinstance(v, str) for v in outputs.values()):
        raise HarnessError(f"{path}: 'outputs' maps {', '.join(sorted(OUTPUT_KEYS))} to file names")
    if data.get("seeds") is not None:
        parse_seeds(data["seeds"], str(path))
    v = {key: _typed(key, value, path) for key, value in data.items()
         if value is not None and key not in ("outputs", "executor", "seeds")}
    for param in RUN_PARAMS:  # nsamples: 0 is refused here, never replaced by the model's default
        problem = param.problem(v[param.name]) if param.name in v and param.check is not None else None
        if problem:
            raise HarnessError(f"{path}: {problem.replace('--' + param.name, param.name)}")
    sparsities = [float(s) for s in v["sparsities"]]
    with tamp_errors():
        for value in sparsities:
            check_sparsity(value, f"{path}: each of sparsities")
    return Grid(
        name=v.get("name") or path.stem, models=v["models"], methods=v["methods"], sparsities=sparsities,
        tasks=v.get("tasks"), pattern=v.get("pattern", "unstructured"), calib=expand_calib(v.get("calib")),
        nsamples=v.get("nsamples"), seqlen=v.get("seqlen"), seed=v.get("seed", 42), overrides=v.get("overrides", []),
        outputs={k: Path(p) for k, p in outputs.items()}, description=v.get("description", ""),
        executor=parse_block(data.get("executor"), str(path)),
        seeds=parse_seeds(data["seeds"], str(path)) if data.get("seeds") is not None else None,
        budgets=check_budgets([float(b) for b in v["token_budgets"]], v.get("overrides", []), f"{path}: token_budgets")
        if "token_budgets" in v else None)


def _cell_methods(method: str, overrides: dict[str, Any]) -> set[str]:
    """The registered methods a cell of `method` runs when it prunes: its token method, its quantizer (its registered
    name, without the grid), its weight method and that method's parts (as the grid's overrides may set them)."""
    from tamp.recipe import compose  # torch: only a run or its planning needs it

    weight, token, quant = compose(method)
    chosen = get(weight)
    parts = {part: overrides.get(part, name) for part, name in getattr(chosen, "composition", dict)().items()}
    return {weight, *parts.values(), *([token] if token else []), *([quant.partition("-")[0]] if quant else [])}


def _check_overrides(grid: Grid) -> dict[str, Any]:
    """The grid's overrides, typed; a method parameter must belong to a method some cell of the grid runs (a typo
    or a forgotten method must not silently run the grid without it)."""
    from tamp.recipe import method_params, parse_overrides  # torch: only a run or its planning needs it

    with tamp_errors():
        values = parse_overrides(grid.overrides)
        in_grid = set().union(*(_cell_methods(m, values) for m in grid.methods))
        owners = method_params()
    for name in values:
        if name in owners and not set(owners[name][1]) & in_grid:
            from tamp.recipe import split_method, token_params

            owner = owners[name][1][0]
            weight = next((w for w, _ in map(split_method, grid.methods) if w != "dense"), None)
            example = f"{weight}+{owner}" if weight and name in token_params() else owner
            raise HarnessError(f"--set {name}: a parameter of {owner}, which no method of this grid uses; add it, "
                               f"e.g. {example}")
    return values


def cells(grid: Grid) -> list[Cell]:
    """Every (model, method, sparsity); dense, and a token method or quantizer alone (it keeps every weight), is one
    cell per model whatever the sparsities. With `seeds`, a cell that draws calibration data is one cell per seed (a
    pruning of its own); a cell that draws none would prune the same weights each time: one cell, the grid's seed."""
    from tamp.recipe import DENSE, build_recipe, compose  # torch: only planning needs it

    values = _check_overrides(grid)
    out: list[Cell] = []
    for model, method, sparsity in itertools.product(grid.models, grid.methods, grid.sparsities):
        with tamp_errors():
            weight, token, quant = compose(method)
        # what is left of the method at sparsity 0: its quantizer and token method, else the dense model
        unpruned = "+".join(part for part in (quant, token) if part) or DENSE
        cell = Cell(model, unpruned, 0.0) if weight == DENSE or sparsity == 0 else Cell(model, method, sparsity)
        todo = [cell]
        if grid.seeds:
            with tamp_errors():
                recipe = build_recipe(cell.method, cell.sparsity, pattern=grid.pattern if cell.sparsity else
                                      "unstructured", overrides={k: v for k, v in values.items()
                                                                 if k in _run_fields(cell.method, values)})
            if recipe.needs_calibration:
                todo = [replace(cell, seed=seed) for seed in grid.seeds]
        if grid.budgets and _takes_budget(token):
            todo = [replace(c, budget=budget) for c in todo for budget in grid.budgets]
        out += [c for c in todo if c not in out]
    return out


def _takes_budget(token: str | None) -> bool:
    """Whether a cell's token method maps the common token budget (a method that sets no token count, AIM's or
    YOPO's schedule, runs once at its own parameters)."""
    return token is not None and getattr(get(token), "budget", None) is not None


def check_budgets(budgets: list[float], overrides: list[str], where: str = "--token-budgets") -> list[float]:
    """`--token-budgets` (or a grid file's `token_budgets:`, `where`): distinct shares in (0, 1], and no
    `--set token_budget` (a grid's `overrides`) beside them."""
    for value in budgets:
        problem = TOKEN_BUDGET.problem(value)
        if problem:
            raise HarnessError(f"{where}: {problem}")
    if len(set(budgets)) != len(budgets):
        raise HarnessError(f"{where}: the budgets must differ, got {budgets}")
    if any(o.split("=", 1)[0].strip() == TOKEN_BUDGET.name for o in overrides):
        raise HarnessError(f"{where} and token_budget in the overrides both set the token budget; give one or the "
                           "other" if where != "--token-budgets" else
                           "--token-budgets and --set token_budget both set the token budget; give one or the other")
    return budgets


def _run_fields(method: str, values: dict[str, Any]) -> set[str]:
    """The overrides a cell of `method` takes: its methods' parameters and every run field (as `run_options`)."""
    from tamp.recipe import method_params

    owners = method_params()
    runs = _cell_methods(method, values)
    return {name for name in values if name not in owners or set(owners[name][1]) & runs}


@dataclass
class Settings:
    """Where and how a grid runs (command-line options, not part of the experiment)."""

    output: Path = Path("results/runs")
    artifacts: Path = Path("results/artifacts")
    limit: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    gpus: int = 1
    force: bool = False
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    batch_size: int | None = None  # questions per generate call (None: chosen per cell from its model and device)


def run_options(grid: Grid, cell: Cell, settings: Settings) -> Any:
    """One cell's `harness run`. A grid's overrides apply to the cells whose methods take them: a method's
    parameters go only to the cells that run it (an unpruned cell runs no weight method), run fields to all. The
    grid's pattern is for its pruned cells; the dense and token-only cells keep every weight."""
    from tamp.recipe import method_params  # torch: only a run or its planning needs it

    values = _check_overrides(grid)
    with tamp_errors():
        runs = _cell_methods(cell.method, values)
        owners = method_params()
    overrides = [o for o in grid.overrides
                 if (name := o.split("=", 1)[0].strip()) not in owners or set(owners[name][1]) & runs]
    overrides += [f"token_budget={cell.budget!r}"] if cell.budget is not None else []
    return RunOptions(model=cell.model, sparsity=cell.sparsity, method=cell.method,
                      pattern=grid.pattern if cell.sparsity else "unstructured",
                      tasks=grid.tasks, limit=settings.limit, calib=grid.calib, nsamples=grid.nsamples,
                      seqlen=grid.seqlen, seed=grid.seed if cell.seed is None else cell.seed, overrides=overrides,
                      output=settings.output,
                      artifacts=settings.artifacts, gpus=settings.gpus, device=settings.device, dtype=settings.dtype,
                      force=settings.force, batch_size=settings.batch_size)


# ---------------------------------------------------------------- dry run


def _model_status(spec: Any) -> str:
    if spec.source.startswith(TRAINED_PREFIX):
        return "shipped with tamp (tamp/testing/trained/)"
    if spec.source.startswith("tiny-"):
        return "built offline on first use"
    if Path(spec.source).is_dir():
        return "local directory"

    problem = hf_cache_problem(spec.source, None, "a dry run fetches nothing")
    return "in the HF cache" if problem is None else f"MISSING: {problem}"


def _calibration_status(recipe: Any) -> tuple[str, bool]:
    """(what the calibration needs, whether it is all present)."""
    from tamp.calibration.loader import calibration_problems

    cfg = recipe.weight
    if not recipe.needs_calibration:
        return "none needed", True
    problems = calibration_problems(cfg.calib, cfg.nsamples, cfg.seed)
    if problems:
        return "MISSING: " + "; ".join(problems), False
    return f"present ({cfg.calib})", True


def _dataset_status(task: str, tm: Any) -> str:

    missing = sorted({p for p in dataset_paths(task, tm).values()
                      if p not in LOCAL_BUILDERS and not Path(p).exists() and not in_local_cache(p)})
    if missing:
        return "MISSING: " + "; ".join(f"`hf download --repo-type dataset {p}`" for p in missing)
    return "present"


@dataclass
class DryRun:
    """The plan: a row per cell, a row per piece of data, the missing pieces in the order to fetch them."""

    cells: list[dict[str, str]]
    data: list[dict[str, str]]
    missing: list[str]
    evaluations: int
    cached: int


def dry_run(grid: Grid, settings: Settings) -> DryRun:
    """What running the grid would do, loading no model and writing nothing."""
    cell_rows: list[dict[str, str]] = []
    data: dict[tuple[str, str], str] = {}
    evaluations = cached = 0
    for cell in cells(grid):
        opts = run_options(grid, cell, settings)
        spec = resolve_model(cell.model)
        recipe = run_recipe(opts, spec)
        cfg, method = recipe.weight, recipe.name
        data[("model weights", spec.source)] = _model_status(spec)
        refused = token_problem(spec, recipe)
        if refused is not None:
            data[("method", f"{method} on {spec.name}")] = f"REFUSED: {refused}"
        calib_status, calib_ok = _calibration_status(recipe)
        if recipe.needs_calibration:
            data[("calibration", str(cfg.calib))] = calib_status
        key = None
        if calib_ok:
            fp = calibration_fingerprint(cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed) \
                if recipe.needs_calibration else None
            key, _ = artifact_key(spec, recipe, fp)
            todo = "to prune" if cfg.sparsity else "to quantize" if recipe.quant else "to save (unpruned copy)"
            artifact = f"cached ({key})" if valid_artifact(settings.artifacts / key, key) else f"{todo} ({key})"
        else:
            artifact = "to prune, once the calibration data is present"
        tm = task_manager(spec.wrapper)
        states: dict[str, list[str]] = {}
        for task in grid.tasks or list(spec.tasks):
            evaluations += 1
            if task not in tm.all_tasks:
                data[("task", task)] = "MISSING: unknown task (`python -m lmms_eval tasks list`)"
                states.setdefault("unknown task", []).append(task)
                continue
            data[("dataset", task)] = _dataset_status(task, tm)
            rec = load_record(record_path(settings.output, spec.name, method, cfg.sparsity, cfg.pattern,
                                          task, settings.limit, cfg.seed, token_budget(recipe)))
            if rec is None:
                state = "to evaluate"
            elif key is None or rec.get("artifact_key") == key:
                state = "cached"
            else:
                state = "stale (made from another artifact; --force)"
            cached += state == "cached"
            states.setdefault(state, []).append(task)
        if len(states) == 1:
            summary = f"{next(iter(states))}: all {len(next(iter(states.values())))}"
        else:
            summary = "; ".join(f"{state}: {len(ts)}" + ("" if state == "cached" else f" ({', '.join(ts)})")
                                for state, ts in states.items())
        cell_rows.append({"model": spec.name, "wrapper": spec.wrapper, "method": with_budget(method, token_budget(recipe)),
                          "sparsity": f"{cfg.sparsity:.2f}",
                          "pattern": cfg.pattern, **({"seed": str(cfg.seed)} if grid.seeds else {}),
                          "artifact": artifact, "results": summary})
    data_rows = [{"what": what, "name": name, "status": status} for (what, name), status in data.items()]
    missing = [f"{r['what']} {r['name']}: {r['status'].split(': ', 1)[1]}" for r in data_rows
               if r["status"].startswith(("MISSING", "REFUSED"))]
    return DryRun(cell_rows, data_rows, missing, evaluations, cached)


# ---------------------------------------------------------------- run + report


def validate(grid: Grid, settings: Settings) -> None:
    """Typos (model, method, task, --set field) fail before anything runs; missing data fails per cell later."""

    check_output(settings.output, "--output", directory=True)
    check_output(settings.artifacts, "--artifacts", directory=True)
    for what, path in grid.outputs.items():
        check_output(path, f"the grid's {what} output", directory=False)
    refused = []
    for cell in cells(grid):
        spec = resolve_model(cell.model)
        problem = token_problem(spec, run_recipe(run_options(grid, cell, settings), spec))
        if problem is not None and problem not in refused:
            refused.append(problem)
        validate_tasks(list(grid.tasks or spec.tasks), task_manager(spec.wrapper))
    if refused:  # a method the model cannot run fails before anything runs, not as a failed cell at the end
        raise HarnessError(join_problems(refused))


MISSING_DATA = "not run: its data is missing (listed above)"


def missing_by_cell(grid: Grid, settings: Settings, todo: list[Cell]) -> dict[str, list[str]]:
    """Cell label -> the data it needs that is not here (harness run's own check), each distinct draw and task
    list checked once: the cells of a sweep share their data, so a missing piece is one line, not one per cell."""
    checked: dict[tuple[Any, ...], list[str]] = {}
    out: dict[str, list[str]] = {}
    for cell in todo:
        opts = run_options(grid, cell, settings)
        spec = resolve_model(opts.model)
        recipe = run_recipe(opts, spec)
        tasks = list(dict.fromkeys(opts.tasks or spec.tasks))
        cfg = recipe.weight
        draw = (cfg.calib, cfg.nsamples, cfg.seed) if recipe.needs_calibration else None
        key = (spec.name, draw, tuple(tasks))
        if key not in checked:
            checked[key] = missing_data(spec, recipe, tasks, task_manager(spec.wrapper))
        out[cell.label] = checked[key]
    return out


def _report_missing(missing: dict[str, list[str]], cells_total: int) -> None:
    lines = list(dict.fromkeys(line for found in missing.values() for line in found))
    if lines:
        blocked = sum(bool(found) for found in missing.values())
        print(f"\nmissing data: {blocked} of {cells_total} cell(s) cannot run until it is here (the others run):",
              file=sys.stderr, flush=True)
        for line in lines:
            print(f"  - {line}", file=sys.stderr, flush=True)


def run_grid(grid: Grid, settings: Settings) -> list[tuple[Cell, str]]:
    """Run every cell (here, or as cluster jobs); returns the failed cells with their one-line reasons once every
    cell has ended. Here, the data every cell needs is checked first and what is missing printed once; the cells
    it blocks are not run. (A cluster's driver may not see a compute node's data: there each cell checks its own.)"""

    validate(grid, settings)
    todo = cells(grid)
    if settings.executor.kind == "local":
        missing = missing_by_cell(grid, settings, todo)
        _report_missing(missing, len(todo))
        ready = [cell for cell in todo if not missing[cell.label]]
        jobs = [CellJob(cell.label, run_options(grid, cell, settings)) for cell in ready]
        outcomes = dict(zip([c.label for c in ready], run_jobs(jobs, settings.executor, settings.gpus,
                                                                 settings.output)))
        return [(cell, MISSING_DATA if missing[cell.label] else outcomes[cell.label].error) for cell in todo
                if missing[cell.label] or outcomes[cell.label].error is not None]
    # cluster jobs: absolute paths (a worker starts elsewhere), the driver's command in the records, and the
    # cells with every record already written are not submitted at all
    where = replace(settings, output=settings.output.resolve(), artifacts=settings.artifacts.resolve())
    jobs, sent = [], []
    for cell in todo:
        opts = run_options(grid, cell, where)
        opts.command = list(sys.argv)
        if not finished(opts):
            jobs.append(CellJob(cell.label, opts, shipped_env()))
            sent.append(cell)
    print(f"{grid.name}: {len(todo)} cell(s), {len(todo) - len(jobs)} finished already, {len(jobs)} to run "
          f"(--executor {settings.executor.kind})", flush=True)
    outcomes = run_jobs(jobs, settings.executor, settings.gpus, where.output / "logs")
    return [(cell, o.error) for cell, o in zip(sent, outcomes) if o.error is not None]


def grid_frame(grid: Grid, settings: Settings) -> Any:
    """The headline rows of the grid's own cells (other runs in the same folder stay out of its table)."""

    df = headline_frame(settings.output)
    names = {resolve_model(m).name for m in grid.models}
    wanted: dict[tuple[str, float], set[int] | None] = {}
    for c in cells(grid):  # a seeded cell: only the records of the grid's seeds
        seeds = wanted.setdefault((with_budget(c.method, c.budget), round(c.sparsity, 4)),
                                  set() if c.seed is not None else None)
        if seeds is not None and c.seed is not None:
            seeds.add(c.seed)
    keep = [m in names and (meth, round(s, 4)) in wanted and (meth == "dense" or p == grid.pattern)
            and lim == (settings.limit or 0) and (grid.tasks is None or t in grid.tasks)
            and (wanted[(meth, round(s, 4))] is None or seed in wanted[(meth, round(s, 4))])
            for m, meth, s, p, lim, t, seed in zip(df["model"], df["method"], df["sparsity"], df["pattern"],
                                                  df["limit"], df["task"], df["seed"])]
    return df[keep]


def write_reports(grid: Grid, settings: Settings, published: Path | None = None) -> list[Path]:
    """Table (scores + % of dense, markdown), plot (PNG + SVG) and the merged leaderboard CSV. Where the records
    carry the cost axis, the table gets its prefill FLOPs column and a second plot (`<plot>_tflops.png`) puts accuracy
    against prefill FLOPs (weight methods, token methods and compositions on one chart). Only the FLOPs: they are
    the same on every machine, so a re-run writes the same table; latency, decoding speed and memory are
    `harness table --cost`'s."""
    from harness.plots import cost_varies, plot_curves, plot_tflops

    df = grid_frame(grid, settings) if settings.output.is_dir() else None
    if df is None or df.empty:
        print("no finished cells yet: no table, plot or CSV written")
        return []
    pub = load_published(published)
    written: list[Path] = []
    cost = bool(df["prefill_tflops"].notna().any())
    if "table" in grid.outputs:
        header = f"# {grid.name}\n\n" + (f"{grid.description.strip()}\n\n" if grid.description else "")
        text = header + render(build_tables(df, pub, pattern=grid.pattern, cost=("flops",) if cost else False)) + "\n" + \
            render(build_tables(df, pub, pattern=grid.pattern, relative=True))
        write_text_atomic(grid.outputs["table"], text)
        written.append(grid.outputs["table"])
    if "plot" in grid.outputs:
        written += plot_curves(df, pub, grid.outputs["plot"], pattern=grid.pattern)
        if cost and cost_varies(df):
            plot = grid.outputs["plot"]
            written += plot_tflops(df, plot.with_name(f"{plot.stem}_tflops{plot.suffix}"))
        elif cost:
            print("no accuracy-vs-FLOPs plot: every point of a benchmark has the same prefill FLOPs (weight pruning "
                  "leaves the dense FLOPs unchanged; token methods change them)")
    if "csv" in grid.outputs:
        export(settings.output, grid.outputs["csv"])
        written.append(grid.outputs["csv"])
    return written


def sweep_grid(model: str, methods: list[str], sparsities: list[float], tasks: list[str] | None, pattern: str,
               out_dir: Path, csv: Path, **run_fields: Any) -> Grid:
    """`make sweep`: one model, the chosen methods (+ dense as the reference) over a range of sparsities; with
    `budgets` (`--token-budgets`), each token method that takes the common budget once per budget."""
    with tamp_errors():
        for value in sparsities:
            check_sparsity(value, "--sparsities: each", dense_ok=False)
    if run_fields.get("budgets"):
        check_budgets(run_fields["budgets"], run_fields.get("overrides") or [])
    slug = f"{model.replace('/', '__')}_{pattern.replace(':', 'of')}"
    return Grid(name=f"sweep: {model}, {pattern}", models=[model],
                methods=["dense", *[m for m in methods if m != "dense"]], sparsities=sparsities, tasks=tasks,
                pattern=pattern, outputs={"table": out_dir / f"{slug}.md", "plot": out_dir / f"{slug}.png", "csv": csv},
                **run_fields)
