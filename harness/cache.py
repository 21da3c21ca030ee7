"""Content-addressed artifact cache: results/artifacts/<key>/, key = sha256 of everything that shapes the weights.

The key covers the model (HF id + resolved revision, or the content of a local directory), the recipe (the
configs of the methods it uses, the token part, the dtype), a calibration fingerprint (spec + content of the
files it reads), the seed, and the versions that the code it runs declares (each method, each algorithm module
they use, the engine, the calibration code, the artifact format: tamp.recipe.code_versions). Not the source
text: a docstring edit or a change to an unrelated method keeps every cached artifact; a change of what a method
computes bumps its version (the golden checks fail until it does), which re-keys that method's artifacts only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from harness.errors import EvaluationError, HarnessError
from harness.model_specs import ModelSpec
from tamp.artifacts import PER_MATRIX, PRUNING_JSON, TRANSFORM, PruningJsonError, TransformInvalid, read_pruning_json
from tamp.atomic_write import DiskFull, disk_full_names, temp_path
from tamp.calibration.spec import CalibrationSpec
from tamp.errors import TampError
from tamp.families.registry import get as get_family
from tamp.models.loading import checkpoint_problem, model_problem
from tamp.models.shipped import weights_sha256
from tamp.models.sources import TINY_PREFIX, TRAINED_PREFIX
from tamp.paths import hf_home_problem

if TYPE_CHECKING:
    from tamp.recipe import Recipe

KEY_FILE = "cache_key.json"
BIG_FILE = 256 * 2**20  # files above this are hashed by size + 16 evenly spaced 1 MiB chunks
CHUNK = 2**20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= BIG_FILE:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
        else:
            h.update(f"sampled:{size}".encode())
            for i in range(16):
                fh.seek((size - CHUNK) * i // 15)
                h.update(fh.read(CHUNK))
    return h.hexdigest()


def dir_content_hash(directory: Path) -> str:
    """sha256 over the relative names and contents of every file (big weight files sampled)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.startswith(".") or rel == KEY_FILE:
            continue
        h.update(rel.encode() + b"\0" + _sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def _hf_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit a cached HF model resolves to (None when it is not in the local cache)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a malformed id or cache: the id alone still keys the artifact
        return None
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def model_fingerprint(spec: ModelSpec, revision: str | None) -> dict[str, Any]:
    if spec.source.startswith(TRAINED_PREFIX):
        # the weights shipped in tamp/testing/trained/ (their manifest's hash; the files are checked against it
        # when the model is resolved and loaded): a refreshed build keys new artifacts
        try:
            return {"tiny": spec.source, "weights_sha256": weights_sha256(spec.source.removeprefix(TRAINED_PREFIX))}
        except ValueError as exc:
            raise HarnessError(str(exc)) from None
    if spec.source.startswith("tiny-"):
        # built deterministically by the family's tiny builder, which declares a version
        build = get_family(spec.family).tiny
        return {"tiny": spec.source, "build_version": build.version if build is not None else None}
    path = Path(spec.source)
    if path.is_dir():
        return {"dir_sha256": dir_content_hash(path)}
    return {"hf_id": spec.source, "revision": revision, "commit": _hf_revision(spec.source, revision)}


def calibration_fingerprint(calib: str | None, nsamples: int, seqlen: int, seed: int) -> dict[str, Any] | None:
    """What the calibration data is, without loading a model: spec + contents of the files it reads (tamp's
    CalibrationSpec says which, drawing the samples as tamp does; files hashed as everything else in the key)."""
    if calib is None:
        return None
    return CalibrationSpec.parse(calib).fingerprint(nsamples, seqlen, seed, hash_file=_sha256_file)


def artifact_key(spec: ModelSpec, recipe: Recipe, calib_fp: dict[str, Any] | None,
                 revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """(short key, the inputs it hashes). Equal inputs -> equal key -> the cached artifact is reused. A token
    part and a quantization part are hashed only when there is one (the keys of other runs stay as they were)."""
    recipe_inputs = recipe.key_inputs()
    inputs = {"model": model_fingerprint(spec, revision), "config": recipe_inputs["config"],
              "calibration": calib_fp, "seed": recipe.weight.seed, "dtype": recipe.dtype,
              "code": recipe_inputs["code"]}
    if recipe.token is not None:
        inputs["transform"] = recipe_inputs["transform"]
    if recipe.quant is not None:  # its grid and parameters (w4 and w8 of one quantizer are different artifacts)
        inputs["quantization"] = recipe_inputs["quantization"]
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:20], inputs


def check_caches(source: str) -> None:
    """Refuse, before anything is planned further, a run whose caches cannot be written: TAMP_CACHE where a tiny
    model is still to be built, the Hugging Face datasets cache lmms-eval loads every task into (tamp.paths)."""
    problem = (model_problem(source) if source.startswith(TINY_PREFIX) else None) or hf_home_problem(datasets=True)
    if problem is not None:
        raise HarnessError(problem)


def valid_artifact(path: Path, key: str) -> bool:
    """A finished artifact: config + weights + a readable pruning.json (tamp's reader) + our key file with this key."""
    try:
        read_pruning_json(path, PER_MATRIX)
        stored = json.loads((path / KEY_FILE).read_text())
    except (PruningJsonError, OSError, json.JSONDecodeError):
        return False
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return (path / "config.json").is_file() and has_weights and stored.get("key") == key


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 (big weight files sampled, as for the key) of every file, recorded when an artifact is
    cached so that damage done later (a truncated copy, a full disk, an edit) is found before it is reused."""
    return {path.relative_to(directory).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != KEY_FILE and not path.relative_to(directory).as_posix().startswith(".")}


def damage(path: Path) -> str | None:
    """What is wrong with a cached artifact's files, None when they are as written.

    Against the manifest in its key file; an artifact cached before manifests were recorded is unverified, so
    at least its config and every weight file must open.
    """

    try:
        manifest = json.loads((path / KEY_FILE).read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError):
        manifest = None
    if not isinstance(manifest, dict):
        return checkpoint_problem(path)
    for name, recorded in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != recorded.get("bytes"):
            return f"{name} has {size:,} bytes, {recorded.get('bytes'):,} when it was written"
        if _sha256_file(file) != recorded.get("sha256"):
            return f"{name} changed after it was written (its sha256 differs)"
    return None


def transform_damage(path: Path) -> str | None:
    """Why a cached artifact's token transform cannot be applied (its pruning.json `transform` section against its
    schema and the registry: tamp.token_transform), None when it can or there is none."""
    from tamp.token_transform import TokenTransform

    try:
        section = read_pruning_json(path, PER_MATRIX).get(TRANSFORM)
        if section is not None:
            TokenTransform.from_dict(section, path / PRUNING_JSON)
    except TransformInvalid as exc:
        return exc.reason
    except PruningJsonError:  # valid_artifact's to judge
        return None
    return None


def _reusable(final: Path, key: str) -> bool:
    """A finished artifact whose files are as written; a damaged one is announced (and then pruned again)."""
    if not valid_artifact(final, key):
        problem = transform_damage(final) if final.is_dir() else None
        if problem is not None:
            print(f"warning: cached artifact {final} is damaged ({problem}); pruning it again", file=sys.stderr,
                  flush=True)
        return False
    problem = damage(final) or transform_damage(final)
    if problem is not None:
        print(f"warning: cached artifact {final} is damaged ({problem}); pruning it again", file=sys.stderr,
              flush=True)
    return problem is None


def key_lock(root: Path, key: str) -> FileLock:
    """The cross-process lock on one cache key (grid cells on other nodes of a shared filesystem included).

    flock-based: the kernel drops it when its holder dies (kill -9, a preempted node), so a stale lock never
    blocks; no silent fallback to a marker file, which a dead holder would leave behind.
    """
    return FileLock(root / f".{key}.lock", fallback_to_soft=False)


def _acquire(lock: FileLock, key: str) -> None:
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting for another process pruning artifact {key} (lock {lock.lock_file})", flush=True)
            lock.acquire()
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
            raise HarnessError(f"--artifacts {Path(lock.lock_file).parent}: this filesystem has no working file "
                               "locks (flock); put the artifact cache on one that has (local disk, NFSv4, Lustre "
                               "mounted with -o flock)") from None
        raise


def ensure_artifact(root: Path, key: str, inputs: dict[str, Any], spec: ModelSpec, recipe: Recipe, device: str,
                    revision: str | None = None) -> tuple[Path, bool, float]:
    """(artifact dir, reused?, seconds spent pruning). Prunes into a temp dir and renames it into place.

    Pruning holds the key's lock: a second process that needs the same artifact meanwhile waits, then reuses
    it, so an artifact is pruned once however many cells ask for it at the same time. A cached artifact whose
    files were damaged since it was written is pruned again (with a warning naming it).
    """
    from tamp.pipeline import prune

    final = root / key
    if _reusable(final, key):
        return final, True, 0.0
    root.mkdir(parents=True, exist_ok=True)
    lock = key_lock(root, key)
    _acquire(lock, key)
    try:
        if valid_artifact(final, key) and damage(final) is None and transform_damage(final) is None:
            # pruned by the process we waited for
            return final, True, 0.0
        # left by a killed holder of this lock, and no one else writes them while we hold it: the key's temp
        # folder and the one tamp's save fills beside it ("..KEY.tmp-..."), on any host, older names included
        for stale in [*root.glob(f".{key}.tmp-*"), *root.glob(f"..{key}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = temp_path(final)
        start = time.perf_counter()
        try:
            prune(spec.source, recipe, tmp, device=device, revision=revision)
            record = {"key": key, "inputs": inputs, "files": file_manifest(tmp)}
            with disk_full_names(final):
                (tmp / KEY_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
            if final.exists():  # an invalid leftover (interrupted by hand, or another key file)
                shutil.rmtree(final)
            os.replace(tmp, final)
        except DiskFull as exc:  # the run failed, its input was fine: exit 1
            raise EvaluationError(str(exc)) from None
        except TampError as exc:
            raise HarnessError(str(exc)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, False, time.perf_counter() - start
    finally:
        lock.release()
