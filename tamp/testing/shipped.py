"""Shipping a trained tiny build into the package (``tamp build-tiny --trained --ship``): the folder and manifest
that :mod:`tamp.models.shipped` checks before every load. Test scaffolding: only ``--ship`` imports it."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from tamp.atomic_write import make_temp_dir, replace_dir, write_text_atomic
from tamp.models.shipped import folder, manifest_path, sha256_file

TRAINING_FILE = "training.json"  # written by tamp.testing.tiny_training beside the weights


def ship(build: Path, family: str, root: Path | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Copy a finished trained build (``tamp build-tiny --trained --out build``) into the package and write its
    manifest; returns the shipped folder. Copied beside it and renamed into place, the manifest written last."""
    build = Path(build)
    training = json.loads((build / TRAINING_FILE).read_text(encoding="utf-8"))
    if training.get("family") != family:
        raise ValueError(f"{build} is a build of {training.get('family')!r}, not {family!r}")
    out = folder(family, root)
    tmp = make_temp_dir(out)  # tamp.atomic_write: umask permissions, a killed run's temp removed by the next
    try:
        shutil.copytree(build, tmp, dirs_exist_ok=True)
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"family": family, "weights_sha256": training["weights_sha256"],
                    "parameters": training.get("parameters"), "seed": training.get("seed"),
                    "shipped": dt.date.today().isoformat(), **(provenance or {}), "files": files}
        replace_dir(tmp, out)
        write_text_atomic(manifest_path(family, root), json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
