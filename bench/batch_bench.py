"""Section `batch`: evaluation throughput at batch size 1 and 8 in one run, with the same answers.

The trained tiny LLaVA-NeXT (`tiny-trained-llava-next`, shipped with tamp) answers the first `limit` questions of
its held-out task (tamp_heldout_vqa) through `harness run`, once per batch size and per method: dense, and every
registered token method (`tamp methods`, kind token; each sample of a batch keeps its own number of visual tokens)
at the common budget BUDGET (`token_budget`), or at its own defaults when it maps no budget (AIM, YOPO). Each
phase's wall time is the task's evaluation time as its run record holds it; the batch-8 phase's ratio is to batch 1
of the same method, with target <= 0.5 (at least 2x the questions per second), and its details say whether the
score and every answer equal batch 1's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import Phase

MODEL = "tiny-trained-llava-next"
TASK = "tamp_heldout_vqa"
SIZES = (1, 8)
BUDGET = 0.222  # share of the visual tokens each budgeted token method keeps (128 of LLaVA-1.5's 576)
TARGET = 0.5  # batch 8's evaluation time over batch 1's: at least 2x the questions per second


def _evaluate(method: str, overrides: list[str], batch: int, limit: int, device: torch.device,
              root: Path) -> dict[str, Any]:
    """One `harness run` (into `root`); its record and its answers in document order."""
    from harness.records import headline, load_record, samples_path
    from harness.run import RunOptions, plan_run, run

    opts = RunOptions(model=MODEL, sparsity=0.0, method=method, tasks=[TASK], limit=limit, overrides=overrides,
                      output=root / f"runs-b{batch}", artifacts=root / "artifacts", device=device.type,
                      batch_size=batch, command=["bench", "batch"])
    path = plan_run(opts).records[TASK]
    run(opts)
    record = load_record(path) or {}
    rows = [json.loads(line) for line in samples_path(path).read_text().splitlines() if line.strip()]
    answers = [json.dumps(r.get("filtered_resps", r.get("resps")), sort_keys=True)
               for r in sorted(rows, key=lambda r: r.get("doc_id", 0))]
    return {"record": record, "score": headline(record.get("metrics") or {}), "answers": answers}


def cases(methods: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(method, `--set` overrides): dense, then each token method that runs on MODEL (`tamp methods --for`: not
    HoliTom, which takes video) at BUDGET, or at its defaults when it maps no budget; `methods` picks some of them by
    name (in this order)."""
    from tamp.methods.base import TokenMethod
    from tamp.methods.listing import runs_on
    from tamp.methods.registry import all_methods

    out: list[tuple[str, list[str]]] = [("dense", [])]
    for name, method in all_methods().items():
        if isinstance(method, TokenMethod) and runs_on(method, MODEL):
            out.append((name, [f"token_budget={BUDGET}"] if method.budget is not None else []))
    if methods is None:
        return out
    unknown = sorted(set(methods) - {name for name, _ in out})
    if unknown:
        raise ValueError(f"batch: unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(name for name, _ in out)}")
    return [case for case in out if case[0] in methods]


def run(device: torch.device, limit: int = 64, methods: list[str] | None = None, repeats: int = 2) -> list[Phase]:
    """Per method: batch 1 and batch 8 in turn, `repeats` times (a shared machine's load comes and goes: each
    phase's time is its fastest run, every run's time is kept in `times_s`)."""
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        for method, overrides in cases(methods):
            runs: dict[int, list[dict[str, Any]]] = {batch: [] for batch in SIZES}
            failed: dict[int, str] = {}
            for rep in range(repeats):
                for batch in SIZES:
                    if batch in failed:
                        continue
                    try:
                        runs[batch].append(_evaluate(method, overrides, batch, limit, device, Path(tmp) / f"r{rep}"))
                    except Exception as exc:  # recorded; the other phases still run
                        failed[batch] = f"{type(exc).__name__}: {exc}"
            base: dict[str, Any] | None = None
            for batch in SIZES:
                phase = Phase("batch", f"{MODEL} {method}{''.join(' ' + o for o in overrides)} {TASK}[:{limit}] "
                                       f"batch {batch}")
                phases.append(phase)
                if batch in failed:
                    phase.status, phase.reason = "error", failed[batch]
                    continue
                times = [(r["record"].get("throughput") or {}).get("eval_s") for r in runs[batch]]
                got = min(runs[batch], key=lambda r: (r["record"].get("throughput") or {}).get("eval_s") or 0.0)
                record = got["record"]
                speed, cost = record.get("throughput") or {}, record.get("cost") or {}
                phase.wall_s = speed.get("eval_s")
                phase.times_s = [t for t in times if t is not None]
                # the run's own peak as its record holds it (CUDA peak on a GPU, RSS high-water mark on the CPU)
                peak = cost.get("peak_memory_mb")
                if device.type == "cuda":
                    phase.peak_gpu_mb = peak
                else:
                    phase.peak_cpu_rss_mb = peak
                phase.details = {"method": method, "overrides": overrides, "batch_size": batch,
                                 "questions": speed.get("questions"),
                                 "questions_per_s": speed.get("questions_per_s"), "score": list(got["score"]),
                                 "prefill_s_per_batch": cost.get("prefill_s_per_batch"),
                                 "decode_s_per_batch": cost.get("decode_s_per_batch"), "repeats": len(times)}
                if base is None:
                    base = got | {"wall_s": phase.wall_s}
                else:
                    phase.set_ratio(base["wall_s"], f"{method} batch 1", TARGET)
                    same = all(r["score"] == base["score"] for r in runs[batch])
                    phase.details["same_score"] = same
                    phase.details["same_answers"] = all(r["answers"] == base["answers"] for r in runs[batch])
                    if not (phase.details["same_score"] and phase.details["same_answers"]):
                        phase.met = False
                        phase.reason = "answers differ from batch 1"
    return phases
