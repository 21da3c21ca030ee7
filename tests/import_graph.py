"""The import graph of tamp/ and harness/, read from the source (no imports run): which module imports which,
at module level or inside a function. Imports under `if TYPE_CHECKING:` never run: they are edges only when asked
for (`type_checking=True`), as the cycle check does (a type-only circle is still a circle of the design)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tamp", "harness")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool
    type_only: bool = False


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, type_checking: bool):
    """(imported names, line, inside a function?, type-only?) for every import statement that can run (and, with
    `type_checking`, those under `if TYPE_CHECKING:`)."""
    def visit(node: ast.AST, in_function: bool, type_only: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                if type_checking:
                    for sub in child.body:
                        yield from visit_one(sub, in_function, True)
                for sub in child.orelse:
                    yield from visit_one(sub, in_function, type_only)
                continue
            yield from visit_one(child, in_function, type_only)

    def visit_one(child: ast.AST, in_function: bool, type_only: bool):
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield [alias.name], child.lineno, in_function, type_only
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (child.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield [base, *(f"{base}.{a.name}" for a in child.names)], child.lineno, in_function, type_only
        yield from visit(child, inner, type_only)

    yield from visit(tree, False, False)


def edges(external: bool = False, type_checking: bool = False) -> list[Edge]:
    """Imports between the packages' modules; with `external`, also those of other top-level packages (the
    target is then the top-level name, e.g. `torch`); with `type_checking`, also the type-only imports."""
    known = modules()
    out = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for candidates, line, in_function, type_only in _imports(tree, name, path.name == "__init__.py",
                                                                 type_checking):
            internal = [t for t in candidates if t in known and t != name]
            out += [Edge(name, t, line, in_function, type_only) for t in internal]
            top = candidates[0].split(".")[0]
            if external and not internal and top and top not in PACKAGES:
                out.append(Edge(name, top, line, in_function, type_only))
    return out


# ray: seconds to import; submitit: an optional extra (the cluster executors import both only when chosen)
HEAVY = ("torch", "transformers", "lmms_eval", "accelerate", "datasets", "matplotlib", "librosa", "gguf", "ray",
         "submitit")


def heavy_at_import(graph_edges: list[Edge]) -> dict[str, set[str]]:
    """Module -> the heavy third-party packages that importing it loads (through module-level imports)."""
    direct: dict[str, set[str]] = {}
    for e in graph_edges:
        if not e.in_function:
            direct.setdefault(e.source, set()).add(e.target)
    out: dict[str, set[str]] = {}

    def visit(module: str, seen: set[str]) -> set[str]:
        if module in out:
            return out[module]
        found = {module} & set(HEAVY)
        for target in direct.get(module, ()):
            if target not in seen:
                found |= visit(target, seen | {target})
        if not seen - {module}:
            out[module] = found
        return found

    for module in modules():
        out[module] = visit(module, {module})
    return out


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in graph_edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found
