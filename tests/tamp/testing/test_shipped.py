"""The trained tiny LLaVA-NeXT shipped in the package: `tiny-trained-llava-next` loads it as committed, its files
are checked against their manifest, and a damaged copy is one line saying what to do.

No floats from training are compared here across machines: the shipped weights are bytes, hashed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tamp.models import shipped
from tamp.testing.shipped import ship
from tamp.testing.tiny_training import weights_sha256

MODEL = "tiny-trained-llava-next"
FAMILY = "llava-next"


@pytest.fixture()
def copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped folder and manifest that the registry name resolves to instead (free to damage)."""
    root = tmp_path / "trained"
    shutil.copytree(shipped.ROOT, root)
    monkeypatch.setattr(shipped, "ROOT", root)
    assert shipped.problem(FAMILY) is None
    return root


def test_the_shipped_files_are_the_manifests() -> None:
    manifest = json.loads(shipped.manifest_path(FAMILY).read_text())
    folder = shipped.folder(FAMILY)
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk  # every file recorded, nothing unrecorded
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= on_disk
    assert shipped.problem(FAMILY) is None
    training = json.loads((folder / "training.json").read_text())
    assert manifest["weights_sha256"] == training["weights_sha256"] == shipped.weights_sha256(FAMILY)
    assert 500_000 < manifest["parameters"] == training["parameters"] < 10_000_000
    assert manifest["files"]["model.safetensors"]["bytes"] < 8 * 2**20  # a few MB in git


def test_the_registry_name_loads_the_shipped_weights() -> None:
    from tamp.models.loading import load_model

    loaded = load_model(MODEL)
    assert Path(loaded.source) == shipped.folder(FAMILY)  # the package's copy: nothing trained, nothing cached
    assert weights_sha256(loaded.model) == shipped.weights_sha256(FAMILY)  # the weights the manifest names
    assert loaded.processor.tokenizer.chat_template  # tokenizer and processor from the same folder


@pytest.mark.parametrize("damage,expected", [
    ("truncate", "model.safetensors has 1,000 bytes, the manifest 3,801,520"),
    ("flip", "model.safetensors differs from the shipped file"),
    ("remove", "tokenizer.json is missing"),
    ("edit-config", "config.json has"),
])
def test_a_damaged_copy_is_one_line(copy: Path, damage: str, expected: str) -> None:
    folder = copy / FAMILY
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flip":  # same size, one byte of a tensor changed: only the hash sees it
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "remove":
        (folder / "tokenizer.json").unlink()
    else:
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["num_hidden_layers"] = 2
        (folder / "config.json").write_text(json.dumps(config))
    problem = shipped.problem(FAMILY)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"the shipped trained tiny {FAMILY} model is damaged: ") and expected in problem
    assert "git checkout -- tamp/testing/trained" in problem and "--ship" in problem


def test_a_damaged_or_missing_manifest_is_one_line(copy: Path) -> None:
    manifest = shipped.manifest_path(FAMILY)
    manifest.write_text('{"family": "llava-next", "weights_sha2')
    assert "is unreadable" in shipped.problem(FAMILY)
    with pytest.raises(ValueError, match="is unreadable"):
        shipped.weights_sha256(FAMILY)
    manifest.unlink()
    assert f"{manifest} is missing" in shipped.problem(FAMILY)


def test_commands_refuse_a_damaged_copy_in_one_line(copy: Path, tmp_path: Path, capsys) -> None:
    """Before anything is loaded, keyed or pruned: `tamp prune` and `harness run` say what is wrong and what to do."""
    from harness.cli import main as harness_main
    from tamp.cli import main as tamp_main

    weights = copy / FAMILY / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert tamp_main(["prune", "--model", MODEL, "--method", "magnitude", "--sparsity", "0.5",
                      "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the shipped trained tiny llava-next model is damaged") and "\n" not in err
    assert not (tmp_path / "out").exists()
    assert harness_main(["run", "--model", MODEL, "--sparsity", "0", "--tasks", "tamp_heldout_vqa", "--limit", "1",
                         "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the shipped trained tiny llava-next model is damaged") and "\n" not in err
    assert not (tmp_path / "artifacts").exists()


def test_ship_copies_a_build_and_writes_its_manifest(tmp_path: Path) -> None:
    from tamp.testing.tiny_training import build_trained_tiny, provenance
    from tests.tamp.testing.test_tiny_training import QUICK

    build = build_trained_tiny(FAMILY, tmp_path / "build", recipe=QUICK)
    root = tmp_path / "trained"
    out = ship(build, FAMILY, root=root, provenance=provenance())
    assert out == root / FAMILY and shipped.problem(FAMILY, root) is None
    manifest = json.loads(shipped.manifest_path(FAMILY, root).read_text())
    assert manifest["weights_sha256"] == json.loads((build / "training.json").read_text())["weights_sha256"]
    assert manifest["cpu_capability"] and manifest["torch"]
    assert (out / "model.safetensors").read_bytes() == (build / "model.safetensors").read_bytes()
    # shipping again replaces the folder and manifest; nothing temporary is left beside them
    other = build_trained_tiny(FAMILY, tmp_path / "build1", recipe=QUICK, seed=1)
    ship(other, FAMILY, root=root)
    assert shipped.weights_sha256(FAMILY, root) != manifest["weights_sha256"]
    assert shipped.problem(FAMILY, root) is None
    assert sorted(p.name for p in root.iterdir()) == [FAMILY, f"{FAMILY}.json"]
    with pytest.raises(ValueError, match="not 'llava'"):
        ship(build, "llava", root=root)


def test_cli_ship_takes_a_trained_seed_zero_build(tmp_path: Path, capsys) -> None:
    from tamp.cli import main

    assert main(["build-tiny", "--family", FAMILY, "--out", str(tmp_path / "m"), "--ship"]) == 2
    assert "--ship" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["build-tiny", "--family", FAMILY, "--trained", "--seed", "1", "--out", str(tmp_path / "m"),
                 "--ship"]) == 2
    assert "seed 0" in capsys.readouterr().err
