"""Sparsity-performance curves and per-layer allocation plots (matplotlib, written as PNG and SVG)."""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (also on machines without a display)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.benchmarks import benchmark, order  # noqa: E402
from harness.cost_columns import flop_unit  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.tables import method_label, method_rank  # noqa: E402
from tamp.artifacts import (  # noqa: E402
    PER_MATRIX,
    PRUNING_JSON,
    PruningJsonForeign,
    PruningJsonInvalid,
    PruningJsonMissing,
    PruningJsonUnreadable,
    TransformInvalid,
    read_pruning_json,
)
from tamp.methods.registry import all_methods  # noqa: E402

AVERAGE = "Average"
DENSE_COLOUR = "black"
# enough distinct colours for every built-in method but dense (black): tab10, then Dark2's eight
PALETTE = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]


def method_style(method: str) -> dict[str, Any]:
    """A method's colour (and line style), the same in every figure of every report: read from its place in the
    registry's order, not from which methods one figure happens to show. A composition (`tamp+aim`) takes its
    token method's colour, dashed; a method no longer registered a colour from its name."""
    if method == "dense":
        return {"color": DENSE_COLOUR, "linestyle": "-"}
    if "+" in method:
        return {"color": method_style(method.split("+")[-1])["color"], "linestyle": "--"}
    names = [n for n in all_methods() if n != "dense"]
    index = names.index(method) if method in names else len(names) + zlib.crc32(method.encode())
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": "-"}


def cost_varies(rows: pd.DataFrame) -> bool:
    """Whether the measured prefill cost differs between the points of one benchmark panel (same model, limit and
    task). Weight pruning leaves the dense FLOPs unchanged: a weight-only sweep has every point on one vertical
    line, a figure with nothing to show."""
    rows = rows[rows["prefill_tflops"].notna()]
    for _, group in rows.groupby(["model", "limit", "task"]):
        low, high = float(group["prefill_tflops"].min()), float(group["prefill_tflops"].max())
        if high - low > 1e-9 * max(abs(high), 1e-30):
            return True
    return False


def _outputs(out: Path, suffix: str = "") -> list[Path]:
    """FILE.png|.svg|(no suffix) -> both FILE.png and FILE.svg (with an optional name suffix)."""
    out = Path(out)
    if out.suffix.lower() not in ("", ".png", ".svg"):
        raise HarnessError(f"--out {out}: give a .png or .svg file name (both are written)")
    stem = out.with_suffix("") if out.suffix else out
    stem = stem.with_name(stem.name + suffix)
    return [stem.with_suffix(".png"), stem.with_suffix(".svg")]


