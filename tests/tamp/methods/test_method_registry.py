"""The method registry: one file per method, everything else derived from it (config fields, presets, choices,
table labels and order, the needs-data rule), and a new method added as one file with nothing else touched."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tamp import plugins
from tamp.config import PruneConfig
from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import Method, QuantMethod, TokenMethod, WeightMethod
from tamp.params import RUN_PARAMS
from tamp.recipe import build_recipe, parse_overrides, weight_config

BUILTIN = ("dense", "magnitude", "sparsegpt", "wanda", "owl", "ecoflap", "das", "amia", "tamp")  # weight methods
TOKEN = ("fastv", "aim", "yopo", "divprune", "pdrop", "sparsevlm", "visionzip", "vispruner", "cdpruner", "random", "pool",
         "dart", "holitom")
QUANT = ("rtn", "gptq")  # quantizers
METHODS_DIR = Path(registry.__file__).parent


def test_builtin_methods_are_one_file_each_in_table_order() -> None:
    methods = registry.builtin_methods()
    assert tuple(methods) == (*BUILTIN, *TOKEN, *QUANT)
    for name, method in methods.items():
        kind = "weight" if name in BUILTIN else "token" if name in TOKEN else "quant"
        assert isinstance(method, {"weight": WeightMethod, "token": TokenMethod, "quant": QuantMethod}[kind])
        assert method.kind == kind
        assert Path(method.source) == METHODS_DIR / f"{name}.py"
    files = {p.stem for p in METHODS_DIR.glob("*.py")} - {"__init__", "base", "registry", "listing"}
    assert files == set(BUILTIN) | set(TOKEN) | set(QUANT)


def test_compositions_are_the_papers() -> None:
    got = {n: m.composition() for n, m in registry.builtin_methods().items() if isinstance(m, WeightMethod)}
    assert got["tamp"] == {"allocation": "das", "token_selection": "amia", "scoring": "wanda"}
    assert got["owl"] == {"allocation": "owl", "token_selection": "all", "scoring": "wanda"}
    assert got["sparsegpt"] == {"allocation": "uniform", "token_selection": "all", "scoring": "sparsegpt"}
    assert registry.part_choices("allocation") == ("uniform", "owl", "ecoflap", "das")
    assert registry.part_choices("token_selection") == ("all", "amia")
    assert registry.part_choices("scoring") == ("magnitude", "sparsegpt", "wanda")


def test_config_is_run_fields_plus_the_used_methods_params() -> None:
    """PruneConfig is static (run fields, RUN_PARAMS' defaults) and nests the parameters of the methods a
    composition uses, under each method's name: nothing another method declared."""
    names = [f.name for f in dataclasses.fields(PruneConfig)]
    assert names == [p.name for p in RUN_PARAMS] + ["params"]
    defaults = PruneConfig()
    assert all(getattr(defaults, p.name) == p.default for p in RUN_PARAMS)
    assert weight_config("wanda").params == {}
    assert weight_config("sparsegpt").params == {"sparsegpt": {"blocksize": 128, "percdamp": 0.01}}
    tamp_cfg = weight_config("tamp", sparsity=0.5, das_mode="paper")
    assert set(tamp_cfg.params) == {"das", "amia"} and tamp_cfg.param("das_mode") == "paper"
    assert tamp_cfg.param("amia_k") == 3
    assert set(weight_config("magnitude", allocation="owl").params) == {"owl"}
    for method in registry.builtin_methods().values():
        if isinstance(method, WeightMethod) and not method.keeps_every_weight:
            cfg = weight_config(method.name)
            for p in method.params:
                assert cfg.param(p.name) == p.default and type(p.default) is p.type, p.name
    assert (weight_config("owl").param("owl_m"), weight_config("owl").param("owl_lambda")) == (5.0, 0.08)
    with pytest.raises(KeyError, match="owl_m is no parameter of the methods this config uses"):
        weight_config("wanda").param("owl_m")


def _needs(method: str, sparsity: float, pattern: str = "unstructured", **sets: str) -> bool:
    return build_recipe(method, sparsity, pattern=pattern, overrides=sets).needs_calibration


@pytest.mark.parametrize("method", BUILTIN)
def test_needs_data_rule(method: str) -> None:
    """Written out by hand: only magnitude and dense prune without calibration data."""
    assert _needs(method, 0.0 if method == "dense" else 0.5) is (method not in ("dense", "magnitude"))
    assert _needs(method, 0.0) is False  # nothing to prune
    assert _needs(f"{method}+yopo", 0.0 if method == "dense" else 0.5)  # YOPO's heads are fitted on data


def test_needs_data_follows_every_part() -> None:
    """Magnitude scoring under a data-hungry allocation or token selection needs data (the old rule looked at
    the scoring alone); under N:M the allocation is not used, so magnitude N:M needs none."""
    assert _needs("magnitude", 0.5, allocation="owl")
    assert _needs("magnitude", 0.5, token_selection="amia")
    assert not _needs("magnitude", 0.5, pattern="2:4", allocation="owl")
    assert _needs("wanda", 0.5, pattern="2:4")


def test_bad_names_and_values_are_one_line_errors() -> None:
    with pytest.raises(TampError, match="unknown method 'nope'; choose one of: dense, magnitude, sparsegpt"):
        weight_config("nope")
    with pytest.raises(TampError, match="unknown allocation 'x'; choose one of: uniform, owl, ecoflap, das"):
        weight_config("wanda", allocation="x")
    with pytest.raises(TampError, match="unknown das_mode 'x'; choose one of: released, paper"):
        weight_config("das", das_mode="x")
    with pytest.raises(TampError, match="--percdamp must be positive"):
        weight_config("sparsegpt", percdamp=0.0)
    with pytest.raises(TampError, match="must be a multiple of 4 for the 2:4 pattern"):
        weight_config("sparsegpt", sparsity=0.5, pattern="2:4", blocksize=6)
    with pytest.raises(TampError, match="keeps every weight"):
        weight_config("dense", sparsity=0.5)
    with pytest.raises(TampError, match="unknown config field 'owl_mm'; fields: aim_iters, .*, allocation, "):
        parse_overrides(["owl_mm=1"])
    assert parse_overrides(["owl_released_sign=yes", "amia_k=4", "das_mode=paper"]) == \
        {"owl_released_sign": True, "amia_k": 4, "das_mode": "paper"}
    with pytest.raises(TampError, match="--set das_mode: a parameter of das, which --method wanda does not use"):
        weight_config("wanda", das_mode="paper")
    with pytest.raises(TampError, match="--pattern 2:4 prunes weights, but --method fastv keeps every weight"):
        build_recipe("fastv", None, pattern="2:4")
    with pytest.raises(TampError, match="--pattern 2:4 prunes weights, but --sparsity 0 keeps every weight"):
        build_recipe("wanda", 0.0, pattern="2:4")


def test_table_labels_and_order_come_from_the_registry() -> None:
    from harness.tables import method_label, method_rank

    assert [method_label(m) for m in BUILTIN] == \
        ["Dense", "Magnitude", "SparseGPT", "Wanda", "OWL", "ECoFLaP", "DAS", "AMIA", "TAMP"]
    assert sorted(["tamp", "zzz", "dense", "wanda"], key=method_rank) == ["dense", "wanda", "tamp", "zzz"]
    assert method_label("gone-plugin") == "gone-plugin"  # an old record of a method no longer installed


def test_methods_listing_json(capsys) -> None:
    from tamp.cli import main

    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [*BUILTIN, *TOKEN, *QUANT]
    tamp = rows[len(BUILTIN) - 1]
    assert tamp["needs"] == ["calibration", "col_norms", "attention", "dense_sweep"]
    sparsegpt = next(r for r in rows if r["name"] == "sparsegpt")
    assert sparsegpt["params"][0] == {"name": "blocksize", "type": "int", "default": 128,
                                      "help": "columns per lazy-update block"}
    assert all(Path(r["source"]).is_file() for r in rows)


def test_broken_or_clashing_plugins_are_skipped_with_a_warning(monkeypatch, capsys) -> None:
    from importlib.metadata import EntryPoint

    good = WeightMethod(name="wanda", label="W2", order=99, summary="clash", scoring="wanda")
    monkeypatch.setattr(sys.modules[__name__], "CLASH", good, raising=False)
    eps = [EntryPoint("broken", "no_such_module_xyz:METHOD", registry.ENTRY_POINT_GROUP),
           EntryPoint("clash", f"{__name__}:CLASH", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    registry.REGISTRY.clear()
    try:
        methods = registry.all_methods()
    finally:
        registry.REGISTRY.clear()
    assert tuple(methods) == (*BUILTIN, *TOKEN, *QUANT) and methods["wanda"].label == "Wanda"
    err = capsys.readouterr().err
    assert "method plugin 'broken' (no_such_module_xyz:METHOD) failed to import (ModuleNotFoundError" in err
    assert "method plugin 'clash'" in err and "the name 'wanda' is taken" in err


NEW_METHOD = '''
"""rowmag: row-wise magnitude (|W| ranked within each output row), with a made-up parameter."""
import torch
from tamp.algorithms.masks import row_mask
from tamp.methods.base import Param, Scoring, WeightMethod


def prune_matrix(weight, stats, sparsity, cfg):
    assert cfg.param("rowmag_unused") == 7
    return weight.masked_fill(row_mask(weight.abs().float(), sparsity), 0)


METHOD = WeightMethod(name="rowmag", label="RowMag", order=20, summary="row-wise magnitude",
                      params=(Param("rowmag_unused", int, 7, "shows that a new file's parameter reaches its hooks"),),
                      scoring="rowmag", score=Scoring(prune_matrix))
'''


def test_a_new_method_is_one_file(tiny_model, tmp_path: Path) -> None:
    """Drop one file into the methods folder (here: a second folder of the package's search path, so the
    checkout is not touched) and the CLI prunes with it; its parameter is nested under its name and --set works."""
    extra_dir = tmp_path / "more_methods"
    extra_dir.mkdir()
    (extra_dir / "rowmag.py").write_text(NEW_METHOD)
    out = tmp_path / "artifact"
    script = textwrap.dedent(f"""
        import sys
        import tamp.methods
        tamp.methods.__path__.append({str(extra_dir)!r})
        from tamp.cli import main
        sys.exit(main(["prune", "--model", {str(tiny_model("llama"))!r}, "--method", "rowmag", "--sparsity", "0.5",
                       "--device", "cpu", "--set", "rowmag_unused=7", "--out", {str(out)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "pruning.json").read_text())
    assert info["config"]["method"] == "rowmag" and info["config"]["params"] == {"rowmag": {"rowmag_unused": 7}}
    assert info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_every_registered_method_is_a_method() -> None:
    assert all(isinstance(m, Method) for m in registry.all_methods().values())
