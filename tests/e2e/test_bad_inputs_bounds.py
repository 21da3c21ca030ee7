"""Values the model bounds, as a user types them: refused in one `error: ...` line (exit 2) before any model is
loaded (`tamp prune`) or pruned (`harness run`), the depth read from the model's config.json where its family says
(tamp.families.registry.depth); and the executor's bounded wait, set in the grid file's `executor:` block.

The rows are tests/e2e/test_bad_inputs.py's kind; `{name}` stands for a path the fixture below makes. The tiny
models have 4 decoder layers.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

import harness.cli
import tamp.cli


def row(id: str, cli: str, args: str, fragment: str) -> Any:
    return pytest.param(cli, args, fragment, id=id)


def grid_yaml(body: str) -> str:
    return "models: [tiny-llava-next]\nmethods: [magnitude]\nsparsities: [0.5]\ntasks: [tamp_smoke_vqa]\n" + body


ROWS = [
    # ---- tamp prune: checked from the config before the model is loaded (they loaded it first)
    row("prune-fastv-k-beyond", "tamp", "prune --model {tiny} --out {out} --method fastv --set fastv_k=99",
        "error: --method fastv: fastv_k 99 is beyond this model's 4 decoder layers; set it to at most 3"),
    row("prune-fastv-k-at-depth", "tamp", "prune --model {tiny} --out {out} --method wanda+fastv --set fastv_k=4",
        "error: --method fastv: fastv_k 4 is beyond this model's 4 decoder layers; set it to at most 3"),
    row("prune-aim-start-beyond", "tamp", "prune --model {tiny} --out {out} --method aim --set aim_prune_start=99",
        "error: --method aim: aim_prune_start 99 leaves no layer to prune after: this model has 4 decoder layers"),
    row("prune-fastv-text-lm", "tamp", "prune --model {llama} --out {out} --method fastv",
        "error: --method fastv: fastv removes visual tokens, but a llama model takes text only"),
    row("prune-fastv-omni-thinker-depth", "tamp", "prune --model {omni} --out {out} --method fastv --set fastv_k=9",
        "error: --method fastv: fastv_k 9 is beyond this model's 4 decoder layers; set it to at most 3"),
    # ---- YOPO's explicit layer: refused at plan time, not after calibration and the fit
    row("prune-yopo-layer-beyond", "tamp", "prune --model {tiny} --out {out} --method yopo --set yopo_layer=99",
        "error: --method yopo: yopo_layer 99 is beyond this model's 4 decoder layers; set it to at most 4 (or -1: "
        "the layer from yopo_budget)"),
    row("prune-yopo-layer-without-layers", "tamp", "prune --model {tiny} --out {out} --method yopo "
        "--set yopo_strategies=ffn --set yopo_layer=2", "error: --method yopo: yopo_layer 2 is set, but yopo_strategies "
        "ffn has no 'layers', so nothing is cut there; add layers to yopo_strategies, or leave yopo_layer at -1"),
    row("run-yopo-layer-without-layers", "harness", "run --model {tiny} --tasks tamp_smoke_vqa --method yopo "
        "--sparsity 0 --set yopo_strategies=heads+attn --set yopo_layer=1", "error: --method yopo: yopo_layer 1 is set"),
    row("prune-wanda-yopo-layer-beyond", "tamp", "prune --model {tiny} --out {out} --method wanda+yopo "
        "--set yopo_layer=5 --set yopo_semantics=removal", "error: --method yopo: yopo_layer 5 is beyond this model's 4"),
    row("run-yopo-layer-beyond", "harness", "run --model {tiny} --tasks tamp_smoke_vqa --method yopo --sparsity 0 "
        "--set yopo_layer=5", "error: --method yopo: yopo_layer 5 is beyond this model's 4 decoder layers; set it to at "
        "most 4"),
    # ---- the executor's wait for a node that fits a cell: bounded, by a number of seconds
    row("grid-node-wait-negative", "harness", "grid {grids}/waitneg.yaml --dry-run",
        "executor: node_wait must be an integer >= 0, got -1"),
    row("grid-node-wait-text", "harness", "grid {grids}/waittext.yaml --dry-run",
        "executor: node_wait must be an integer >= 0, got 'forever'"),
]


@pytest.fixture(scope="module")
def paths(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-bounds")
    grids = root / "grids"
    grids.mkdir()
    (grids / "waitneg.yaml").write_text(grid_yaml("executor: {node_wait: -1}\n"))
    (grids / "waittext.yaml").write_text(grid_yaml("executor: {node_wait: forever}\n"))
    return {"tiny": str(tiny_model("llava-next")), "llama": str(tiny_model("llama")),
            "omni": str(tiny_model("qwen2.5-omni")), "grids": str(grids)}


def _forbid(what: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} although the input is bad and checkable before")

    return fail


@pytest.mark.parametrize("cli, args, fragment", ROWS)
def test_bad_bound(cli: str, args: str, fragment: str, paths: dict[str, str], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tamp.pipeline.load_model", _forbid("a model was loaded"))
    monkeypatch.setattr("harness.cache.ensure_artifact", _forbid("a model was pruned"))
    argv = shlex.split(args.format(**paths, out=tmp_path / "out"))
    if cli == "harness" and argv[0] == "run":
        argv = ["run", "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "art"), *argv[1:]]
    got = (tamp.cli.main if cli == "tamp" else harness.cli.main)(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "art").exists()


def test_a_model_not_on_disk_yet_is_checked_once_loaded_before_calibrating(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`tiny-llava-next` in an empty cache: no config.json to read before loading (it is built by the load), so
    YOPO's layer is refused right after the load, before the calibration and the fit it used to wait for."""
    monkeypatch.setenv("TAMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tamp.pipeline.build_calibration", _forbid("calibration data was drawn"))
    got = tamp.cli.main(["prune", "--model", "tiny-llava-next", "--method", "yopo", "--set", "yopo_layer=7",
                         "--out", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == 2 and lines[-1] == ("error: --method yopo: yopo_layer 7 is beyond this model's 4 decoder layers; "
                                      "set it to at most 4 (or -1: the layer from yopo_budget)"), lines
    assert (tmp_path / "cache" / "tiny" / "llava-next-seed0" / "config.json").is_file()  # it was loaded, built here
    assert not (tmp_path / "out").exists()
