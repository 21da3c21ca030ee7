"""`python -m bench.run --size cpu|8b`: run the benchmark sections, print a table, write one JSON per run.

Sections (see bench/README.md): amia (fast vs reference vs compute floor), engine (tamp's sequential engine vs a
naive full-forward-per-layer capture), smollm2 (whole prunes vs one dense forward on the real SmolLM2-135M),
peers (llm-compressor on the same model and tokens), 8b (TAMP on llama3-llava-next-8b's shape, CUDA only),
tokens (every token method's prefill time against its FLOPs at three budgets of 576 visual tokens).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported anywhere: no progress bars in the table
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    SCHEMA,
    Phase,
    device_info,
    git_commit,
    utc_stamp,
    versions,
    write_json_atomic,
)
from tamp.devices import NoCudaDevice, choose_device  # noqa: E402

SECTIONS = ("amia", "engine", "smollm2", "peers", "8b", "tokens", "batch")
DEFAULT_SECTIONS = {"cpu": ("amia", "engine", "smollm2", "peers", "tokens"), "8b": ("amia", "8b", "tokens")}
SMOLLM2_METHODS = ("wanda", "sparsegpt", "amia", "tamp", "gptq-w4g64", "sparsegpt+gptq-w4g64")
LIMITED_PRESETS = ("amia", "tamp")  # AMIA's per-sample statistics take ~15x a dense forward on 2 cores
CPU_8B_MESSAGE = ("bench: --size 8b needs a CUDA GPU (none visible); use --size 8b --dry (or --layers 2 --samples 2 "
                  "--tokens 300) for the scaled-down CPU variant of the same code path")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("cpu", "8b"), default="cpu")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="folder for <UTC stamp>-<size>.json")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default: per size)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the cheap AMIA timings (median)")
    p.add_argument("--ref-limit", type=float, default=120.0, help="seconds allowed to one AMIA reference run")
    p.add_argument("--amia-tokens", help="image-token counts of the AMIA cases, e.g. 576,2880 (default)")
    p.add_argument("--amia-dim", default="1024,4096",
                   help="feature widths of the AMIA cases (default 1024,4096: llama3-8b's k/v and q/o/down outputs)")
    p.add_argument("--no-amia-stage", action="store_true",
                   help="skip the stage cases (one sample, the 7 linears of a llama3-8b block at widths up to 14336)")
    p.add_argument("--dense-repeats", type=int, default=3, help="repeats of the SmolLM2 dense forward (median)")
    p.add_argument("--token-repeats", type=int, default=11, help="repeats of each token-method prefill (median)")
    p.add_argument("--token-shape", choices=["cpu", "cpu-quick", "8b"], default=None,
                   help="the tokens section's model shape (default: --size's; cpu-quick: half the cpu width and depth)")
    p.add_argument("--prune-repeats", type=int, default=1, help="repeats of each SmolLM2 prune (median)")
    p.add_argument("--methods", default=",".join(SMOLLM2_METHODS),
                   help="tamp presets and compositions to run on SmolLM2 (gptq-w4g64: quantized alone)")
    p.add_argument("--preset-limit", type=float, default=180.0,
                   help="seconds allowed to the slow SmolLM2 presets (amia, tamp) before they are stopped and "
                        "extrapolated (status partial); 0 = no limit")
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity evaluations")
    p.add_argument("--no-naive-smollm2", action="store_true", help="engine section on the tiny model only")
    p.add_argument("--peer-methods", default="wanda,sparsegpt,gptq",
                   help="llm-compressor runs beside tamp's: wanda, sparsegpt (50%%), gptq (W4A16)")
    p.add_argument("--peer-python", default=os.environ.get("BENCH_PEER_PYTHON") or None,
                   help="interpreter with llmcompressor installed, another venv (default: $BENCH_PEER_PYTHON)")
    p.add_argument("--tiny-samples", type=int, default=16)
    p.add_argument("--tiny-seqlen", type=int, default=64)
    p.add_argument("--tiny-root", type=Path, help="where to build the tiny model (default: a temporary folder)")
    p.add_argument("--dry", action="store_true", help="8b: the scaled-down shape (2 layers, 2 x 300 tokens, width 256)")
    p.add_argument("--layers", type=int, help="8b: decoder layers")
    p.add_argument("--samples", type=int, help="8b: calibration samples")
    p.add_argument("--tokens", type=int, help="8b: tokens per sample (~97%% image)")
    p.add_argument("--method", default="tamp", help="8b: the tamp preset to run (default tamp)")
    p.add_argument("--no-offload", action="store_true", help="8b: keep the whole model on the device")
    p.add_argument("--batch-limit", type=int, default=64,
                   help="batch: held-out questions evaluated at each batch size (default 64)")
    p.add_argument("--batch-repeats", type=int, default=2,
                   help="batch: runs of each batch size, alternating (each phase keeps its fastest; default 2)")
    p.add_argument("--batch-methods", help="batch: comma-separated methods (default: dense and every token method)")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    """auto -> CUDA when visible, else cpu; any other name as given (tamp's picker, which refuses absent CUDA)."""
    return torch.device(choose_device(name))


def amia_cases(args: argparse.Namespace, size: str) -> list[Any]:
    from bench.amia_bench import AmiaCase, StageCase

    dims = [int(d) for d in str(args.amia_dim).split(",") if d.strip()]
    counts = [int(c) for c in (args.amia_tokens or "576,2880").split(",") if c.strip()]
    text = {576: 40, 2880: 100}
    cases = [AmiaCase(n, text.get(n, max(4, round(n * 0.05))), dim) for dim in dims for n in counts]
    last = cases[-1]
    cases.append(AmiaCase(last.n_image, last.n_text, dims[0], mmd_factor=0.01))  # stress the greedy loop
    if not args.no_amia_stage:  # one sample's whole stage: the 7 linears of a llama3-8b block, as the engine runs it
        cases += [StageCase(n, text.get(n, max(4, round(n * 0.05)))) for n in counts]
    return cases


# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------


def _log(line: str) -> None:
    print(line, flush=True)


def run_sections(args: argparse.Namespace, device: torch.device, sections: tuple[str, ...],
                 log: Any = _log) -> list[Phase]:
    """Run the requested sections in order; a failing section is recorded, the others still run."""
    phases: list[Phase] = []
    ctx = None

    def add(new: list[Phase]) -> None:
        for p in new:
            log(f"  {p.section:<15} {p.name:<52} {p.status:<7} "
                + (f"{p.wall_s:9.3f} s" if p.wall_s is not None else " " * 11)
                + (f"  x{p.ratio:.2f} {p.ratio_to}" if p.ratio is not None else "")
                + (f"  ({p.reason})" if p.reason else ""))
        phases.extend(new)

    if "amia" in sections:
        from bench import amia_bench

        log("[1/5] AMIA: fast vs reference vs similarity floor")
        add(amia_bench.run(args.size, device, repeats=args.repeats, ref_limit_s=args.ref_limit,
                           cases=amia_cases(args, args.size)))
    needs_smollm2 = "smollm2" in sections or "peers" in sections or ("engine" in sections and not args.no_naive_smollm2)
    if "engine" in sections:
        from bench import engine_bench

        log("[2/5] engine: tamp sequential Wanda vs naive full forward per layer")
        add(engine_bench.run_tiny(device, args.tiny_samples, args.tiny_seqlen, args.tiny_root))
    if needs_smollm2:
        from bench import engine_bench

        log("[3/5] SmolLM2-135M: load")
        ctx, load_phase = engine_bench.load_smollm2(device)
        add([load_phase])
        if ctx is not None:
            ctx.eval_ppl = not args.no_ppl
            if "engine" in sections and not args.no_naive_smollm2:
                log("[2/5] engine: the same on SmolLM2 (reduced calibration)")
                add(engine_bench.run_smollm2_naive(ctx))
            if "smollm2" in sections or "peers" in sections:
                log("[3/5] SmolLM2-135M: dense forward unit and whole prunes")
                add(engine_bench.run_dense(ctx, args.dense_repeats))
            if "smollm2" in sections:
                for method in [m for m in args.methods.split(",") if m]:
                    limit = args.preset_limit if method in LIMITED_PRESETS and args.preset_limit > 0 else None
                    add([engine_bench.run_method(ctx, method, args.prune_repeats, limit,
                                                 adjacent_unit=method in engine_bench.TARGETS)])
    _combine_tamp_estimate(phases)
    if "peers" in sections:
        from bench import peers

        log("[4/5] peers: llm-compressor")
        add(peers.run(ctx, args.peer_python, tuple(m for m in args.peer_methods.split(",") if m), threads=args.threads))
    if "8b" in sections:
        from bench import synthetic_8b

        shape = synthetic_8b.shape_from_args(args.dry, args.layers, args.samples, args.tokens)
        log(f"[5/5] 8b: {synthetic_8b.describe(shape)} on {device}")
        add(synthetic_8b.run(device, shape, args.method, offload=not args.no_offload))
    if "tokens" in sections:
        from bench import token_bench

        log(f"[6/6] tokens: every token method's prefill time and FLOPs at three budgets ({args.size} shape)")
        add(token_bench.run(args.token_shape or args.size, device, repeats=args.token_repeats))
    if "batch" in sections:
        from bench import batch_bench

        log(f"[7/7] batch: {batch_bench.MODEL}'s held-out questions at batch size 1 and 8 (questions per second)")
        add(batch_bench.run(device, limit=args.batch_limit, repeats=args.batch_repeats,
                            methods=args.batch_methods.split(",") if args.batch_methods else None))
    return phases


def _combine_tamp_estimate(phases: list[Phase]) -> None:
    """A TAMP prune stopped before its AMIA sweep gave a per-layer rate: DAS part + the amia preset's total.

    The DAS part is its sweep extrapolated (stopped in sweep 1) or the time until sweep 2 began (stopped there).
    """
    by_name = {p.details.get("preset"): p for p in phases if p.section == "smollm2" and "preset" in p.details}
    tamp, amia = by_name.get("tamp"), by_name.get("amia")
    if tamp is None or amia is None or tamp.status != "partial" or "estimated_total_s" in tamp.details:
        return
    d = tamp.details
    amia_total = amia.wall_s if amia.status == "ok" else amia.details.get("estimated_total_s")
    if d.get("sweeps_started") == 1:
        das = d.get("current_sweep_estimated_s")
    elif d.get("sweeps_started") == 2:
        das = d.get("current_sweep_started_s")
    else:
        das = None
    if das is None or amia_total is None:
        return
    d["estimated_total_s"] = das + amia_total
    d["estimate_basis"] = "DAS allocation sweep (measured or extrapolated) + the amia preset's (estimated) total"
    unit = next((p.wall_s for p in phases if p.name.startswith("UNIT dense forward")), None)
    if unit:
        tamp.ratio, tamp.ratio_to = d["estimated_total_s"] / unit, "dense forward (estimated)"


def summarise(phases: list[Phase]) -> dict[str, Any]:
    """Targets (met / not met) and headline ratios."""
    targets = []
    for p in phases:
        if p.target is not None:
            targets.append({"phase": f"{p.section}: {p.name.strip()}", "ratio": p.ratio, "ratio_to": p.ratio_to,
                            "wall_s": p.wall_s, "target": p.target, "met": p.met})
        if p.details.get("gpu_target_gb") is not None:
            targets.append({"phase": f"{p.section}: {p.name.strip()} (peak GPU GB)",
                            "value": (p.peak_gpu_mb or 0) / 1024, "target": p.details["gpu_target_gb"],
                            "met": p.details.get("gpu_met")})
    identical = [p.details["identical"] for p in phases if p.section == "amia" and "identical" in p.details]
    return {"targets": targets, "all_targets_met": all(t["met"] for t in targets) if targets else None,
            "amia_identical": all(identical) if identical else None,
            "errors": [f"{p.section}: {p.name.strip()}: {p.reason}" for p in phases if p.status == "error"],
            "skipped": [f"{p.section}: {p.name.strip()}: {p.reason}" for p in phases if p.status == "skipped"]}


def _notes(p: Phase) -> str:
    d = p.details
    parts = []
    if "identical" in d:
        parts.append(f"identical={d['identical']}")
    if "selected_tokens" in d and p.section == "amia":
        parts.append(f"selected={d['selected_tokens']}/{d.get('tokens')}")
    if "speedup_vs_reference" in d:
        parts.append(f"ref/fast={d['speedup_vs_reference']:.2f}")
    if "greedy_s" in d:
        parts.append(f"prepare={d['prepare_s']:.3f}s greedy={d['greedy_s']:.3f}s")
    if "masks_identical" in d:
        parts.append(f"masks identical={d['masks_identical']} agree={d['mask_agreement']:.6f}")
    if "engine_timings" in d:
        short = {"allocation": "alloc", "capture": "cap", "statistics": "stats", "masks": "masks", "rerun": "rerun"}
        shown = " ".join(f"{short.get(k, k)}={v:.1f}" for k, v in d["engine_timings"].items() if v >= 0.05)
        if shown:
            parts.append(shown)
    if "estimated_total_s" in d:
        basis = "DAS + amia preset" if "estimate_basis" in d else \
            f"{d.get('layers_done_in_current_sweep')} layers of sweep {d.get('sweeps_started')}/{d.get('sweeps_expected')}"
        parts.append(f"est. total {d['estimated_total_s']:.0f}s ({basis})")
    elif p.status == "partial" and "sweeps_started" in d:
        parts.append(f"no estimate: sweep {d.get('sweeps_started')}/{d.get('sweeps_expected')}, "
                     f"{d.get('layers_done_in_current_sweep')} layers done")
    if "unattributed_s" in d and d["unattributed_s"] is not None and d["unattributed_s"] >= 0.5:
        parts.append(f"other={d['unattributed_s']:.1f}")
    if "ratio_adjacent" in d:
        parts.append(f"{d['ratio_adjacent']:.2f}x an adjacent dense fwd ({d['dense_forward_adjacent_s']:.1f}s)")
    if "ratio_local" in d:
        parts.append(f"{d['ratio_local']:.2f}x its own adjacent dense fwd ({d['dense_forward_local_s']:.1f}s)")
    if "ppl" in d:
        ref = f" (ref {d['reference_ppl']})" if "reference_ppl" in d else ""
        parts.append(f"ppl={d['ppl']:.2f}{ref}")
    if "sparsity" in d and p.section != "engine-vs-naive":
        parts.append(f"sparsity={d['sparsity']:.4f}")
    if "selected_tokens" in d and "candidate_tokens" in d:
        parts.append(f"AMIA kept {d['selected_tokens']}/{d['candidate_tokens']} tok")
    if "image_tokens_recognised" in d:
        parts.append(f"image tokens/sample={d['image_tokens_recognised']}")
    if p.reason:
        parts.append(p.reason)
    return "; ".join(parts)


def table(phases: list[Phase]) -> str:
    from tabulate import tabulate

    rows = []
    for p in phases:
        ratio = "" if p.ratio is None else f"{p.ratio:.2f}x {p.ratio_to}"
        target = "" if p.target is None else f"<= {p.target:g} {'OK' if p.met else 'MISSED'}"
        rows.append([p.section, p.name.strip(), p.status, "" if p.wall_s is None else f"{p.wall_s:.3f}",
                     len(p.times_s) or "", ratio, target,
                     "" if p.peak_cpu_rss_mb is None else f"{p.peak_cpu_rss_mb:.0f}",
                     "" if p.peak_gpu_mb is None else f"{p.peak_gpu_mb:.0f}", _notes(p)])
    headers = ["section", "phase", "status", "time s", "n", "ratio", "target", "RSS MB", "GPU MB", "notes"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except NoCudaDevice as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    sections = tuple(s.strip() for s in args.sections.split(",")) if args.sections else DEFAULT_SECTIONS[args.size]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if "batch" in sections and args.batch_methods:
        from bench import batch_bench

        try:
            batch_bench.cases(args.batch_methods.split(","))
        except ValueError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    scaled = args.dry or any(v is not None for v in (args.layers, args.samples, args.tokens))
    if "8b" in sections and device.type != "cuda" and not scaled:
        print(CPU_8B_MESSAGE, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"bench --size {args.size} on {device_info(device)['name']} ({torch.get_num_threads()} torch threads); "
          f"sections: {', '.join(sections)}", flush=True)
    phases = run_sections(args, device, sections)
    total = time.perf_counter() - start
    summary = summarise(phases)
    record = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "size": args.size,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "device": device_info(device),
        "versions": versions(),
        "git_commit": git_commit(),
        "sizes": sizes(args, sections),
        "sections": list(sections),
        "total_wall_s": total,
        "phases": [p.to_dict() for p in phases],
        "summary": summary,
    }
    path = write_json_atomic(args.out / f"{utc_stamp()}-{args.size}{'-dry' if scaled and args.size == '8b' else ''}.json",
                             record)
    print()
    print(table(phases))
    print()
    for t in summary["targets"]:
        if t.get("ratio") is not None:
            value = f"{t['ratio']:.2f}x {t['ratio_to']}"
        elif t.get("value") is not None:
            value = f"{t['value']:.2f}"
        else:
            value = f"{t['wall_s']:.1f} s" if t.get("wall_s") is not None else "n/a"
        print(f"target {'met   ' if t['met'] else 'MISSED'}  {t['phase']}: {value} (target <= {t['target']:g})")
    for line in summary["skipped"]:
        print(f"skipped  {line}")
    for line in summary["errors"]:
        print(f"ERROR    {line}")
    print(f"total {total:.1f} s; wrote {path}")
    return 0


def sizes(args: argparse.Namespace, sections: tuple[str, ...]) -> dict[str, Any]:
    """The problem sizes of this run, for the JSON."""
    out: dict[str, Any] = {}
    if "amia" in sections:
        out["amia"] = [{"n_image": c.n_image, "n_text": c.n_text, "mmd_factor": c.mmd_factor,
                        **({"dim": c.dim} if hasattr(c, "dim") else {"stage_widths": dict(c.widths)})}
                       for c in amia_cases(args, args.size)]
    if "engine" in sections:
        out["engine_tiny"] = {"samples": args.tiny_samples, "seqlen": args.tiny_seqlen}
        if not args.no_naive_smollm2:
            out["engine_smollm2"] = {"samples": 2, "seqlen": 64}
    if "smollm2" in sections or "peers" in sections:
        out["smollm2"] = {"calibration": "32 x 256 (GPL-2, LGPL-2.1, MPL-2.0, Apache-2.0)", "batch_size": 8,
                          "eval": None if args.no_ppl else "GPL-3 + GFDL-1.3, 256-token windows",
                          "methods": args.methods.split(","), "sparsity": 0.5,
                          "preset_limit_s": {m: args.preset_limit for m in LIMITED_PRESETS if args.preset_limit > 0}}
    if "8b" in sections:
        from dataclasses import asdict

        from bench import synthetic_8b

        out["8b"] = asdict(synthetic_8b.shape_from_args(args.dry, args.layers, args.samples, args.tokens))
    if "tokens" in sections:
        from dataclasses import asdict

        from bench import token_bench

        out["tokens"] = {**asdict(token_bench.SHAPES[args.token_shape or args.size]), "repeats": args.token_repeats}
    if "batch" in sections:
        from bench import batch_bench

        out["batch"] = {"model": batch_bench.MODEL, "task": batch_bench.TASK, "limit": args.batch_limit,
                        "repeats": args.batch_repeats,
                        "batch_sizes": list(batch_bench.SIZES), "budget": batch_bench.BUDGET,
                        "methods": {m: o for m, o in batch_bench.cases(
                            args.batch_methods.split(",") if args.batch_methods else None)}}
    return out


if __name__ == "__main__":
    sys.exit(main())
