"""The trained tiny models shipped inside the package: ``tamp/testing/trained/<family>/`` and its manifest, checked
before every load. Part of the load path, so it lives here and not in ``tamp.testing`` (which only the tiny
builders and ``--ship``, :mod:`tamp.testing.shipped`, import); the files stay package data under tamp/testing/.

Training runs on the CPU, and its last bits depend on the CPU (AVX2 or AVX-512 kernels, MKL's paths), so a model
trained on each machine would give each machine its own demo tables. The weights are therefore trained once
(``tamp build-tiny --family llava-next --trained --out DIR --ship``) and committed; ``tiny-trained-<family>``
loads them and never trains.

``trained/<family>.json``, beside the folder, records the build's ``weights_sha256``
(:func:`tamp.testing.tiny_training.weights_sha256`: names, shapes and float32 bytes of the state dict, as the
build's ``training.json`` records it) and the size and sha256 of every file of the folder. The files are checked
against it before every load (a few milliseconds), and ``weights_sha256`` is what identifies the build elsewhere:
the harness's artifact key and the leaderboard's ``model_build`` column.

Light on purpose (no torch at import): the harness reads the hash to key artifacts without loading a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1] / "testing" / "trained"
CHUNK = 2**20


def folder(family: str, root: Path | None = None) -> Path:
    """The shipped checkpoint folder of ``family`` (what ``from_pretrained`` reads)."""
    return (root or ROOT) / family


def manifest_path(family: str, root: Path | None = None) -> Path:
    return (root or ROOT) / f"{family}.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def restore_hint(family: str) -> str:
    return (f"restore it (`git checkout -- tamp/testing/trained`, or reinstall tamp-harness) or rebuild it "
            f"(`tamp build-tiny --family {family} --trained --out DIR --ship`)")


def read_manifest(family: str, root: Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest, None), or (None, why it cannot be read)."""
    path = manifest_path(family, root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} is unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
    files = data.get("files") if isinstance(data, dict) else None
    sha = data.get("weights_sha256") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files or not isinstance(sha, str) or len(sha) != 64:
        return None, f"{path} is not a shipped-model manifest (no weights_sha256 or files)"
    return data, None


def problem(family: str, root: Path | None = None) -> str | None:
    """Why the shipped ``family`` model cannot be used (a missing, truncated or edited file), in one line; None
    when every file is as the manifest records it."""
    data, why = read_manifest(family, root)
    if why is None:
        base = folder(family, root)
        for name, recorded in sorted(data["files"].items()):
            file = base / name
            if not file.is_file():
                why = f"{file} is missing"
                break
            size = file.stat().st_size
            if size != recorded.get("bytes"):
                why = f"{file} has {size:,} bytes, the manifest {recorded.get('bytes'):,}"
                break
            if sha256_file(file) != recorded.get("sha256"):
                why = f"{file} differs from the shipped file (its sha256 is not the manifest's)"
                break
    if why is None:
        return None
    return f"the shipped trained tiny {family} model is damaged: {why}; {restore_hint(family)}"


def weights_sha256(family: str, root: Path | None = None) -> str:
    """The shipped build's weights_sha256, as its manifest records it (ValueError when the manifest is unusable)."""
    data, why = read_manifest(family, root)
    if why is not None:
        raise ValueError(f"the shipped trained tiny {family} model is damaged: {why}; {restore_hint(family)}")
    return data["weights_sha256"]


def build_id(sha256: str) -> str:
    """The short form of a weights hash that tables and the leaderboard show (its first 12 hex digits)."""
    return sha256[:12]
