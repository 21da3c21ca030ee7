"""The paper's table layout: methods as rows (dense first), benchmarks as columns plus an average.

One table per (model, sparsity, pattern, limit). A cell with no run record stays missing (never 0),
and the average is given only for a row that has every benchmark of the table, since an average over
a different subset of benchmarks is not comparable across rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from tabulate import tabulate

from harness.benchmarks import benchmark, order, registered_tasks
from harness.cost_columns import HEADERS, PARTS, cost_columns, cost_text
from harness.records import BUDGET_MARK
from harness.uncertainty import ALPHA, LEVEL, RESAMPLES, SEED, mean_of_means_interval
from tamp.methods.registry import all_methods

AVG = "Avg"
COST = HEADERS  # `--cost`: the headers a cost column can have (harness/cost_columns.py: units, notes)
MISSING = "–"
MARK = "†"  # the cell is not distinguishable from dense (paired test, p >= ALPHA)
FORMATS = ("markdown", "latex", "csv")


def method_label(method: str) -> str:
    """The registered method's table label (a record of a method no longer installed keeps its name); a
    composition's labels joined (`tamp+fastv` -> `TAMP + FastV`, `tamp+gptq-w4g128` -> `TAMP + GPTQ w4g128`); a
    token budget after it (`fastv@0.222` -> `FastV @ 0.222`)."""
    if BUDGET_MARK in method:
        base, budget = method.split(BUDGET_MARK, 1)
        return f"{method_label(base)} @ {budget}"
    if "+" in method:
        return " + ".join(method_label(part) for part in method.split("+"))
    known = all_methods().get(method)
    if known is None and "-" in method:  # a quantizer with its grid: gptq-w4g128 -> GPTQ w4g128
        head, _, grid = method.partition("-")
        quantizer = all_methods().get(head)
        return f"{quantizer.label} {grid}" if quantizer is not None else method
    return known.label if known is not None else method


def method_rank(method: str) -> tuple[int, str]:
    """Rows in the registry's table order (dense first, a composition after its weight method's row); unknown
    methods last, by name."""
    methods = list(all_methods())
    first = method.split(BUDGET_MARK)[0].split("+")[0]
    first = first if first in methods else first.partition("-")[0]  # a quantizer alone, with its grid
    return (methods.index(first) if first in methods else len(methods), method)


@dataclass
class Table:
    """One (model, sparsity, pattern, limit) table: numbers, plus what a reader needs to read them."""

    model: str
    sparsity: float
    pattern: str
    limit: int
    relative: bool
    data: pd.DataFrame  # rows = row labels, columns = benchmark labels + Avg; NaN = missing
    notes: list[str] = field(default_factory=list)
    spread: dict[tuple[str, str], Spread] = field(default_factory=dict)  # (row, column) -> how sure the number is

    @property
    def title(self) -> str:
        what = "% of dense" if self.relative else "scores"
        limit = f", first {self.limit} documents per task" if self.limit else ""
        return f"{self.model}: {self.pattern}, {self.sparsity:.0%} sparsity ({what}{limit})"


@dataclass(frozen=True)
class Spread:
    """How sure one cell is: ± `half` is half the 95% bootstrap interval (one run) or the standard deviation over
    `seeds` prunings (several calibration seeds); `same_as_dense` marks a cell the paired test cannot tell from
    dense (None: not tested)."""

    half: float | None = None
    seeds: int = 1
    same_as_dense: bool | None = None


def _pick(df: pd.DataFrame, model: str | None, sparsity: float | None, pattern: str | None) -> pd.DataFrame:
    if model is not None:
        df = df[df["model"] == model]
    if pattern is not None:
        df = df[(df["pattern"] == pattern) | (df["sparsity"] == 0)]
    if sparsity is not None:
        df = df[(df["sparsity"].round(4) == round(sparsity, 4)) | (df["sparsity"] == 0)]
    return df


def _row_frame(rows: pd.DataFrame, tasks: list[str], column: str) -> pd.Series:
    values = {t: float("nan") for t in tasks}
    for task, value in zip(rows["task"], rows[column]):
        if task in values and value is not None and not (isinstance(value, float) and math.isnan(value)):
            values[task] = float(value)
    return pd.Series(values, dtype=float)


def _by_seed(rows: pd.DataFrame, tasks: list[str]) -> dict[str, pd.DataFrame]:
    """Per task, one row per calibration seed (the last record of a seed, as a table shows one record per cell)."""
    out = {}
    for task in tasks:
        sub = rows[rows["task"] == task]
        if len(sub):
            seeds = sub["seed"] if "seed" in sub else pd.Series([None] * len(sub), index=sub.index)
            out[task] = sub.assign(_seed=seeds.astype(object).where(seeds.notna(), -1)).drop_duplicates(
                "_seed", keep="last")
    return out


def _ours(rows: pd.DataFrame, tasks: list[str], labels: list[str], with_avg: bool) -> tuple[
        pd.Series, pd.Series, dict[str, Spread], tuple[float, float] | None]:
    """A row of our records: each task's value and 0-100 value (the mean over seeds), how sure each is, and the
    interval of the row's average on the 0-100 scale (None where not every benchmark has one)."""
    values = pd.Series(float("nan"), index=tasks)
    percent = pd.Series(float("nan"), index=tasks)
    spreads: dict[str, Spread] = {}
    per_task = _by_seed(rows, tasks)
    for task, label in zip(tasks, labels):
        sub = per_task.get(task)
        if sub is None:
            continue
        vals = pd.to_numeric(sub["value"], errors="coerce").dropna()
        if not len(vals):
            continue
        values[task] = float(vals.mean())
        pct = pd.to_numeric(sub["percent"], errors="coerce").dropna()
        percent[task] = float(pct.mean()) if len(pct) == len(vals) else float("nan")
        p = pd.to_numeric(sub["p_vs_dense"], errors="coerce") if "p_vs_dense" in sub else pd.Series(dtype=float)
        same = bool((p >= ALPHA).all()) if len(p) and p.notna().all() else None
        if len(vals) > 1:
            spreads[label] = Spread(float(vals.std(ddof=1)), len(vals), same)
        else:
            low, high = (sub[c].iloc[0] if c in sub else float("nan") for c in ("ci_low", "ci_high"))
            half = (high - low) / 2.0 if pd.notna(low) and pd.notna(high) else None
            spreads[label] = Spread(half, 1, same)
    avg_interval = None
    scaled = [t for t in tasks if not math.isnan(benchmark(t).percent_scale)]
    runs = [per_task.get(t) for t in scaled]
    if with_avg and scaled and all(r is not None and len(r) == 1 and "scores" in r
                                   and isinstance(r["scores"].iloc[0], dict) for r in runs):
        avg_interval = mean_of_means_interval([list(r["scores"].iloc[0].values()) for r in runs],
                                              [benchmark(t).percent_scale for t in scaled])
    return values, percent, spreads, avg_interval


