"""The artifact key covers the recipe and the versions its code declares, not tamp's source text: an edit that
changes nothing a method computes keeps every cached artifact; a version bump re-keys that method's artifacts only."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tamp
from harness.cache import artifact_key
from harness.model_specs import MODELS
from tamp.methods import registry
from tamp.recipe import build_recipe

CASES = {"wanda": ("wanda", 0.5), "tamp": ("tamp", 0.5), "tamp+fastv": ("tamp+fastv", 0.5),
         "sparsegpt": ("sparsegpt", 0.5), "fastv": ("fastv", None)}
SPEC = MODELS["tiny-llava-next"]


def _keys() -> dict[str, str]:
    return {name: artifact_key(SPEC, build_recipe(method, sparsity), None)[0]
            for name, (method, sparsity) in CASES.items()}


def test_a_docstring_edit_in_yopo_keeps_other_methods_keys(tmp_path: Path) -> None:
    """The same keys computed by a copy of the package whose yopo.py docstring was edited (in a subprocess that
    imports the copy): wanda, tamp and tamp+fastv must not be re-pruned for it."""
    copy = tmp_path / "src"
    shutil.copytree(Path(tamp.__file__).parent, copy / "tamp", ignore=shutil.ignore_patterns("__pycache__", "trained"))
    yopo = copy / "tamp" / "methods" / "yopo.py"
    text = yopo.read_text()
    assert text.startswith('"""')
    yopo.write_text('"""An edited docstring. ' + text[3:])
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(copy)!r})
        import tamp
        assert tamp.__file__.startswith({str(copy)!r}), tamp.__file__
        from tests.harness.test_artifact_key_versions import _keys
        print(json.dumps(_keys()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    edited = json.loads(proc.stdout.strip().splitlines()[-1])
    here = _keys()
    assert {k: edited[k] for k in ("wanda", "tamp", "tamp+fastv")} == {k: here[k] for k in ("wanda", "tamp",
                                                                                           "tamp+fastv")}


def test_a_version_bump_rekeys_that_method_only(monkeypatch) -> None:
    before = _keys()
    methods = registry.all_methods()
    monkeypatch.setitem(methods, "wanda", dataclasses.replace(methods["wanda"], version=2))
    after = _keys()
    assert after["wanda"] != before["wanda"] and after["tamp"] != before["tamp"]  # tamp scores with Wanda
    assert after["sparsegpt"] == before["sparsegpt"] and after["fastv"] == before["fastv"]


def test_an_algorithm_version_bump_rekeys_its_users_only(monkeypatch) -> None:
    import tamp.algorithms.sparsegpt as sparsegpt_math

    before = _keys()
    monkeypatch.setattr(sparsegpt_math, "VERSION", sparsegpt_math.VERSION + 1)
    after = _keys()
    assert after["sparsegpt"] != before["sparsegpt"]
    assert {k: after[k] for k in ("wanda", "tamp", "tamp+fastv", "fastv")} == \
        {k: before[k] for k in ("wanda", "tamp", "tamp+fastv", "fastv")}


def test_the_key_names_what_it_covers() -> None:
    _, inputs = artifact_key(SPEC, build_recipe("tamp+fastv", 0.5), None)
    code = inputs["code"]
    assert code["methods"] == {"tamp": 1, "das": 1, "amia": 1, "wanda": 1, "fastv": 1}
    assert {"allocations", "amia", "masks"} <= set(code["algorithms"]) and "sparsegpt" not in code["algorithms"]
    assert {"engine", "calibration", "artifact_format", "inference"} <= set(code)
    assert "inference" not in artifact_key(SPEC, build_recipe("tamp", 0.5), None)[1]["code"]
    assert inputs["config"]["params"].keys() == {"das", "amia"} and inputs["transform"]["method"] == "fastv"
    assert "tamp" not in inputs  # no source hash, no package version


def test_a_quantizers_grid_is_part_of_the_key() -> None:
    """w4 and w8 of one quantizer are different artifacts (they once shared a key: the code versions are equal);
    a run without a quantizer keys as it always did."""
    keys = {name: artifact_key(SPEC, build_recipe(name, sparsity), None)
            for name, sparsity in (("gptq-w8", 0), ("gptq-w4g128", 0), ("tamp+gptq-w4g128", 0.5), ("tamp", 0.5))}
    assert len({key for key, _ in keys.values()}) == 4
    assert keys["gptq-w8"][1]["quantization"]["grid"] == "w8" and "quantization" not in keys["tamp"][1]


@pytest.mark.parametrize("module", sorted(p.stem for p in (Path(tamp.__file__).parent / "algorithms").glob("*.py")
                                          if p.stem != "__init__"))
def test_every_algorithm_module_declares_a_version(module: str) -> None:
    import importlib

    assert isinstance(importlib.import_module(f"tamp.algorithms.{module}").VERSION, int)
