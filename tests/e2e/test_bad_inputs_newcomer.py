"""What a newcomer trips on, as a user types it (issue 30's newcomer items): a one-line `--set` typo refused before
torch loads, missing data said once per sweep, `tamp methods` naming what each token method needs.

The import rows run the command in a process of its own (this one has torch loaded already) and ask it, after the
error, whether torch, transformers or lmms-eval were imported.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import harness.cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "lmms_eval")

# the command in a fresh interpreter: its exit code, then which heavy modules it imported, one JSON line on stdout
PROBE = ("import json, sys\nfrom {module} import main\ncode = main(sys.argv[1:])\n"
         "print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\nsys.exit(code)\n")


def row(id: str, cli: str, args: str, fragment: str) -> Any:
    return pytest.param(cli, args, fragment, id=id)


LIGHT_ROWS = [
    row("run-set-unknown", "harness", "run --model tiny-llava-next --sparsity 0.5 --set nosuch=1",
        "unknown config field 'nosuch'; fields: aim_iters"),
    row("run-set-syntax", "harness", "run --model tiny-llava-next --sparsity 0.5 --set owl_m",
        "--set expects FIELD=VALUE, got 'owl_m'"),
    row("run-set-type", "harness", "run --model tiny-llava-next --method tamp --sparsity 0.5 --set amia_k=x",
        "--set amia_k: 'x' is not a valid int"),
    row("sweep-set-unknown", "harness", "sweep --model tiny-llava-next --methods wanda --sparsities 0.5 "
        "--set nosuch=1", "unknown config field 'nosuch'"),
    row("prune-set-unknown", "tamp", "prune --model tiny-llava-next --sparsity 0.5 --set nosuch=1 --out {tmp}/o",
        "unknown config field 'nosuch'; fields: aim_iters"),
    row("prune-set-bool", "tamp", "prune --model tiny-llava-next --set prune_vision=maybe --out {tmp}/o",
        "--set prune_vision: 'maybe' is not a valid bool"),
    row("prune-sparsity", "tamp", "prune --model tiny-llava-next --sparsity 1.5 --out {tmp}/o",
        "--sparsity must be in [0, 1), got 1.5"),
    row("prune-nsamples", "tamp", "prune --model tiny-llava-next --nsamples 0 --out {tmp}/o",
        "--nsamples must be at least 1, got 0"),
]


@pytest.mark.parametrize("cli, args, fragment", LIGHT_ROWS)
def test_a_flag_typo_is_refused_before_the_ml_stack_loads(cli: str, args: str, fragment: str, tmp_path: Path) -> None:
    module = "tamp.cli" if cli == "tamp" else "harness.cli"
    argv = shlex.split(args.format(tmp=tmp_path))
    if cli == "harness" and argv[0] == "run":
        argv += ["--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "art")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY), *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], "imported before the error: " + proc.stdout
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


def test_the_early_error_is_the_recipes_error() -> None:
    """The early check and the recipe's own refuse with the same words (the list of fields included)."""
    from tamp.errors import TampError
    from tamp.overrides import precheck
    from tamp.recipe import parse_overrides

    for item in ("nosuch=1", "amia_k=x", "owl_m", "token_budget=half"):
        with pytest.raises(TampError) as early:
            precheck([item])
        with pytest.raises(TampError) as late:
            parse_overrides([item])
        assert str(early.value) == str(late.value)


def _forbid(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a model was loaded or pruned although its data is missing")


def test_missing_data_is_said_once_per_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Five cells share two missing datasets (offline): each is one line for the sweep, not one per cell, and no
    cell is started; the failed cells are summed up in one line."""
    monkeypatch.setattr("tamp.pipeline.load_model", _forbid)
    monkeypatch.setattr("harness.cache.ensure_artifact", _forbid)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["sweep", "--model", "tiny-llava-next", "--methods", "magnitude,wanda", "--sparsities", "0.3,0.5",
            "--tasks", "textvqa_val,pope", "--limit", "1", "--device", "cpu", "--output", str(tmp_path / "runs"),
            "--artifacts", str(tmp_path / "art"), "--out-dir", str(tmp_path / "sweep"),
            "--csv", str(tmp_path / "sweep" / "lb.csv")]
    assert harness.cli.main(argv) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    for dataset in ("lmms-lab-encoder/textvqa", "lmms-lab-encoder/POPE"):
        assert text.count(f"needs the dataset '{dataset}'") == 1, text
    assert "5 of 5 cell(s) cannot run" in captured.err, captured.err
    assert "===" not in captured.out  # no cell was started
    failed = [line for line in captured.err.splitlines() if line.startswith("  - ") and "dense 0%" in line]
    assert len(failed) == 1 and "wanda 50%" in failed[0] and "data is missing" in failed[0], captured.err
    assert "no finished cells yet" in captured.out