def _average(percent: pd.Series, tasks: list[str]) -> float:
    """Mean on a 0-100 scale over the benchmarks that have one; NaN unless the row has all of them."""
    scaled = [t for t in tasks if not math.isnan(benchmark(t).percent_scale)]
    if not scaled or percent[scaled].isna().any():
        return float("nan")
    return float(percent[scaled].mean())


def build_tables(ours: pd.DataFrame, published: pd.DataFrame | None = None, *, model: str | None = None,
                 sparsity: float | None = None, pattern: str | None = None,
                 relative: bool = False, cost: bool | Sequence[str] = False) -> list[Table]:
    """The tables for every (model, sparsity, pattern, limit) of our records that match the filters; `cost`: True
    for the default cost columns, or the parts to show (harness.cost_columns.PARTS)."""
    ours = _pick(ours, model, sparsity, pattern)
    pub = _pick(published, model, sparsity, pattern) if published is not None and len(published) else None
    tables = []
    sparse = ours[ours["sparsity"] > 0]
    keys = sorted({(m, round(s, 4), p, int(lim)) for m, s, p, lim in
                   zip(sparse["model"], sparse["sparsity"], sparse["pattern"], sparse["limit"])})
    dense_only = ours[ours["sparsity"] == 0]
    if not keys:  # only dense runs: still worth a table
        keys = sorted({(m, 0.0, "unstructured", int(lim)) for m, lim in zip(dense_only["model"], dense_only["limit"])})
    for m, s, p, lim in keys:
        mine = ours[(ours["model"] == m) & (ours["limit"] == lim)
                    & (((ours["sparsity"] == s) & (ours["pattern"] == p)) | (ours["sparsity"] == 0))]
        theirs = None
        if pub is not None:
            theirs = pub[(pub["model"] == m) & (((pub["sparsity"] == s) & (pub["pattern"] == p))
                                                | (pub["method"] == "dense"))]
        tables.append(_one_table(mine, theirs, m, s, p, lim, relative, cost))
    return tables


