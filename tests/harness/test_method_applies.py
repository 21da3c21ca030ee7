"""A token method the model cannot run (VisionZip / VisPruner without a vision [CLS] token, HoliTom without a video
grid) is refused from the config on disk, before anything loads: `harness run` and `harness sweep` stop in one
line, a dry run marks the cell REFUSED, and `tamp methods --for MODEL` (what `make token-sweep` sweeps) leaves it
out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import LlavaNextConfig, Qwen2VLConfig

from harness.cli import main
from tamp.cli import main as tamp_main
from tamp.token_transform import TokenTransform, as_config

TRAINED = "tiny-trained-llava-next"  # shipped with tamp: its config.json is always on disk


def _dirs(tmp_path: Path) -> list[str]:
    return ["--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts")]


def test_a_config_on_disk_is_built_with_its_defaults() -> None:
    on_disk = LlavaNextConfig().to_diff_dict()  # what save_pretrained writes: only what differs from the defaults
    built = as_config(on_disk)
    assert built.vision_feature_select_strategy == "default" and built.vision_config.model_type == "clip_vision_model"
    assert as_config({"model_type": "no-such-model"}) is None  # checked again once loaded


@pytest.mark.parametrize(("method", "config", "refused"), [
    ("visionzip", LlavaNextConfig().to_diff_dict(), False), ("visionzip", Qwen2VLConfig().to_dict(), True),
    ("vispruner", Qwen2VLConfig().to_dict(), True), ("holitom", LlavaNextConfig().to_diff_dict(), True),
    ("holitom", Qwen2VLConfig().to_dict(), False), ("fastv", Qwen2VLConfig().to_dict(), False)])
def test_model_problem_reads_the_methods_config_rule(method: str, config: dict, refused: bool) -> None:
    family = "llava-next" if config["model_type"] == "llava_next" else "qwen2-vl"
    problem = TokenTransform.build(method, {}).model_problem(family, 32, config)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"--method {method}: ") and "\n" not in problem


def test_run_refuses_before_loading(tmp_path: Path, capsys) -> None:
    code = main(["run", "--model", TRAINED, "--method", "holitom", "--tasks", "tamp_heldout_vqa", "--limit", "1",
                 "--device", "cpu", *_dirs(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holitom merges video frames" in err[0]
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())  # nothing saved


def test_a_sweep_refuses_before_its_first_cell(tmp_path: Path, capsys) -> None:
    code = main(["sweep", "--model", TRAINED, "--methods", "dense,holitom", "--token-budgets", "0.333", "--tasks",
                 "tamp_heldout_vqa", "--limit", "1", "--device", "cpu", "--out-dir", str(tmp_path / "out"),
                 "--csv", str(tmp_path / "lb.csv"), *_dirs(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "holitom merges video frames" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))  # dense did not run


def test_a_dry_run_marks_the_cell_refused(tmp_path: Path, capsys) -> None:
    main(["run", "--model", TRAINED, "--method", "holitom", "--tasks", "tamp_heldout_vqa", "--limit", "1",
          *_dirs(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert f"method holitom on {TRAINED}: --method holitom: holitom merges video frames" in out
    assert not any(tmp_path.iterdir())


def test_methods_for_a_model_lists_what_runs_on_it(capsys) -> None:
    assert tamp_main(["methods", "--json", "--for", TRAINED]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out) if r["kind"] == "token"}
    assert {"fastv", "visionzip", "vispruner", "sparsevlm", "cdpruner"} <= names and "holitom" not in names
    assert tamp_main(["methods", "--for", "no-such-model"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
