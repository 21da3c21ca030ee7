"""`--set FIELD=VALUE`, read before the ML stack loads: a typo in a one-line flag is refused in a blink, not after
the seconds torch, transformers and lmms-eval take to import.

The fields `--set` accepts are the run fields (tamp.params) and the parameters the methods declare. The methods'
declarations live in modules that import torch, so `declared_fields` reads the built-in ones from their source
(each `Param("name", type, ...)` in tamp/methods/ and any folder added to its search path); tests/tamp/test_overrides.py
holds it equal to the registry.
A method plugin can declare any name: with one installed, an unknown name is left to the registry's check
(`tamp.recipe.parse_overrides`, which refuses with the same words). Torch-free.
"""

from __future__ import annotations

import ast
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import tamp.methods  # the package's docstring only: the methods themselves stay unimported
from tamp.errors import TampError
from tamp.params import RUN_PARAMS

PLUGIN_GROUP = "tamp.methods"  # tamp.methods.registry.ENTRY_POINT_GROUP (a test holds them equal)
TYPES = ("bool", "int", "float", "str")


def split_item(item: str) -> tuple[str, str]:
    """`FIELD=VALUE` -> (field, raw value), both stripped."""
    if "=" not in item:
        raise TampError(f"--set expects FIELD=VALUE, got '{item}'")
    key, raw = (part.strip() for part in item.split("=", 1))
    return key, raw


def typed_value(key: str, raw: str, kind: str) -> Any:
    """A `--set` value as its field's type (bool, int, float or str)."""
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise TampError(f"--set {key}: '{raw}' is not a valid {kind}") from None


def unknown_field(key: str, fields: set[str] | dict[str, Any]) -> TampError:
    return TampError(f"unknown config field '{key}'; fields: {', '.join(sorted(fields))}")


def declared_fields() -> dict[str, str]:
    """Field name -> type name of every run field and every `Param` the built-in methods declare (their source
    read, not imported): the files of every folder of the methods package's search path, where the registry
    finds its built-ins."""
    return _declared(tuple(str(folder) for folder in tamp.methods.__path__))


@cache
def _declared(folders: tuple[str, ...]) -> dict[str, str]:
    out = {p.name: p.type.__name__ for p in RUN_PARAMS}
    for path in sorted(p for folder in folders for p in Path(folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            name, kind = node.args[0], node.args[1]
            if func == "Param" and isinstance(name, ast.Constant) and isinstance(name.value, str) \
                    and isinstance(kind, ast.Name) and kind.id in TYPES:
                out.setdefault(name.value, kind.id)
    return out


def plugins_installed() -> bool:
    return bool(entry_points(group=PLUGIN_GROUP))


def precheck(items: list[str]) -> None:
    """Refuse a malformed `--set`, an unknown field or a value of the wrong type before anything heavy is imported.
    What a value means for a method (its range, which methods take it) is the recipe's check, later."""
    fields = declared_fields()
    plugins = None
    for item in items:
        key, raw = split_item(item)
        if key not in fields:
            if plugins is None:
                plugins = plugins_installed()
            if plugins:  # a plugin may declare it: the registry decides
                continue
            raise unknown_field(key, fields)
        typed_value(key, raw, fields[key])