def _one_table(mine: pd.DataFrame, theirs: pd.DataFrame | None, model: str, sparsity: float, pattern: str,
               limit: int, relative: bool, cost: bool | Sequence[str] = False) -> Table:
    tasks = order(list(mine["task"]))
    labels = [benchmark(t).label for t in tasks]
    # several tasks can share a label (mmbench_en_dev and its static variant): keep them apart
    labels = [lab if labels.count(lab) == 1 else f"{lab} ({t})" for lab, t in zip(labels, tasks)]
    rows: dict[str, tuple[pd.Series, pd.Series, str]] = {}
    measured: dict[str, pd.DataFrame] = {}  # our rows' records, for the cost columns
    spread: dict[tuple[str, str], Spread] = {}
    for method in sorted(set(mine["method"]) | (set(theirs["method"]) if theirs is not None else set()),
                         key=method_rank):
        sub = mine[mine["method"] == method]
        if len(sub):
            values, percent, cells, avg = _ours(sub, tasks, labels, not relative)
            rows[method_label(method)] = (values, percent, "ours")
            measured[method_label(method)] = sub
            spread.update({(method_label(method), column): cell for column, cell in cells.items()})
            if avg is not None and not math.isnan(_average(percent, tasks)):
                spread[(method_label(method), AVG)] = Spread((avg[1] - avg[0]) / 2.0)
        if theirs is not None:
            pubs = theirs[theirs["method"] == method]
            if len(pubs):
                rows[f"{method_label(method)} (published)"] = (
                    _row_frame(pubs, tasks, "value"), _row_frame(pubs, tasks, "percent"), "published")
    data = {}
    dense = {src: rows.get(f"Dense{'' if src == 'ours' else ' (published)'}") for src in ("ours", "published")}
    for label, (values, percent, src) in rows.items():
        if relative:
            ref = dense[src]
            rel = values / ref[0] * 100.0 if ref is not None else pd.Series(float("nan"), index=tasks)
            rel = rel.where(rel.notna() & ~rel.isin([float("inf"), float("-inf")]))
            scaled = [t for t in tasks if not math.isnan(benchmark(t).percent_scale)]
            avg = float(rel[scaled].mean()) if scaled and not rel[scaled].isna().any() else float("nan")
            data[label] = [*rel.tolist(), avg]
        else:
            data[label] = [*values.tolist(), _average(percent, tasks)]
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[*labels, AVG])
    if relative:  # % of dense: the mark stays, the intervals are the scores table's
        spread = {key: Spread(None, cell.seeds, cell.same_as_dense) for key, cell in spread.items()}
    notes = _notes(tasks, theirs, relative)
    notes += _uncertainty_notes(mine, tasks, labels, spread, relative)
    if cost:
        columns, cost_notes = cost_columns(measured, list(frame.index), PARTS if cost is True else tuple(cost))
        for header, values in columns.items():
            frame[header] = values
        notes += cost_notes
    return Table(model, sparsity, pattern, limit, relative, frame, notes, spread)


