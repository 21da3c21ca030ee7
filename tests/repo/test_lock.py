"""The lock files are the one source of versions: they must cover pyproject.toml, and `make install` must have
installed exactly them. Offline; `make lock-check` re-resolves against PyPI for the other direction."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "lock"
# The platform the locks are resolved for (Makefile LOCK_FLAGS).
TARGET_ENV = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.7",
              "implementation_name": "cpython"}
# lock name -> the pyproject extras it is resolved with (Makefile `lock`)
LOCK_EXTRAS = {"cpu": ("test", "audio", "cluster"), "gpu": ("test", "audio", "cluster", "gpu")}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def pins(name: str) -> dict[str, Version]:
    text = (LOCK / f"{name}.txt").read_text()
    found = {canonicalize_name(n): Version(v) for n, v in _PIN.findall(text)}
    assert found, f"no pins in lock/{name}.txt"
    # every pin carries hashes: `uv pip sync --require-hashes` depends on it
    assert text.count("==") == len(found) and text.count("--hash=sha256:") >= len(found)
    return found


def _applies(req: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    return req.marker is None or any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in extras)


def pyproject_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [r for r in map(Requirement, texts) if _applies(r)]


def in_file_requirements(path: Path) -> list[Requirement]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [Requirement(ln) for ln in lines if ln]


def _unsatisfied(reqs: list[Requirement], locked: dict[str, Version]) -> list[str]:
    bad = []
    for req in reqs:
        version = locked.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req} (locked: {version})")
    return bad


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_lock_pins_every_pyproject_requirement(lock: str) -> None:
    reqs = pyproject_requirements(LOCK_EXTRAS[lock]) + in_file_requirements(LOCK / f"{lock}.in")
    bad = _unsatisfied(reqs, pins(lock))
    assert not bad, f"pyproject.toml / lock/{lock}.in disagree with lock/{lock}.txt: {bad}; run `make lock`"


def test_no_deps_lock_pins_its_inputs() -> None:
    bad = _unsatisfied(in_file_requirements(LOCK / "no-deps.in"), pins("no-deps"))
    assert not bad, f"lock/no-deps.in disagrees with lock/no-deps.txt: {bad}; run `make lock`"
    assert not set(pins("no-deps")) & set(pins("cpu")), "a package is pinned twice"


def test_cpu_lock_is_the_closure_of_its_inputs() -> None:
    """Nothing stale: every package in lock/cpu.txt is needed by pyproject.toml or lock/cpu.in, transitively
    (walked over the installed packages' metadata, which test_installed_environment_is_the_lock ties to the lock)."""
    locked = pins("cpu")
    todo = [(r, ("",)) for r in pyproject_requirements(LOCK_EXTRAS["cpu"]) + in_file_requirements(LOCK / "cpu.in")]
    walked: set[tuple[str, str]] = set()  # (package, extra): a package's extras add requirements of their own
    while todo:
        req, extras = todo.pop()
        if not _applies(req, extras):
            continue
        name = canonicalize_name(req.name)
        wanted = ("", *req.extras)
        if all((name, e) in walked for e in wanted):
            continue
        walked.update((name, e) for e in wanted)
        todo += [(Requirement(t), wanted) for t in md.requires(name) or []]
    seen = {name for name, _ in walked}
    assert set(locked) == seen, (f"lock/cpu.txt has packages nothing needs: {sorted(set(locked) - seen)}; "
                                 f"needed but not locked: {sorted(seen - set(locked))}; run `make lock`")


def test_installed_environment_is_the_lock() -> None:
    """`make install` installs exactly lock/cpu.txt + lock/no-deps.txt (plus this project, editable)."""
    locked = {**pins("cpu"), **pins("no-deps")}
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in md.distributions()}
    installed.pop("tamp-harness", None)
    if installed.get("torch", Version("0")).local not in (None, "cpu"):
        pytest.skip("a GPU install (lock/gpu.txt)")
    differ = {n: (str(installed.get(n)), str(locked.get(n))) for n in set(installed) | set(locked)
              if installed.get(n) != locked.get(n)}
    assert not differ, f"installed vs locked (name: (installed, locked)): {differ}; run `make install`"


# what harness/ imports from lmms-eval, its CLI, and the stock modules our wrappers and smoke tasks go through
LMMS_EVAL_MODULES = [
    "lmms_eval.__main__", "lmms_eval.evaluator", "lmms_eval.api.instance", "lmms_eval.api.model", "lmms_eval.models",
    "lmms_eval.tasks", "lmms_eval.utils", "lmms_eval.models.simple.llava_hf", "lmms_eval.models.simple.qwen2_vl",
    "lmms_eval.models.simple.qwen2_5_vl", "lmms_eval.models.simple.qwen2_audio",
    "lmms_eval.models.model_utils.load_video",
]


@pytest.mark.parametrize("module", LMMS_EVAL_MODULES)
def test_lmms_eval_imports_without_its_declared_dependencies(module: str) -> None:
    """lmms-eval is installed --no-deps: what our evaluation path imports from it must import from the lock."""
    importlib.import_module(module)


def test_lmms_eval_reentrant_filelocks_patch() -> None:
    """lmms-eval's evaluator patches filelock internals (filelock._api, gone in filelock 4): the break that a
    fresh clone hit before the lock existed."""
    from lmms_eval import evaluator

    evaluator._enable_reentrant_filelocks()
    assert getattr(evaluator._enable_reentrant_filelocks, "_patched", False)
