"""The cost columns of `harness table --cost`: which measurements, in units that fit the table, and why a cell is
empty.

A row's value is over its tasks' records: the mean prefill FLOPs per sample, the mean of each task's median prefill
latency, the mean decode speed of the tasks that generate, and the highest peak memory. The FLOPs and memory units
are chosen for the table's largest value, so a tiny model reads in MFLOPs and MiB, an 8B model in TFLOPs and GiB.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from harness.errors import HarnessError

PARTS = ("flops", "latency", "decode", "memory", "weights")  # `--cost` alone (or `all`): these, in this order
# shown when named: visual tokens kept, the vision encoder's and the projector's parts of the prefill FLOPs, and the
# throughput (questions per second, which depends on the batch size a run chose)
EXTRA_PARTS = ("tokens", "layers", "encoder", "projector", "throughput")
ORDER = ("tokens", "layers", "flops", "encoder", "projector", "latency", "decode", "memory", "weights",
         "throughput")  # the table's order
FLOP_UNITS = (("TFLOPs", 1.0), ("GFLOPs", 1e3), ("MFLOPs", 1e6), ("kFLOPs", 1e9))
LATENCY = "Prefill ms"
DECODE = "Decode tok/s"
THROUGHPUT = "Questions/s"
TOKENS = "Visual tokens"
LAYER_TOKENS = "Visual tokens / layer"
HEADERS = frozenset([*(f"{part} {name}" for name, _ in FLOP_UNITS for part in ("Prefill", "Encoder", "Projector")),
                     LATENCY, DECODE, "Peak MiB", "Peak GiB", "Weights MiB", "Weights GiB", TOKENS, LAYER_TOKENS, THROUGHPUT])
# how the CPU peak was measured when it is a lower bound (tamp/inference/peak_memory.py)
LOWER_BOUND = "rss-lower-bound"


def flop_unit(largest_tflops: float) -> tuple[str, float]:
    """The unit that keeps the largest value at or above 1 (tiny models run at MFLOPs): (name, factor from
    TFLOPs)."""
    for name, factor in FLOP_UNITS[:-1]:
        if largest_tflops * factor >= 1:
            return name, factor
    return FLOP_UNITS[-1]


def memory_unit(largest_mb: float) -> tuple[str, float]:
    """GiB from 1 GiB up, else MiB: (name, factor from MiB)."""
    return ("GiB", 1 / 1024) if largest_mb >= 1024 else ("MiB", 1.0)


def parse_parts(text: str | None) -> tuple[str, ...]:
    """`--cost` [PARTS]: none given (or `all`) -> the five of PARTS; else the comma-separated ones (EXTRA_PARTS too),
    in the table's order."""
    if text is None or text.strip() == "all":
        return PARTS
    asked = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in asked if p not in ORDER]
    if unknown or not asked:
        raise HarnessError(f"--cost takes some of {','.join(PARTS + EXTRA_PARTS)} (or all), got '{text}'")
    return tuple(p for p in ORDER if p in asked)


def cost_text(value: float) -> str:
    """Three significant digits, never an exponent (1234 -> '1234', 12.34 -> '12.3', 0.000123 -> '0.000123')."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(float("nan"), index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A text column, "" where missing (records from before it)."""
    if column not in frame:
        return pd.Series("", index=frame.index, dtype=str)
    return frame[column].fillna("").astype(str)


def run_peaks(frame: pd.DataFrame) -> pd.Series:
    """Each record's peak memory where it is the run's own: records from before `peak_memory_how` hold the run's
    peak on a GPU (the CUDA counter was always reset per task) but the process's lifetime peak on the CPU."""
    peak = _numbers(frame, "peak_memory_mb")
    known = (_text(frame, "peak_memory_how") != "") | _text(frame, "device").str.startswith("cuda")
    return peak.where(known)


def _join(labels: Iterable[str]) -> str:
    return ", ".join(labels)


