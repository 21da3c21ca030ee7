"""Shipping a trained tiny build into the package (``tamp build-tiny --trained --ship``): the folder and manifest
that :mod:`tamp.models.shipped` checks before every load. Test scaffolding: only ``--ship`` imports it."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{family}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(build, tmp)
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"family": family, "weights_sha256": training["weights_sha256"],
                    "parameters": training.get("parameters"), "seed": training.get("seed"),
                    "shipped": dt.date.today().isoformat(), **(provenance or {}), "files": files}
        old = out.parent / f".{family}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        path = manifest_path(family, root)
        path.with_name(f".{path.name}.tmp").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(path.with_name(f".{path.name}.tmp"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
