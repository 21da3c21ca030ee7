"""Shared fixtures: tiny models are built once per test session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
# the user's tamp cache, before tiny_root points TAMP_CACHE at a per-session folder: the tests' build of the trained
# tiny model's recipe is kept there across sessions (training it takes minutes; its folder name fingerprints the
# recipe code)
USER_CACHE = Path(os.environ.get("TAMP_CACHE", str(Path.home() / ".cache" / "tamp")))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tamp-cache")
    os.environ["TAMP_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_root: Path):
    """family -> path of a tiny model of that family (built on first request)."""
    from tamp.testing.tiny import build_tiny

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, tiny_root / "models" / family, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def trained_recipe_build() -> Path:
    """A fresh build of the trained tiny LLaVA-NeXT's recipe (`tamp build-tiny --trained`), for the tests of the
    recipe; everything else uses the shipped weights that `tiny-trained-llava-next` loads (tamp/testing/trained/).

    Trained into the user's cache once, unless an intact build of the same recipe code is there already (the folder is
    named after a hash of the recipe, the data generator, the tiny tokenizer and the torch / transformers
    versions): about 3 minutes on the first session, none after."""
    from tamp.cli import main
    from tamp.models.loading import reusable_build
    from tamp.testing.tiny_training import trained_cache_name

    kept = USER_CACHE / "tiny" / trained_cache_name("llava-next")
    if not reusable_build(kept, "trained tiny model"):  # not built yet, or its weights truncated
        assert main(["build-tiny", "--family", "llava-next", "--trained", "--out", str(kept)]) == 0
    return kept
