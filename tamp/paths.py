"""Whether an output path can be written, asked before any work starts (a model loaded for minutes, then a
failed write, is the worst way to learn that --out points at a file or a read-only place)."""

from __future__ import annotations

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
