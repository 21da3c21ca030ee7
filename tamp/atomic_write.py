"""The one owner of atomic writing: temp names beside the target, their permissions, and removing stale ones.

Every writer of a file or folder that a reader must never see half-written (records, pruning.json, artifacts,
the cache's key folders, the trained tiny model's build) writes a temp beside the target and renames it into
place through here, so three rules hold everywhere:

- Permissions follow the umask: a file gets ``0o666 & ~umask``, a folder ``0o777 & ~umask`` (tempfile's 0600 /
  0700 would hide records and artifacts from the group on a shared cluster).
- A temp's name says who made it: ``.<target>.tmp-<host>-<pid>-<random>`` (``<host>``: 8 hex digits of the
  hostname's sha256). The next writer into the same folder removes the temps of writers on this host whose PID
  is no longer alive (a run killed with ``kill -9``, a preempted job); a live writer's temp, and a temp made on
  another host (whose PID cannot be checked from here), are left alone. A recycled PID keeps a stale temp a
  while longer, never removes a live one.
- An exception (Ctrl-C, SIGTERM through tamp.console, an error) removes the temp before it propagates; a full
  disk (or quota) becomes `DiskFull`, one line naming the folder, with the temp gone. One that
  lands in the instant between a temp's creation and the writer taking charge of it leaves the temp, named with
  this process's PID: the next writer removes it once this process has ended.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tamp.errors import TampError

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# the trailing part of every temp name made here; `kind` tells a temp being written from an old copy being replaced
_TEMP = re.compile(r"\.(?:tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[A-Za-z0-9_]+$")


FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


class DiskFull(TampError):
    """A write ran out of space; the temp it was writing is gone, so nothing half-written is left. Exit code 1: the
    run failed, the input was fine. ``where`` names the place in the user's words (e.g. "TAMP_CACHE")."""

    exit_code = 1

    def __init__(self, target: Path, exc: BaseException, where: str = "") -> None:
        what = "disk quota exceeded" if getattr(exc, "errno", None) == errno.EDQUOT else "no space left on the device"
        named = f" ({where})" if where else ""
        super().__init__(f"{what} under {Path(target).parent}{named}: {target} was not written, and nothing "
                         "half-written is left; free some space there or write somewhere else, then run the same "
                         "command again")


def is_disk_full(exc: BaseException) -> bool:
    """An OSError with ENOSPC / EDQUOT, or a library's own error wrapping one (safetensors says "os error 28")."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        return True
    text = str(exc)
    return any(os.strerror(code) in text or f"os error {code})" in text for code in FULL)


@contextlib.contextmanager
def disk_full_names(target: Path, where: str = "") -> Iterator[None]:
    """Within the block a full disk raises DiskFull for ``target`` (the caller removes its temp)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(target, exc, where) from None
        raise


def current_umask() -> int:
    """The process's umask, read without leaving a window where a wrong one is in force where possible.

    Linux reports it in /proc/self/status; elsewhere os.umask must set a value to read one (process-wide): the
    value set meanwhile is 0o077, so a file another thread creates in that instant is at worst too private.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """What mkdir() would give a new folder: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def temp_prefix(target: Path, kind: str = "tmp") -> str:
    """The start of a temp name for ``target`` made by this process (tempfile adds the random end)."""
    return f".{target.name}.{kind}-{HOST}-{os.getpid()}-"


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh temp name beside ``target`` (not created), for writers that create it themselves."""
    return target.parent / f"{temp_prefix(target, kind)}{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (one we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str) -> bool:
    """A temp name made here by a writer on this host that is no longer running."""
    m = _TEMP.search(name)
    return m is not None and m.group("host") == HOST and not pid_alive(int(m.group("pid")))


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temps of dead writers in ``folder``; returns what was removed. Called before each write there."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet: nothing to clean
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not is_stale(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def make_temp_dir(target: Path) -> Path:
    """A new, empty temp folder beside ``target`` with the umask's permissions; stale temps there removed first."""
    with disk_full_names(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target)))
    try:
        os.chmod(tmp, dir_mode())
    except BaseException:
        tmp.rmdir()
        raise
    return tmp


def apply_umask(tree: Path) -> None:
    """Give a filled temp folder and everything in it the umask's permissions before it is published.

    The libraries that fill it do not all ask the umask: safetensors writes its weight files 0600. An executable
    keeps its execute bits (0o777 less the umask)."""
    dmode, fmode = dir_mode(), file_mode()
    os.chmod(tree, dmode)
    for folder, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dmode)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, dmode if executable else fmode)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder to ``target`` with the umask's permissions, replacing what is there; the
    old copy goes only after."""
    apply_umask(tmp)
    if target.exists():
        old = temp_path(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder to fill; on a clean exit it replaces ``target``, on any exception it is removed."""
    tmp = make_temp_dir(target)
    try:
        with disk_full_names(target):
            yield tmp
            replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield an open temp file beside ``path``; on a clean exit it is renamed to ``path``, else removed."""
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path))
    try:
        with disk_full_names(path):  # a full disk shows at a write, or only when the file is flushed and closed
            try:
                os.fchmod(fd, file_mode())
                fh = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
            except BaseException:
                os.close(fd)  # no file object owns the descriptor yet
                raise
            with fh:
                yield fh
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader never sees half a file, a crash leaves none."""
    with atomic_file(path) as fh:
        fh.write(text)
