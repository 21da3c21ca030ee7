"""Pruned artifacts: a directory `from_pretrained` loads, plus pruning.json describing how it was made.

The one owner of the artifact format: the file name, writing it, and reading it back with a one-line error
for anything that is not a tamp pruning.json. harness (cache, run, plots, the lmms-eval wrappers) reads
artifacts only through here; the zero recount after loading is in tamp.artifact_check.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamp.atomic_write import atomic_dir, write_text_atomic
from tamp.errors import TampError
from tamp.schema import SchemaError, check

if TYPE_CHECKING:  # torch stays unimported for readers of pruning.json (harness plot, cache, table)
    from torch import nn

PRUNING_JSON = "pruning.json"
FORMAT_VERSION = 1
# what `tamp inspect` shows; what evaluating, caching and plotting need is only the per-matrix zero counts
SECTIONS: tuple[str, ...] = ("model", "config", "sparsity", "per_matrix")
PER_MATRIX: tuple[str, ...] = ("per_matrix",)
TRANSFORM = "transform"  # the token part's section, present when the artifact runs a token method


@dataclass(frozen=True)
class TransformSection:
    """The schema of pruning.json's `transform` section (tamp.token_transform.TokenTransform writes and reads it):
    the token method, its parameter values, what its fit chose (numbers, or per-layer lists of them; the method's
    own `fitted_schema` says which), and the common token budget its parameters came from. Every reader holds the
    section against this, through `read_pruning_json` or `TokenTransform.from_dict`."""

    method: str
    params: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    fitted: dict[str, float | list[float] | list[list[float]]] = field(default_factory=dict)
    budget: float | None = None


class PruningJsonError(TampError):
    """pruning.json cannot be used. ``file`` is the path tried, ``cause`` the underlying error if there is one,
    so a caller with its own wording (harness plot, the wrappers) can keep it."""

    def __init__(self, message: str, file: Path, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.cause = cause


class PruningJsonMissing(PruningJsonError):
    """There is no pruning.json where one was looked for (a dense checkpoint, a wrong path)."""


class PruningJsonUnreadable(PruningJsonError):
    """The file exists but cannot be read (permissions, I/O error)."""


class PruningJsonInvalid(PruningJsonError):
    """The file is not JSON (or not UTF-8): a damaged artifact."""


class PruningJsonForeign(PruningJsonError):
    """Valid JSON, but lacking a section tamp writes: some other file named pruning.json."""


DAMAGED_HINT = "the artifact is damaged or was edited; prune it again"


class TransformInvalid(PruningJsonError):
    """A tamp pruning.json whose `transform` section cannot be used (a field of the wrong type, an unknown method,
    a parameter out of range): an edit or a damaged copy. ``reason`` is the message without the hint, for callers
    with their own (the lmms-eval wrappers)."""

    def __init__(self, reason: str, file: Path, hint: str = DAMAGED_HINT) -> None:
        super().__init__(f"{reason}; {hint}", file)
        self.reason = reason


def transform_problem(section: Any, file: Path | str) -> str | None:
    """Why a `transform` section does not fit TransformSection (one line naming the file and the field, no hint),
    or None."""
    try:
        check(TransformSection, section, f"{file}: its {TRANSFORM} section")
    except SchemaError as exc:
        return str(exc)
    return None


def sparsity_report(linears: dict[str, nn.Linear], targets: dict[str, float]) -> dict[str, Any]:
    """Per-matrix exact zero counts and totals, read from the weights themselves."""
    per_matrix, zeros_total, numel_total = {}, 0, 0
    for name, mod in linears.items():
        w = mod.weight
        zeros = int((w == 0).sum())
        per_matrix[name] = {"shape": list(w.shape), "numel": w.numel(), "zeros": zeros,
                            "sparsity": zeros / w.numel(), "target": targets.get(name, 0.0)}
        zeros_total += zeros
        numel_total += w.numel()
    return {"per_matrix": per_matrix,
            "totals": {"matrices": len(per_matrix), "numel": numel_total, "zeros": zeros_total,
                       "sparsity": zeros_total / max(numel_total, 1)}}


def git_commit() -> str | None:
    """The commit of the tamp checkout (None when not run from a git checkout)."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    out = {"python": platform.python_version()}
    for dist in ("tamp-harness", "torch", "transformers", "accelerate", "gguf", "lmms_eval"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda or "none"
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file + rename (tamp.atomic_write), so readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_artifact(model: nn.Module, processor: Any, info: dict[str, Any], out: Path, overwrite: bool,
                  extra_files: dict[str, Path] | None = None,
                  write_weights: Callable[[Path], None] | None = None) -> Path:
    """Save weights + processor + pruning.json into a temp dir next to `out`, then move it into place.

    The temp dir and its renaming are tamp.atomic_write's (permissions from the umask, a killed run's temp
    removed by the next write beside `out`). ``extra_files`` (name -> source path) are copied beside the
    weights: files from_pretrained needs that save_pretrained does not write (Qwen2.5-Omni's speaker file).
    ``write_weights(folder)`` writes the weights and config instead of save_pretrained (a quantized checkpoint).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TampError(f"output directory {out} exists and is not empty; pass --overwrite or choose another --out")
    with atomic_dir(out) as tmp:
        if write_weights is not None:
            write_weights(tmp)
        else:
            model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
            if type(processor).__name__.endswith("ImageOnlyProcessor"):
                # the torchvision-free stand-in must not leak into the artifact: name the stock processor
                from tamp.models.qwen_image_only import restore_stock_processor_files

                restore_stock_processor_files(tmp, model.config.model_type)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        write_pruning_json(tmp, info)
    return out


def write_pruning_json(directory: Path, info: dict[str, Any]) -> Path:
    """Write (or rewrite) an artifact's pruning.json atomically; returns its path."""
    path = Path(directory) / PRUNING_JSON
    write_json_atomic(path, info)
    return path


def pruning_json_path(path: str | Path) -> Path:
    """The pruning.json of an artifact directory, or `path` itself when it is not a directory."""
    path = Path(path)
    return path / PRUNING_JSON if path.is_dir() else path


def read_pruning_json(path: str | Path, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """pruning.json of an artifact directory (or the file itself), checked to hold `sections` as tables.

    Raises a PruningJsonError subclass whose message is one line saying what is wrong.
    """
    path = Path(path)
    file = pruning_json_path(path)
    if not file.is_file():
        raise PruningJsonMissing(f"no {PRUNING_JSON} in {path}: is it a tamp artifact?", file)
    try:
        info = json.loads(file.read_text())
    except OSError as exc:
        raise PruningJsonUnreadable(f"cannot read {file}: {exc}", file, exc) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PruningJsonInvalid(f"{file} is not valid JSON ({exc}): the artifact is damaged; prune it again",
                                 file, exc) from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), dict) for k in sections):
        raise PruningJsonForeign(f"{file} is not a tamp {PRUNING_JSON} (it needs the sections {', '.join(sections)})",
                                 file)
    if TRANSFORM in info:
        problem = transform_problem(info[TRANSFORM], file)
        if problem is not None:
            raise TransformInvalid(problem, file)
    return info