def _save(fig: Any, paths: list[Path]) -> list[Path]:
    """Byte-identical files from identical data: no date in the SVG's metadata, and its element ids hashed with a
    fixed salt (matplotlib's default is a random one per file), so re-running a report rewrites the same bytes."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fmt = path.suffix[1:]
        with plt.rc_context({"svg.hashsalt": "tamp-harness"}):
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        tmp.replace(path)
    plt.close(fig)
    return paths


def _average_curve(rows: pd.DataFrame, tasks: list[str]) -> pd.Series:
    """Per sparsity: mean on a 0-100 scale, only where every scaled benchmark is present."""
    scaled = [t for t in tasks if not math.isnan(benchmark(t).percent_scale)]
    if not scaled:
        return pd.Series(dtype=float)
    wide = rows.pivot_table(index="sparsity", columns="task", values="percent", aggfunc="mean")  # over seeds
    wide = wide.reindex(columns=scaled)
    return wide.dropna().mean(axis=1)


def _points(sub: pd.DataFrame) -> tuple[list[float], list[float], list[list[float]]]:
    """x, y and the error bars (below, above) of one method's points: per sparsity, the run's 95% bootstrap interval,
    or with several calibration seeds their mean ± standard deviation; no bar where neither is known."""
    xs, ys, lows, highs = [], [], [], []
    for x, group in sub.groupby("sparsity", sort=True):
        values = group["value"].astype(float)
        y = float(values.mean())
        low = high = 0.0
        if len(group) > 1:
            low = high = float(values.std(ddof=1))
        elif "ci_low" in group and pd.notna(group["ci_low"].iloc[0]) and pd.notna(group["ci_high"].iloc[0]):
            low, high = max(0.0, y - float(group["ci_low"].iloc[0])), max(0.0, float(group["ci_high"].iloc[0]) - y)
        xs.append(float(x))
        ys.append(y)
        lows.append(low)
        highs.append(high)
    return xs, ys, [lows, highs]


def plot_curves(ours: pd.DataFrame, published: pd.DataFrame | None, out: Path, *, model: str | None = None,
                pattern: str | None = None) -> list[Path]:
    """One figure per (model, pattern, limit): a panel per benchmark plus the average, a line per method."""
    if model is not None:
        ours = ours[ours["model"] == model]
    if pattern is not None:
        ours = ours[(ours["pattern"] == pattern) | (ours["method"] == "dense")]
    ours = ours[ours["value"].notna()]
    if ours.empty:
        raise HarnessError("no run records with a score match; nothing to plot (check --runs, --model, --pattern)")
    groups = sorted({(m, p, int(lim)) for m, p, lim, meth in
                     zip(ours["model"], ours["pattern"], ours["limit"], ours["method"]) if meth != "dense"})
    if not groups:
        groups = sorted({(m, "unstructured", int(lim)) for m, lim in zip(ours["model"], ours["limit"])})
    written: list[Path] = []
    for m, p, lim in groups:
        rows = ours[(ours["model"] == m) & (ours["limit"] == lim) & ((ours["pattern"] == p) | (ours["method"] == "dense"))]
        pubs = None
        if published is not None and len(published):
            pubs = published[(published["model"] == m) & ((published["pattern"] == p) | (published["method"] == "dense"))]
        suffix = "" if len(groups) == 1 else "_" + re.sub(r"[^\w.-]+", "-", f"{m}_{p}" + (f"_limit{lim}" if lim else ""))
        fig = _curves_figure(rows, pubs, f"{m}, {p}" + (f" (first {lim} documents per task)" if lim else ""))
        written += _save(fig, _outputs(out, suffix))
    return written


def _curves_figure(rows: pd.DataFrame, pubs: pd.DataFrame | None, title: str) -> Any:
    tasks = order(list(rows["task"]))
    panels = [*tasks, AVERAGE]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    methods = sorted({m for m in rows["method"] if m != "dense"}, key=method_rank)
    colours = {m: method_style(m)["color"] for m in methods}
    lines = {m: method_style(m)["linestyle"] for m in methods}
    dense = rows[rows["method"] == "dense"]
    for ax, panel in zip(axes.flat, panels):
        if panel == AVERAGE:
            ax.set_title("Average (0-100 scale, complete points only)", fontsize=10)
            for method in methods:
                curve = _average_curve(rows[rows["method"] == method], tasks)
                if len(curve):
                    ax.plot(curve.index, curve.values, marker="o", color=colours[method], linestyle=lines[method],
                            label=method_label(method))
            dense_avg = _average_curve(dense, tasks)
            if len(dense_avg):
                ax.axhline(float(dense_avg.iloc[-1]), color="black", linestyle="--", linewidth=1, label="Dense")
        else:
            bench = benchmark(panel)
            ax.set_title(bench.label, fontsize=10)
            for method in methods:
                sub = rows[(rows["method"] == method) & (rows["task"] == panel)].sort_values("sparsity")
                if len(sub):
                    xs, ys, err = _points(sub)
                    ax.errorbar(xs, ys, yerr=err, marker="o", color=colours[method], linestyle=lines[method],
                                capsize=3, label=method_label(method))
                if pubs is not None:
                    ps = pubs[(pubs["method"] == method) & (pubs["task"] == panel)]
                    if len(ps):
                        ax.scatter(ps["sparsity"], ps["value"], marker="D", facecolors="none",
                                   edgecolors=[colours[method]], s=45, label=f"{method_label(method)} (published)")
            ref = dense[dense["task"] == panel]
            if len(ref):
                ax.axhline(float(ref["value"].iloc[-1]), color="black", linestyle="--", linewidth=1, label="Dense")
                low, high = (ref[c].iloc[-1] if c in ref else float("nan") for c in ("ci_low", "ci_high"))
                if pd.notna(low) and pd.notna(high):  # dense's own interval, a grey band
                    ax.axhspan(float(low), float(high), color="black", alpha=0.08, linewidth=0)
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0, decimals=0))
    _finish(fig, axes, len(panels), title, top=0.96)
    return fig


def _finish(fig: Any, axes: Any, used: int, title: str, top: float) -> None:
    """The common frame of a panel figure: y labels, unused panels hidden, one legend below, the title."""
    for row in axes:
        row[0].set_ylabel("score")
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, top))
    # hung below the panels, outside the figure, whatever its row count (the save is bbox_inches="tight")
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(6, max(1, len(handles))),
               frameon=False, bbox_to_anchor=(0.5, 0.0))


_LAYER = re.compile(r"\.layers\.(\d+)\.(.+)$")


def plot_tflops(ours: pd.DataFrame, out: Path, *, model: str | None = None) -> list[Path]:
    """Accuracy against measured prefill TFLOPs per sample (`plot_cost` on `prefill_tflops`)."""
    return plot_cost(ours, out, model=model, x="prefill_tflops")


COST_AXES = {"prefill_tflops": "accuracy vs prefill cost", "visual_tokens_kept": "accuracy vs visual tokens kept"}


def _base(method: str) -> str:
    """A row's method without its token budget (`fastv@0.222` -> `fastv`): one line joins a method's budgets."""
    return method.split("@", 1)[0]


def plot_cost(ours: pd.DataFrame, out: Path, *, model: str | None = None, x: str = "prefill_tflops") -> list[Path]:
    """Accuracy against a measured cost per sample (`x`: prefill TFLOPs or the visual tokens kept after the last
    drop), one figure per (model, limit): a panel per benchmark plus the average; weight methods, token methods and
    their compositions on the same axes, a line joining a method's points (its sparsities, its token budgets) in
    order of cost."""
    if model is not None:
        ours = ours[ours["model"] == model]
    ours = ours[ours["value"].notna() & ours[x].notna()]
    if ours.empty:
        raise HarnessError("no run records with a measured cost match; run them again with this version of "
                           "`harness run` (records written before the cost axis carry none)")
    groups = sorted({(m, int(lim)) for m, lim in zip(ours["model"], ours["limit"])})
    written: list[Path] = []
    for m, lim in groups:
        rows = ours[(ours["model"] == m) & (ours["limit"] == lim)]
        tasks = order(list(rows["task"]))
        panels = [*tasks, AVERAGE]
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
        methods = sorted({_base(method) for method in rows["method"]}, key=method_rank)
        unit, scale = flop_unit(float(rows[x].max())) if x == "prefill_tflops" else ("", 1.0)
        for ax, panel in zip(axes.flat, panels):
            ax.set_title(benchmark(panel).label if panel != AVERAGE else "Average (0-100 scale)", fontsize=10)
            for method in methods:
                sub = rows[rows["method"].map(_base) == method]
                if panel == AVERAGE:
                    pts = [(float(g[x].mean()) * scale, float(g["percent"].mean()))
                           for _, g in sub.groupby(["method", "sparsity", "pattern"]) if set(g["task"]) >= set(tasks)
                           and g["percent"].notna().all()]
                else:
                    one = sub[sub["task"] == panel]
                    pts = list(zip(one[x].astype(float) * scale, one["value"].astype(float)))
                if pts:
                    xs, ys = zip(*sorted(pts))
                    style = {**method_style(method), **(dict(marker="s", linestyle="none") if method == "dense"
                                                        else dict(marker="o"))}
                    ax.plot(xs, ys, label=method_label(method), **style)
            ax.set_xlabel(f"prefill {unit} per sample" if x == "prefill_tflops" else "visual tokens kept per sample")
            ax.grid(alpha=0.3)
        _finish(fig, axes, len(panels), f"{m}: {COST_AXES[x]}" +
                (f" (first {lim} documents per task)" if lim else ""), top=0.95)
        suffix = "" if len(groups) == 1 else "_" + re.sub(r"[^\w.-]+", "-", f"{m}" + (f"_limit{lim}" if lim else ""))
        written += _save(fig, _outputs(out, suffix))
    return written


def allocation_frame(pruning: dict[str, Any]) -> pd.DataFrame:
    """pruning.json's per_matrix -> rows (block, matrix, numel, target, sparsity)."""
    rows = []
    for name, entry in (pruning.get("per_matrix") or {}).items():
        match = _LAYER.search(name)
        if not match:
            continue
        rows.append({"block": int(match.group(1)), "matrix": match.group(2).split(".")[-1],
                     "stack": name[:match.start()], "numel": entry["numel"], "target": entry.get("target"),
                     "sparsity": entry["sparsity"]})
    return pd.DataFrame(rows, columns=["block", "matrix", "stack", "numel", "target", "sparsity"])


