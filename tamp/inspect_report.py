"""`tamp inspect DIR`: the sparsity report of an artifact as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from tamp.artifacts import TRANSFORM, pruning_json_path, read_pruning_json

# what rounds the number of weights to prune down, per scoring (unstructured): as in the reference implementations
FLOORED_PER = {"wanda": "row", "sparsegpt": "block of columns", "magnitude": "matrix"}


def shortfall_note(cfg: dict[str, Any], target: float, achieved: float) -> str:
    """Why the achieved sparsity sits a little under the target ("" when it does not), so it is not read as a bug."""
    unit = FLOORED_PER.get(cfg.get("scoring", ""))
    if unit is None or cfg.get("pattern") != "unstructured" or not achieved < target:
        return ""
    return (f" (below target: each {unit} prunes int(n x target) of its n weights, rounded down as the reference "
            f"implementations do: up to one weight per {unit} short on narrow matrices)")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def transform_lines(transform: dict[str, Any]) -> list[str]:
    """The token method an artifact runs at inference: its parameters, the budget they came from, what its fit
    chose (lists summarised by their length: YOPO's per-layer heads)."""
    params = ", ".join(f"{k}={_value(v)}" for k, v in transform.get("params", {}).items())
    lines = [f"transform: {transform['method']} ({params or 'no parameters'})"
             + (f", set from token_budget={_value(transform['budget'])}" if transform.get("budget") is not None else "")]
    fitted = transform.get("fitted") or {}
    if fitted:
        lines.append("fitted:   " + ", ".join(f"{k}={_value(v)}" if not isinstance(v, list) else f"{k}=[{len(v)} layers]"
                                            for k, v in fitted.items()))
    return lines


def format_report(info: dict[str, Any], per_matrix: bool = True) -> str:
    cfg, sp = info["config"], info["sparsity"]
    transform = info.get(TRANSFORM)
    method = cfg["method"] if transform is None else \
        transform["method"] if cfg["method"] == "dense" else f"{cfg['method']}+{transform['method']}"
    parts = "a token method: the weights are not pruned" if transform is not None and cfg["method"] == "dense" else \
        (f"allocation={cfg['allocation']}, tokens={cfg['token_selection']}, scoring={cfg['scoring']}, "
         f"pattern={cfg['pattern']}")
    lines = [
        f"model:    {info['model']['id']} ({info['model']['family']})",
        f"method:   {method} ({parts})",
        *(transform_lines(transform) if transform is not None else []),
        f"target:   {sp['target']:.2%}   achieved over pruned matrices: {sp['sparsity']:.2%} "
        f"({sp['zeros']:,} / {sp['numel']:,} in {sp['matrices']} matrices)"
        + shortfall_note(cfg, sp["target"], sp["sparsity"]),
        f"model:    {sp['model_zeros'] / max(sp['model_params'], 1):.2%} of all {sp['model_params']:,} parameters are zero",
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
        rows = [(name, "x".join(map(str, m["shape"])), f"{m['target']:.2%}", f"{m['sparsity']:.2%}")
                for name, m in info["per_matrix"].items()]
        lines.append("")
        lines.append(tabulate(rows, headers=["matrix", "shape", "target", "achieved"], tablefmt="github",
                              disable_numparse=True))
    return "\n".join(lines)


def inspect_artifact(path: Path, per_matrix: bool = True) -> str:
    """The report; a pruning.json that does not fit its schema, or whose token transform the registry refuses (an
    unknown method, a parameter out of range), raises its one-line TampError instead."""
    info = read_pruning_json(path)
    if TRANSFORM in info:
        from tamp.token_transform import TokenTransform  # the registry's checks; torch only for such artifacts

        TokenTransform.from_dict(info[TRANSFORM], pruning_json_path(path))
    return format_report(info, per_matrix)
