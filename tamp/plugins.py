"""One registry type for everything tamp finds by name: methods, model families, tasks.

Built-ins are the modules of one package that define a module-level constant (``METHOD``, ``FAMILY`` ...), or the
rows a `builtins` callable lists (the benchmark catalog, one table of tasks);
plugins are installed distributions with an entry point in the registry's group whose value is an entry (or a
list of them). A broken plugin is skipped with one warning line, so an installed third-party package can never
make `tamp` or `harness` unusable; a mistake in a built-in is a bug of this package and fails loudly.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from tamp.errors import TampError

T = TypeVar("T")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


@dataclass
class Registry(Generic[T]):
    """Entries of one kind by name: the built-ins in `package` (each module's `attribute`), then plugins.

    `with_source(entry, file)` records where an entry was defined; `order` sorts the listing; `builtin_problems`
    checks the built-ins together (a non-empty list is an AssertionError: a bug here); `plugin_problem` says why
    a plugin entry is refused given the entries known so far (None: accepted).
    """

    kind: str  # "method", "family", ...: the word of the error messages
    package: str  # the package whose modules hold the built-ins
    attribute: str  # the constant a built-in module defines
    group: str  # the entry-point group of plugins
    entry_type: type
    name_of: Callable[[T], str] = lambda entry: entry.name  # type: ignore[attr-defined]
    with_source: Callable[[T, str], T] = lambda entry, _source: entry
    order: Callable[[T], object] | None = None
    skip: frozenset[str] = frozenset()  # modules of the package that are machinery, not entries
    builtins: Callable[[], list[T]] | None = None  # the built-ins as rows, instead of one module each
    builtin_problems: Callable[[dict[str, T]], list[str]] = lambda _entries: []
    plugin_problem: Callable[[T, dict[str, T]], str | None] = lambda _entry, _known: None
    _builtin: dict[str, T] | None = field(default=None, init=False, repr=False)
    _all: dict[str, T] | None = field(default=None, init=False, repr=False)

    def _ordered(self, entries: list[T]) -> dict[str, T]:
        ranked = sorted(entries, key=self.order) if self.order is not None else entries  # type: ignore[arg-type]
        return {self.name_of(e): e for e in ranked}

    def builtin(self) -> dict[str, T]:
        """The entries shipped in the package, in listing order (imported once)."""
        if self._builtin is None:
            package = importlib.import_module(self.package)
            found = [self.with_source(e, package.__file__ or self.package) for e in self.builtins()] \
                if self.builtins is not None else []
            for info in pkgutil.iter_modules(package.__path__ if self.builtins is None else []):
                if info.name in self.skip or info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{self.package}.{info.name}")
                if hasattr(module, self.attribute):
                    found.append(self.with_source(getattr(module, self.attribute), module.__file__ or info.name))
            entries = self._ordered(found)
            problems = self.builtin_problems(entries)
            if problems:
                raise AssertionError("; ".join(problems))
            self._builtin = entries
        return self._builtin

    def all(self) -> dict[str, T]:
        """Built-ins plus the entries of installed plugins (each refused one is named in a warning)."""
        if self._all is None:
            entries = dict(self.builtin())
            for ep in entry_points(group=self.group):
                try:
                    loaded = ep.load()
                except Exception as exc:  # any error inside a third-party package: report it, stay usable
                    warn(f"{self.kind} plugin '{ep.name}' ({ep.value}) failed to import "
                         f"({type(exc).__name__}: {exc}); skipped")
                    continue
                source = getattr(sys.modules.get(ep.module), "__file__", None) or ep.value
                for entry in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
                    problem = self._plugin_problem(entry, entries)
                    if problem:
                        warn(f"{self.kind} plugin '{ep.name}' ({ep.value}): {problem}; skipped")
                        continue
                    entries[self.name_of(entry)] = self.with_source(entry, source)
            self._all = self._ordered(list(entries.values()))
        return self._all

    def _plugin_problem(self, entry: object, known: dict[str, T]) -> str | None:
        if not isinstance(entry, self.entry_type):
            return f"{entry!r} is not a {self.entry_type.__module__}.{self.entry_type.__qualname__}"
        name = self.name_of(entry)  # type: ignore[arg-type]
        if name in known:
            return f"the name '{name}' is taken by {getattr(known[name], 'source', '') or 'a built-in'}"
        return self.plugin_problem(entry, known)  # type: ignore[arg-type]

    def get(self, name: str) -> T:
        """The entry registered under `name`; an unknown name is refused with the list of known ones."""
        entries = self.all()
        if name not in entries:
            raise TampError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(entries)}")
        return entries[name]

    def clear(self) -> None:
        """Forget what was found (tests that install a plugin in-process)."""
        self._builtin = self._all = None