def read_pruning(path: Path) -> dict[str, Any]:
    """An artifact's pruning.json (or the file itself) through tamp's reader, its errors worded for --allocation."""
    try:
        return read_pruning_json(path, PER_MATRIX)
    except PruningJsonMissing as exc:
        raise HarnessError(f"{exc.file} not found: give a pruned artifact directory or its {PRUNING_JSON}") from None
    except (PruningJsonUnreadable, PruningJsonInvalid) as exc:
        raise HarnessError(f"cannot read {exc.file}: {exc.cause}") from None
    except PruningJsonForeign as exc:
        raise HarnessError(f"{exc.file} is not a tamp {PRUNING_JSON} (no per_matrix section)") from None
    except TransformInvalid as exc:  # its transform section does not fit its schema (tamp.artifacts)
        raise HarnessError(str(exc)) from None


def plot_allocation(paths: list[Path], out: Path) -> list[Path]:
    """Per-layer sparsity of one or more artifacts side by side: a line per matrix type, the block mean in black."""
    infos = [read_pruning(p) for p in paths]
    fig, axes = plt.subplots(1, len(infos), figsize=(6 * len(infos), 4), squeeze=False, sharey=True)
    for ax, info, path in zip(axes.flat, infos, paths):
        frame = allocation_frame(info)
        if frame.empty:
            raise HarnessError(f"{path}: no decoder-layer matrices in per_matrix")
        frame = frame[frame["stack"] == frame["stack"].iloc[0]]  # the language model (first stack)
        for matrix in sorted(set(frame["matrix"])):
            sub = frame[frame["matrix"] == matrix].sort_values("block")
            ax.plot(sub["block"], sub["sparsity"], marker=".", linewidth=1, label=matrix)
        weighted = frame.assign(z=frame["sparsity"] * frame["numel"]).groupby("block")[["z", "numel"]].sum()
        ax.plot(weighted.index, weighted["z"] / weighted["numel"], color="black", linewidth=2, label="block mean")
        cfg = info.get("config") or {}
        total = (info.get("sparsity") or {}).get("sparsity")
        ax.set_title(f"{cfg.get('method', '?')} ({cfg.get('allocation', '?')} allocation), "
                     f"target {cfg.get('sparsity', 0):.0%}, actual {total or 0:.1%}", fontsize=10)
        ax.set_xlabel("decoder block")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0, decimals=0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    axes.flat[0].set_ylabel("sparsity of the matrix")
    fig.tight_layout()
    return _save(fig, _outputs(out))