def _uncertainty_notes(mine: pd.DataFrame, tasks: list[str], labels: list[str], spread: dict[tuple[str, str], Spread],
                       relative: bool) -> list[str]:
    """What ±, the mark and (n=k) mean, and why a cell of ours is bare."""
    notes = []
    if any(c.half is not None and c.seeds == 1 for c in spread.values()):
        notes.append(f"±: half the width of the {LEVEL:.0%} percentile bootstrap interval of the mean over the "
                     f"documents ({RESAMPLES:,} resamples, seed {SEED}; exact bounds: ci_low, ci_high in the "
                     "leaderboard CSV)" + (f"; {AVG}: each benchmark's documents resampled independently"
                                           if any(k[1] == AVG for k in spread) else ""))
    if any(c.seeds > 1 for c in spread.values()):
        notes.append("(n=k): the mean over k prunings with different calibration seeds" + (
            "" if relative else ", ± their standard deviation (the spread over seeds, not a bootstrap interval)"))
    if any(c.same_as_dense is not None for c in spread.values()):
        notes.append(f"{MARK}: not distinguishable from dense (p >= {ALPHA}, two-sided, on the documents both "
                     "scored, matched by id: exact McNemar test when every score is 0 or 1, else a paired bootstrap "
                     "of the mean difference; with several seeds, every seed's run); unmarked: different, or not "
                     "tested (dense itself, no dense run with per-document scores)")
    if relative and "ci_low" in mine and mine["ci_low"].notna().any():
        notes.append("the intervals are in the scores table")
    why = mine.get("no_interval")
    bare: dict[str, list[str]] = {}  # reason -> the benchmarks it leaves bare
    for task, label in zip(tasks, labels):
        for reason in sorted({r for t, r in zip(mine["task"], why if why is not None else [])
                              if t == task and isinstance(r, str) and r}):
            bare.setdefault(reason, []).append(label)
    notes += [f"no interval, the bare score ({', '.join(which)}): {reason}" for reason, which in bare.items()]
    return notes


def _notes(tasks: list[str], theirs: pd.DataFrame | None, relative: bool) -> list[str]:
    known = registered_tasks()
    notes = [f"{known[t].label}: {known[t].note}" for t in tasks if t in known and known[t].note]
    unscaled = [t for t in tasks if math.isnan(benchmark(t).percent_scale)]
    if unscaled:
        notes.append(f"not in the average (scale unknown to the harness): {', '.join(unscaled)}")
    notes.append(f"{AVG}: " + ("mean of the per-benchmark % of dense" if relative else
                               "mean over the benchmarks on a 0-100 scale") + "; given only for complete rows")
    if theirs is not None and len(theirs):
        for (method, source) in sorted({(m, s) for m, s in zip(theirs["method"], theirs["source"])}):
            notes.append(f"{method_label(method)} (published): {source}")
    return notes


def _cells(table: Table, missing: str) -> list[list[str]]:
    formats = [cost_text if column in COST else "{:.2f}".format for column in table.data.columns]
    return [[label, *[missing if math.isnan(v) else _with_spread(f(v), table.spread.get((label, column)))
                      for f, v, column in zip(formats, row, table.data.columns)]]
            for label, row in zip(table.data.index, table.data.itertuples(index=False))]


def _with_spread(text: str, cell: Spread | None) -> str:
    """`87.50 ± 7.19 †`: the number, its ± (and seed count), the mark."""
    if cell is None:
        return text
    if cell.half is not None:
        text += f" ± {cell.half:.2f}"
    text += f" (n={cell.seeds})" if cell.seeds > 1 else ""
    return text + (f" {MARK}" if cell.same_as_dense else "")


def render(tables: list[Table], fmt: str = "markdown") -> str:
    """All tables as one document: markdown (GitHub), LaTeX (booktabs) or CSV (one block per table)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    parts = []
    for table in tables:
        headers = ["Method", *table.data.columns]
        if fmt == "csv":
            frame = table.data.copy()
            frame.index.name = "method"
            parts.append(f"# {table.title}\n" + frame.to_csv(float_format="%.4f", na_rep=""))
            continue
        body = tabulate(_cells(table, MISSING if fmt == "markdown" else "--"), headers=headers,
                        tablefmt="github" if fmt == "markdown" else "latex_booktabs",
                        disable_numparse=True, colalign=["left"] + ["right"] * (len(headers) - 1))
        if fmt == "markdown":
            notes = "".join(f"- {n}\n" for n in table.notes)
            parts.append(f"### {table.title}\n\n{body}\n\n{notes}")
        else:
            notes = "".join(f"% {n}\n" for n in table.notes)
            parts.append(f"% {table.title}\n{body}\n{notes}")
    return "\n".join(parts)