def cost_columns(ours: dict[str, pd.DataFrame], labels: Sequence[str],
                 parts: Sequence[str]) -> tuple[dict[str, list[float]], list[str]]:
    """The chosen cost columns for the table's rows (`labels`, in order; `ours`: each row of our records -> its
    records, a published row has none) and the notes that say what each column is and why a cell is empty."""
    flops = {label: _numbers(rows, "prefill_tflops") for label, rows in ours.items()}
    measured = [label for label in labels if label in ours and flops[label].notna().any()]
    values = {
        "flops": {label: float(flops[label].mean()) for label in measured},
        "latency": {label: float(_numbers(ours[label], "prefill_latency_s").mean()) * 1e3 for label in measured},
        "decode": {label: float(_numbers(ours[label], "decode_tokens_per_s").mean()) for label in measured},
        "memory": {label: float(run_peaks(ours[label]).max()) for label in measured},
        "weights": {label: float(_numbers(ours[label], "weight_mb_stored").max()) for label in measured},
        "tokens": {label: float(_numbers(ours[label], "visual_tokens_kept").mean()) for label in measured},
        "layers": {label: float(_numbers(ours[label], "visual_tokens_layer_mean").mean()) for label in measured},
        "encoder": {label: float(_numbers(ours[label], "prefill_tflops_encoder").mean()) for label in measured},
        "projector": {label: float(_numbers(ours[label], "prefill_tflops_projector").mean()) for label in measured},
        "throughput": {label: float(_numbers(ours[label], "questions_per_s").mean()) for label in measured},
    }
    # the vision parts in the unit of the whole prefill's column, so the three read side by side
    flops_largest = max((v for v in values["flops"].values() if not math.isnan(v)), default=0.0)
    columns: dict[str, list[float]] = {}
    notes: list[str] = []
    for part in parts:
        found = {k: v for k, v in values[part].items() if not math.isnan(v)}
        largest = flops_largest if part in ("encoder", "projector") else max(found.values(), default=0.0)
        header, factor, note = _describe(part, largest, ours, measured)
        columns[header] = [found.get(label, float("nan")) * factor for label in labels]
        notes.append(f"{header}: {note}")
        empty = [label for label in measured if label not in found]
        if empty:
            notes.append(f"{header}: – for {_join(empty)}: {_why_empty(part)}")
        if part == "memory":
            low = [label for label in found if _text(ours[label], "peak_memory_how").str.contains(LOWER_BOUND).any()]
            if low:
                notes.append(f"{header}: a lower bound for {_join(low)} (the RSS high-water mark could not be reset "
                             "at the run start: the highest RSS sampled during the run)")
    unmeasured = [label for label in labels if label not in measured]
    published = [label for label in unmeasured if label not in ours]
    old = [label for label in unmeasured if label in ours]
    if parts and published:
        notes.append(f"cost columns: – for {_join(published)}: published numbers carry no measured cost")
    if parts and old:
        notes.append(f"cost columns: – for {_join(old)}: its records predate the cost axis (run them again with "
                     "--force to measure it)")
    partial = [label for label in measured if flops[label].isna().any()]
    if parts and partial:
        notes.append(f"cost columns: {_join(partial)} from some of its tasks only (the others' records predate the "
                     "cost axis)")
    return columns, notes


def _describe(part: str, largest: float, ours: dict[str, pd.DataFrame],
              measured: list[str]) -> tuple[str, float, str]:
    """(header, factor from the record's unit, what the column is)."""
    if part == "flops":
        unit, factor = flop_unit(largest)
        return (f"Prefill {unit}", factor, "per sample, vision encoder + projector + language model (decoder linears "
                "+ attention + LM head + a token method's scoring), dense weights, mean over the row's tasks; in the "
                "unit of the table's largest value (records made before the vision side was counted hold the "
                "language model's alone)")
    if part in ("encoder", "projector"):
        unit, factor = flop_unit(largest)
        what = "the vision encoder's" if part == "encoder" else "the projector's"
        return (f"{part.capitalize()} {unit}", factor, f"{what} part of the prefill FLOPs (tamp/inference/"
                "vision_flops.py), per sample, mean over the row's tasks")
    if part == "tokens":
        return TOKENS, 1.0, "visual tokens per sample left after the token method's last drop (all of them for a " \
                            "method that drops none), mean over the row's tasks"
    if part == "layers":
        return LAYER_TOKENS, 1.0, "visual tokens per sample each decoder layer ran on, mean over the layers (how a " \
                                  "staged method's budget is counted: PDrop, SparseVLM), mean over the row's tasks"
    if part == "latency":
        devices = sorted({d for label in measured for d in _text(ours[label], "device") if d})
        on = f" (measured on {_join(devices)})" if devices else ""
        return LATENCY, 1.0, f"each task's median prefill wall time per sample, mean over the row's tasks{on}"
    if part == "decode":
        return DECODE, 1.0, "tokens generated per second while decoding (per process), mean over the row's tasks " \
                            "that generate"
    if part == "throughput":
        sizes = sorted({cost_text(b) for label in measured for b in _numbers(ours[label], "batch_size").dropna()})
        at = f" (at batch size {_join(sizes)})" if sizes else ""
        return THROUGHPUT, 1.0, ("evaluation questions answered per second of each task's evaluation (generation, "
                                 f"data and scoring), mean over the row's tasks{at}")
    if part == "weights":
        unit, factor = memory_unit(largest)
        return (f"Weights {unit}", factor, "the weights as the row's artifact stores them (a quantized one packed, "
                "in compressed-tensors; pruned zeros are stored: no format here stores sparsity)")
    unit, factor = memory_unit(largest)
    return (f"Peak {unit}", factor, "the highest peak of the row's task runs, each measured from its own start: "
            "CUDA peak allocated on a GPU, peak RSS on the CPU (its high-water mark reset at the run start)")


def _why_empty(part: str) -> str:
    if part in ("encoder", "projector"):
        return ("its records predate the vision side's count, or the model has no vision tower (run them again with "
                "--force to count it)")
    if part == "layers":
        return "its records hold no visual tokens per layer (they predate the token methods' cost)"
    if part == "throughput":
        return "its records predate the throughput (run them again with --force to measure it)"
    if part == "weights":
        return "its artifact predates the weight bytes in pruning.json (prune it again to record them)"
    if part == "decode":
        return "none of its tasks generates text (multiple-choice tasks are scored without decoding)"
    if part == "memory":
        return ("its CPU records predate per-run peaks (they hold the process's lifetime peak, which is not this "
                "run's: run them again with --force)")
    return "not measured"
