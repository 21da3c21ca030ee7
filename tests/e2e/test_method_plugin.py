"""A method from an installed plugin package (examples/method-plugin, registered through the `tamp.methods` entry
point): listed by `tamp methods`, pruned and evaluated by `harness run`, tabulated under its label. The package
is built and installed into a temporary folder, so the test venv stays as the lock made it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tamp.algorithms.masks import row_mask, wanda_scores
from tests.plugin_site import install_example, site_env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "method-plugin"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example("method-plugin", tmp_path_factory.mktemp("plugin"), "tamp_normpow")


def _env(site: Path) -> dict[str, str]:
    return site_env(site)


def test_plugin_is_listed(plugin_site: Path) -> None:
    out = subprocess.run([str(BIN / "tamp"), "methods", "--json"], env=_env(plugin_site), capture_output=True,
                         text=True, timeout=300, check=True).stdout
    row = next(r for r in json.loads(out) if r["name"] == "normpow")
    assert row["kind"] == "weight" and row["needs"] == ["calibration", "col_norms"]
    assert row["params"][0]["name"] == "normpow_p" and row["params"][0]["default"] == 1.0
    assert Path(row["source"]).is_relative_to(plugin_site)
    # without the plugin on the path it is not there, and the built-in methods are unchanged
    plain = subprocess.run([str(BIN / "tamp"), "methods", "--json"], capture_output=True, text=True, timeout=300,
                           check=True).stdout
    assert "normpow" not in {r["name"] for r in json.loads(plain)}


def test_harness_run_prunes_and_evaluates_with_the_plugin(plugin_site: Path, tiny_root: Path, tmp_path: Path) -> None:
    runs, artifacts = tmp_path / "runs", tmp_path / "artifacts"
    cmd = [str(BIN / "harness"), "run", "--model", "tiny-llava-next", "--method", "normpow", "--sparsity", "0.5",
           "--set", "normpow_p=0.5", "--tasks", "tamp_smoke_vqa", "--limit", "2", "--nsamples", "4",
           "--output", str(runs), "--artifacts", str(artifacts), "--device", "cpu"]
    proc = subprocess.run(cmd, env=_env(plugin_site), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((runs / "tiny-llava-next" / "normpow_s0.50_unstructured" / "tamp_smoke_vqa_limit2.json")
                        .read_text())
    assert "exact_match,none" in record["metrics"]
    info = json.loads((Path(record["artifact"]["path"]) / "pruning.json").read_text())
    assert info["config"]["method"] == "normpow" and info["config"]["scoring"] == "normpow"
    assert info["config"]["params"] == {"normpow": {"normpow_p": 0.5}}
    assert info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    table = subprocess.run([str(BIN / "harness"), "table", "--runs", str(runs)], env=_env(plugin_site),
                           capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| NormPow " in table


def test_plugin_math_restates_wanda_and_row_magnitude() -> None:
    """p = 1 is Wanda's mask, p = 0 ranks |W| alone within each row (checked against the obvious masks)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from tamp_normpow import METHOD
    finally:
        sys.path.remove(str(EXAMPLE))

    class Cfg:
        nm = None

        def __init__(self, p: float) -> None:
            self.p = p

        def param(self, name: str) -> float:
            assert name == "normpow_p"
            return self.p

    class Stats:
        col_sq = torch.rand(64, generator=torch.Generator().manual_seed(1)) * 4

    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    wanda = weight.masked_fill(row_mask(wanda_scores(weight, Stats.col_sq), 0.5), 0)
    torch.testing.assert_close(METHOD.score.prune(weight, Stats, 0.5, Cfg(1.0)), wanda, rtol=0, atol=0)
    rowmag = weight.masked_fill(row_mask(weight.abs(), 0.5), 0)
    torch.testing.assert_close(METHOD.score.prune(weight, Stats, 0.5, Cfg(0.0)), rowmag, rtol=0, atol=0)
