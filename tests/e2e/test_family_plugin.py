"""A model family from an installed plugin package (examples/family-plugin, registered through the `tamp.families`
entry point): LLaVA-NeXT's transformers classes under a new family name, `llava-next-mistral`, whose tiny build
swaps the language model for a Mistral one and claims the family in its config.json. Listed by `harness models`,
built by `tamp build-tiny`, pruned and evaluated by `harness run` from its checkpoint folder and recorded under its
own family. The package is installed into a temporary folder, so the test venv stays as the lock made it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_site import install_example, site_env

BIN = Path(sys.executable).parent
FAMILY = "llava-next-mistral"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example("family-plugin", tmp_path_factory.mktemp("family-plugin"), "tamp_llava_next_mistral")


def _env(site: Path) -> dict[str, str]:
    return site_env(site)


def _model_rows(env: dict[str, str] | None) -> dict[str, list[str]]:
    out = subprocess.run([str(BIN / "harness"), "models"], env=env, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()[2:]]
    return {row[0]: row for row in rows}


def test_plugin_family_is_listed(plugin_site: Path) -> None:
    rows = _model_rows(_env(plugin_site))
    assert rows[FAMILY][1:4] == ["llava-hf/llava-v1.6-mistral-7b-hf", FAMILY, "tamp_llava_hf"]
    assert rows[f"tiny-{FAMILY}"][1:4] == ["built offline by tamp", FAMILY, "tamp_llava_hf"]
    # the built-ins keep their rows and order (the plugin's models come after them), and without the plugin on the
    # path it is not there
    plain = _model_rows(None)
    hf = [n for n in plain if not n.startswith("tiny-")]
    trained = [n for n in plain if n.startswith("tiny-trained-")]
    tiny = [n for n in plain if n.startswith("tiny-") and n not in trained]
    assert list(rows) == [*hf, FAMILY, *tiny, f"tiny-{FAMILY}", *trained]
    assert all(rows[name] == row for name, row in plain.items())
    assert FAMILY not in plain and f"tiny-{FAMILY}" not in plain

def test_harness_run_prunes_and_evaluates_a_plugin_family(plugin_site: Path, tiny_root: Path,
                                                          tmp_path: Path) -> None:
    env = _env(plugin_site)
    build = tmp_path / "mistral-tiny"
    subprocess.run([str(BIN / "tamp"), "build-tiny", "--family", FAMILY, "--out", str(build)], env=env,
                   capture_output=True, text=True, timeout=300, check=True)
    config = json.loads((build / "config.json").read_text())
    assert (config["model_type"], config["text_config"]["model_type"], config["tamp_family"]) == (
        "llava_next", "mistral", FAMILY)
    runs, artifacts = tmp_path / "runs", tmp_path / "artifacts"
    cmd = [str(BIN / "harness"), "run", "--model", str(build), "--method", "wanda", "--sparsity", "0.5",
           "--tasks", "tamp_smoke_vqa", "--limit", "2", "--calib", "synthetic", "--nsamples", "4", "--seqlen", "64",
           "--output", str(runs), "--artifacts", str(artifacts), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((runs / build.name / "wanda_s0.50_unstructured" / "tamp_smoke_vqa_limit2.json").read_text())
    assert record["model"]["family"] == FAMILY and record["model"]["wrapper"] == "tamp_llava_hf"
    assert "exact_match,none" in record["metrics"]
    info = json.loads((Path(record["artifact"]["path"]) / "pruning.json").read_text())
    assert info["model"]["family"] == FAMILY and info["config"]["method"] == "wanda"
    assert info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
