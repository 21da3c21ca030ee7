"""A method keeps its colour in every figure of a report (read from the registry's order, not from the methods
one figure shows), and a sweep whose points all cost the same prefill FLOPs gets no accuracy-vs-FLOPs figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.colors import to_rgba

import harness.plots as plots
from harness.plots import cost_varies, method_style, plot_curves, plot_tflops


def frame(cells: dict[tuple[str, float], float], tasks: tuple[str, ...] = ("pope",)) -> pd.DataFrame:
    """Headline rows: (method, sparsity) -> prefill TFLOPs, a score per task."""
    rows = [{"model": "m", "pattern": "unstructured", "limit": 0, "method": method, "sparsity": s, "task": task,
             "value": 80.0 - 10 * s, "percent": 80.0 - 10 * s, "ci_low": float("nan"), "ci_high": float("nan"),
             "prefill_tflops": tflops} for (method, s), tflops in cells.items() for task in tasks]
    return pd.DataFrame(rows)


def colours_by_label(fig: Any) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            line = handle[0] if isinstance(handle, tuple) or hasattr(handle, "lines") else handle
            colour = to_rgba(line.get_color())
            assert out.setdefault(label, colour) == colour, label  # one colour per method within a figure too
    return out


@pytest.fixture()
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions draw, kept instead of written."""
    kept: list[Any] = []

    def keep(fig: Any, paths: list[Path]) -> list[Path]:
        kept.append(fig)
        return paths

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def test_a_method_keeps_its_colour_across_figures(figures: list[Any], tmp_path: Path) -> None:
    weights = frame({("dense", 0.0): 1.0, ("wanda", 0.3): 1.0, ("wanda", 0.5): 1.0, ("tamp", 0.5): 1.0})
    tokens = frame({("dense", 0.0): 1.0, ("magnitude", 0.5): 1.0, ("sparsegpt", 0.5): 1.0, ("wanda", 0.5): 1.0,
                    ("fastv", 0.0): 0.5, ("tamp", 0.5): 1.0, ("tamp+fastv", 0.5): 0.5})
    plot_curves(weights, None, tmp_path / "a.png")
    plot_tflops(tokens, tmp_path / "b.png")
    first, second = (colours_by_label(f) for f in figures)
    for label in ("Wanda", "TAMP"):  # in the second figure two more methods come before them
        assert first[label] == second[label], label
    assert len({second[k] for k in ("Magnitude", "SparseGPT", "Wanda", "FastV", "TAMP")}) == 5
    assert to_rgba(method_style("tamp+fastv")["color"]) == second["FastV"]  # a composition: its token method's
    assert method_style("tamp+fastv")["linestyle"] == "--"  # colour, dashed


def test_colours_do_not_depend_on_what_else_is_shown() -> None:
    assert method_style("wanda") == method_style("wanda")
    builtin = ["magnitude", "sparsegpt", "wanda", "owl", "ecoflap", "das", "amia", "tamp", "fastv", "aim", "yopo"]
    assert len({method_style(m)["color"] for m in builtin}) == len(builtin)  # every built-in its own colour
    assert method_style("gone-plugin") == method_style("gone-plugin")  # a record of an uninstalled method: stable


def test_cost_varies_only_where_a_panel_has_different_costs() -> None:
    weight_only = frame({("dense", 0.0): 2.0, ("wanda", 0.5): 2.0, ("tamp", 0.5): 2.0})
    assert not cost_varies(weight_only)
    two_tasks = pd.concat([weight_only, frame({("dense", 0.0): 3.0, ("wanda", 0.5): 3.0}, tasks=("mme",))])
    assert not cost_varies(two_tasks)  # each task its own prompt length: a cost per panel, not across panels
    assert cost_varies(frame({("dense", 0.0): 2.0, ("fastv", 0.0): 1.2}))


def test_a_weight_only_sweep_gets_no_flops_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weight pruning leaves the dense FLOPs: the sweep says in one line why it drew no accuracy-vs-FLOPs figure;
    once a token method changes the cost, the figure is drawn."""
    from harness.grid import Settings, sweep_grid, write_reports
    from harness.records import SCHEMA, record_path, write_json

    runs, out = tmp_path / "runs", tmp_path / "sweep"

    def put(method: str, sparsity: float, tflops: float) -> None:
        task = "tamp_smoke_vqa"
        write_json(record_path(runs, "tiny-llava-next", method, sparsity, "unstructured", task, None),
                   {"schema": SCHEMA, "artifact_key": f"k-{method}", "model": {"name": "tiny-llava-next"},
                    "method": method, "sparsity": sparsity, "pattern": "unstructured", "task": task, "limit": None,
                    "metrics": {"exact_match,none": 0.5 - sparsity / 4}, "cost": {"prefill_tflops": tflops}})

    put("dense", 0.0, 0.002)
    put("wanda", 0.5, 0.002)
    grid = sweep_grid("tiny-llava-next", ["wanda"], [0.5], ["tamp_smoke_vqa"], "unstructured", out, out / "lb.csv")
    written = write_reports(grid, Settings(output=runs))
    assert not [p for p in written if "tflops" in p.name] and not list(out.glob("*tflops*"))
    said = [line for line in capsys.readouterr().out.splitlines() if "FLOPs plot" in line]
    assert len(said) == 1 and "same prefill FLOPs" in said[0]
    put("fastv", 0.0, 0.001)
    grid = sweep_grid("tiny-llava-next", ["wanda", "fastv"], [0.5], ["tamp_smoke_vqa"], "unstructured", out,
                      out / "lb.csv")
    written = write_reports(grid, Settings(output=runs))
    assert {p.suffix for p in written if "tflops" in p.name} == {".png", ".svg"}


def test_a_token_methods_budgets_are_one_line_against_visual_tokens(figures: list[Any], tmp_path: Path) -> None:
    """`harness plot --x tokens`: score against the visual tokens kept, a method's budgets (`fastv@0.333`, ...) joined
    by one line in order of tokens, dense a lone point."""
    rows = frame({("dense", 0.0): 1.0, ("fastv@0.333", 0.0): 0.6, ("fastv@0.111", 0.0): 0.4, ("pool@0.222", 0.0): 0.5})
    rows["visual_tokens_kept"] = rows["method"].map({"dense": 576.0, "fastv@0.333": 192.0, "fastv@0.111": 64.0,
                                                     "pool@0.222": 128.0})
    plots.plot_cost(rows, tmp_path / "t.png", x="visual_tokens_kept")
    (fig,) = figures
    lines = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()}
    assert lines == {"Dense": [576.0], "FastV": [64.0, 192.0], "Pool": [128.0]}
    assert fig.axes[0].get_xlabel() == "visual tokens kept per sample"
