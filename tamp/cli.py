"""The `tamp` command: build-tiny, prune, inspect, methods."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tamp.errors import TampError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tamp", description="Prune (multimodal) LLMs layer by layer.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-tiny", help="write a tiny random (or --trained) model of a family (offline, deterministic)")
    b.add_argument("--family", required=True)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--trained", action="store_true",
                   help="train it on generated picture questions (llava-next; a few minutes on 2 CPU cores)")
    b.add_argument("--ship", action="store_true",
                   help="with --trained: also copy the build into the package (tamp/testing/trained/<family>/) and "
                   "rewrite its manifest: the weights `tiny-trained-<family>` loads from then on")

    r = sub.add_parser("prune", help="prune a model and write an artifact directory")
    r.add_argument("--model", required=True, help="registry name, HF id, local directory or .gguf file")
    r.add_argument("--method", default="wanda",
                   help="a registered method, or WEIGHT+TOKEN (tamp+fastv); `tamp methods` lists them")
    r.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero, in [0, 1) "
                   "(default 0.5; --method dense takes 0)")
    r.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8 (N zeroed of every M)")
    r.add_argument("--calib", default=None, help="LLaVA .json[:IMAGE_DIR] | synthetic | picture-qa | text:FILE[,FILE...]")
    r.add_argument("--nsamples", type=int, default=128)
    r.add_argument("--seqlen", type=int, default=2048, help="tokens per text calibration segment")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    r.add_argument("--offload", action="store_true", help="keep only the current block on the device")
    r.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    r.add_argument("--revision", default=None)
    r.add_argument("--prune-vision", action="store_true", help="also prune the vision tower's linears")
    r.add_argument("--blocksize", type=int, default=None, help="SparseGPT lazy-update block (default 128)")
    r.add_argument("--percdamp", type=float, default=None, help="SparseGPT dampening (default 0.01)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a run field or a parameter of a method the run uses, e.g. --set das_mode=paper with "
                   "--method tamp (see docs/fidelity.md)")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("inspect", help="print an artifact's sparsity report")
    i.add_argument("dir", type=Path)
    i.add_argument("--summary", action="store_true", help="totals only, no per-matrix table")

    m = sub.add_parser("methods", help="list every registered method (plugins included): parameters, defaults, source")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("--for", dest="model", metavar="MODEL",
                   help="only the methods that run on this model (its config.json on disk: a folder, a tiny or shipped "
                        "build, or the HF cache); token methods its family, depth or encoder rules out are left out")
    return p


def main(argv: list[str] | None = None) -> int:
    from tamp.console import run_command

    args = _parser().parse_args(argv)
    left = {"prune": "an artifact is moved into --out only once it is complete, so nothing half-written is left",
            "build-tiny": "--out may hold a partly written model: build it again"}
    return run_command(lambda: _run(args), (TampError,), left.get(args.command, "nothing was written"))


def _precheck_prune(args: argparse.Namespace) -> None:
    """The flags checkable without the ML stack: `--set` items (syntax, field, type), the sparsity range and the
    calibration draw's numbers; everything else is the recipe's check, after the imports."""
    from tamp.config import check_sparsity
    from tamp.overrides import precheck
    from tamp.params import RUN_PARAMS

    if args.sparsity is not None:
        check_sparsity(args.sparsity)
    run = {p.name: p for p in RUN_PARAMS}
    for name in ("nsamples", "seqlen"):
        problem = run[name].problem(getattr(args, name))
        if problem:
            raise TampError(problem)
    precheck(args.overrides)


def _run(args: argparse.Namespace) -> int:
    if args.command == "build-tiny":
        from tamp.paths import output_problem

        problem = output_problem(args.out, directory=True)
        if problem is not None:
            raise TampError(f"--out {args.out}: {problem}")
        if args.ship and (not args.trained or args.seed != 0):
            raise TampError("--ship copies the registry's trained model into the package: it takes --trained and "
                            "seed 0")
        try:  # the builders are test scaffolding (tamp.testing): imported only here, for the build asked for
            if args.trained:
                from tamp.testing.tiny_training import build_trained_tiny

                out = build_trained_tiny(args.family, args.out, seed=args.seed, log=True)
            else:
                from tamp.testing.tiny import build_tiny

                out = build_tiny(args.family, args.out, seed=args.seed)
        except ValueError as exc:
            raise TampError(str(exc)) from None
        print(f"wrote {'trained' if args.trained else 'tiny'} {args.family} model to {out}")
        if args.ship:
            from tamp.testing.shipped import ship
            from tamp.testing.tiny_training import provenance

            shipped = ship(out, args.family, provenance=provenance())
            print(f"shipped it as tiny-trained-{args.family}: {shipped} (commit it with its manifest, "
                  f"{shipped.parent / (args.family + '.json')})")
        return 0
    if args.command == "prune":
        _precheck_prune(args)  # a typo is refused before torch and transformers load
        from tamp.inspect_report import format_report
        from tamp.pipeline import prune
        from tamp.recipe import build_recipe, parse_overrides

        flags = {"blocksize": args.blocksize, "percdamp": args.percdamp}
        recipe = build_recipe(
            args.method, args.sparsity, pattern=args.pattern, calib=args.calib, nsamples=args.nsamples,
            seqlen=args.seqlen, seed=args.seed, prune_vision=args.prune_vision, dtype=args.dtype,
            overrides={**{k: v for k, v in flags.items() if v is not None}, **parse_overrides(args.overrides)})
        info = prune(args.model, recipe, args.out, device=args.device, offload=args.offload, revision=args.revision,
                     overwrite=args.overwrite)
        print(format_report(info, per_matrix=False))
        print(f"wrote {args.out}")
        return 0
    if args.command == "inspect":
        from tamp.inspect_report import inspect_artifact

        print(inspect_artifact(args.dir, per_matrix=not args.summary))
        return 0
    if args.command == "methods":
        from tamp.methods.listing import render

        print(render(as_json=args.json, model=args.model))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
