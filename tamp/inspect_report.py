"""`tamp inspect DIR`: the sparsity report of an artifact as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from tamp.artifacts import read_pruning_json


def format_report(info: dict[str, Any], per_matrix: bool = True) -> str:
    cfg, sp = info["config"], info["sparsity"]
    lines = [
        f"model:    {info['model']['id']} ({info['model']['family']})",
        f"method:   {cfg['method']} (allocation={cfg['allocation']}, tokens={cfg['token_selection']}, "
        f"scoring={cfg['scoring']}, pattern={cfg['pattern']})",
        f"target:   {sp['target']:.4f}   actual over pruned matrices: {sp['sparsity']:.4f} "
        f"({sp['zeros']:,} / {sp['numel']:,} in {sp['matrices']} matrices)",
        f"model:    {sp['model_zeros'] / max(sp['model_params'], 1):.4f} of all {sp['model_params']:,} parameters are zero",
    ]
    if info.get("calibration"):
        c = info["calibration"]
        lines.append(f"calib:    {c['spec']} ({c['samples']} samples, fingerprint {c['fingerprint'][:12]})")
    timings = info.get("timings", {})
    if timings:
        lines.append("timings:  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    for w in info.get("warnings", []):
        lines.append(f"warning:  {w}")
    if per_matrix:
        rows = [(name, "x".join(map(str, m["shape"])), f"{m['target']:.4f}", f"{m['sparsity']:.4f}")
                for name, m in info["per_matrix"].items()]
        lines.append("")
        lines.append(tabulate(rows, headers=["matrix", "shape", "target", "actual"], tablefmt="github"))
    return "\n".join(lines)


def inspect_artifact(path: Path, per_matrix: bool = True) -> str:
    return format_report(read_pruning_json(path), per_matrix)
