"""Shared fixtures: tiny models are built once per test session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")


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
