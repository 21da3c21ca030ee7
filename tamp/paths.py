"""Whether an output path can be written, asked before any work starts (a model loaded for minutes, then a
failed write, is the worst way to learn that --out points at a file or a read-only place)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in `folder` (tried for real with a temporary folder), None when one can."""
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        Path(tempfile.mkdtemp(dir=folder, prefix=".tamp-write-test-")).rmdir()
    except OSError as exc:
        return f"cannot create files in {folder} ({exc.strerror or exc})"
    return None


def output_problem(path: Path, directory: bool) -> str | None:
    """Why `path` cannot be written as a folder (``directory``) or a file, worded to follow "PATH: "; None when it can.

    Writes go through a temporary sibling and a rename, so the folder that must accept new files is the
    nearest existing ancestor of the parent (and an existing output folder itself).
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            return "it is a file; give a folder path"
        if not directory and path.is_dir():
            return "it is a folder; give a file name"
    problem = _cannot_create_in(_nearest_existing(path.parent))
    if problem is None and directory and path.is_dir():
        problem = _cannot_create_in(path)
    return problem


# the caches a run writes into, named by the environment variable that moves each, with the default it falls back to
TAMP_CACHE, TAMP_CACHE_DEFAULT = "TAMP_CACHE", "~/.cache/tamp"
HF_HOME, HF_HOME_DEFAULT = "HF_HOME", "~/.cache/huggingface"
HF_DATASETS_CACHE = "HF_DATASETS_CACHE"


def _folder_problem(path: Path) -> str | None:
    """Why files cannot be made in the folder ``path`` (created on first use if missing), None when they can."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    return _cannot_create_in(path if path.is_dir() else _nearest_existing(path))


def _variable_problem(variable: str, default: str, path: Path | None = None) -> str | None:
    """One line for an unusable cache folder named by ``variable`` (checked only when it is set; ``path``: a folder
    under it that must take files, default the folder itself)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    problem = _folder_problem(path if path is not None else Path(value))
    if problem is None:
        return None
    where = "" if path is None else f" ({path} under it)"
    return (f"{variable}={value}{where}: {problem}; point {variable} at a folder you can write to, or unset it "
            f"(default {default})")


def tamp_cache_problem() -> str | None:
    """Why TAMP_CACHE, where tiny models are built on first use, cannot take them; None when it can (or is unset)."""
    return _variable_problem(TAMP_CACHE, TAMP_CACHE_DEFAULT)


def hf_home_problem(datasets: bool) -> str | None:
    """Why the Hugging Face cache cannot be used: HF_HOME a file (nothing can be read from under it), or, with
    ``datasets`` (an evaluation: the datasets library and lmms-eval write their cache there), the datasets cache
    folder (HF_DATASETS_CACHE, else HF_HOME/datasets) not writable. None when it can, or nothing is set."""
    home = os.environ.get(HF_HOME, "").strip()
    if home and Path(home).expanduser().exists() and not Path(home).expanduser().is_dir():
        return _variable_problem(HF_HOME, HF_HOME_DEFAULT)
    if not datasets or os.environ.get("LMMS_EVAL_DATASETS_CACHE", "").strip():
        return None
    if os.environ.get(HF_DATASETS_CACHE, "").strip():
        return _variable_problem(HF_DATASETS_CACHE, f"{HF_HOME}/datasets")
    return _variable_problem(HF_HOME, HF_HOME_DEFAULT, Path(home).expanduser() / "datasets") if home else None
