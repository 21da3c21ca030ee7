"""Typed schemas for what tamp and harness read back from disk: a dataclass declares a format's fields and their
types, and `check` holds parsed data against it.

Why one validator: pruning.json's `transform` section, run records and published CSVs are each read in several
places (the cache, the lmms-eval wrappers, `tamp inspect`, `harness table` / `export` / `plot`). Checked once,
against a declaration, a field of the wrong type becomes one line naming the file, the field and the type it must
have, wherever it is read, instead of a traceback deep in whichever reader touches it first.

The field types a schema may use: str, int, float, bool, None, Any, `X | Y`, list[X], dict[str, X]. An int is
never a bool, a float takes an int and must be finite (JSON holds no NaN or inf, but Python's reader accepts them).
A field with a default may be absent; keys the schema does not name are left alone (newer writers may add some).
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from tamp.errors import TampError


class SchemaError(TampError):
    """Data that does not match its schema: ``field`` is the dotted path of the first wrong field (``""`` for the
    data itself), ``expected`` what it must be."""

    def __init__(self, message: str, field: str, expected: str) -> None:
        super().__init__(message)
        self.field = field
        self.expected = expected


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def describe(annotation: Any) -> str:
    """A type in words, for the error line ("a number", "a list of whole numbers", ...)."""
    if annotation is Any:
        return "any value"
    if is_dataclass(annotation):
        return f"a table of {', '.join(f.name for f in fields(annotation))}"
    if annotation is type(None) or annotation is None:
        return "null"
    if _is_union(annotation):
        options = [a for a in _args(annotation) if not (a is int and float in _args(annotation))]  # a number says it
        words = [describe(a) for a in options]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"a list of {_plural(describe(_args(annotation)[0]))}"
    if origin is dict:
        return f"a table whose values are each {describe(_args(annotation)[1])}"
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}.get(annotation,
                                                                                                str(annotation))


def _plural(words: str) -> str:
    """"a number" -> "numbers", "a list of numbers" -> "lists of numbers" (the words `describe` makes)."""
    if " or " in words or words in ("true or false", "null"):
        return f"({words})"
    bare = words.removeprefix("a ")
    head, sep, rest = bare.partition(" of ")
    return f"{head}s{sep}{rest}"


def mismatch(value: Any, annotation: Any, where: str = "") -> tuple[str, str, Any] | None:
    """(dotted path of the first part of ``value`` that is not ``annotation``, its expected type in words, that
    part), or None when it matches."""
    if annotation is Any:
        return None
    if is_dataclass(annotation):
        return _record_mismatch(annotation, value, where)
    if _is_union(annotation):
        options = _args(annotation)
        if any(mismatch(value, a) is None for a in options):
            return None
        # a value of the right container but with a wrong item: name the item (the deepest one any option finds)
        inner = [mismatch(value, a, where) for a in options
                 if (typing.get_origin(a) in (list, dict) and isinstance(value, typing.get_origin(a)))
                 or (is_dataclass(a) and isinstance(value, dict))]
        found = max((m for m in inner if m is not None), key=lambda m: len(m[0]), default=None)
        return found if found is not None else (where, describe(annotation), value)
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            return where, describe(annotation), value
        for i, item in enumerate(value):
            found = mismatch(item, _args(annotation)[0], f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return where, describe(annotation), value
        for key, item in value.items():
            found = mismatch(item, _args(annotation)[1], f"{where}.{key}" if where else key)
            if found is not None:
                return found
        return None
    ok = {
        type(None): lambda: value is None,
        str: lambda: isinstance(value, str),
        bool: lambda: isinstance(value, bool),
        int: lambda: isinstance(value, int) and not isinstance(value, bool),
        float: lambda: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
    }[annotation]()
    return None if ok else (where, describe(annotation), value)


def shown(value: Any) -> str:
    """A value as the error line shows it: short."""
    try:
        text = json.dumps(value)  # as the file holds it (null, true, "5")
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _record_mismatch(schema: type, data: Any, where: str) -> tuple[str, str, Any] | None:
    """`mismatch` for a dataclass: a table holding each field without a default, each field of its type."""
    hints = typing.get_type_hints(schema)
    if not isinstance(data, dict):
        return where, describe(schema), data
    for f in fields(schema):
        path = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                return path, describe(hints[f.name]), MISSING
            continue
        found = mismatch(data[f.name], hints[f.name], path)
        if found is not None:
            return found
    return None


def problem(schema: type, data: Any) -> str | None:
    """What is wrong with ``data`` (parsed JSON) against the dataclass ``schema``, in words that follow "FILE: "
    (the field, its value, the type it must have), or None when it fits."""
    found = _record_mismatch(schema, data, "")
    if found is None:
        return None
    path, expected, value = found
    if not path:
        return f"it is {shown(value)}, expected {expected}"
    if value is MISSING:
        return f"field '{path}' is missing ({expected})"
    return f"field '{path}' is {shown(value)}, expected {expected}"


def check(schema: type, data: Any, what: str, hint: str = "") -> None:
    """Hold ``data`` against ``schema``; raise SchemaError, one line: ``what`` (e.g. the file and its section), then
    `problem`'s words, then ``hint`` (what to do), if given."""
    found = _record_mismatch(schema, data, "")
    if found is not None:
        path, expected, _ = found
        raise SchemaError(f"{what}: {problem(schema, data)}" + (f"; {hint}" if hint else ""), path, expected)


def from_text(schema: type, row: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """A row of text cells (a CSV's) as its schema's types: (values, None), or (None, what is wrong in `problem`'s
    words). str, int and float fields only; an int or float cell must parse as one (and a float be finite)."""
    hints = typing.get_type_hints(schema)
    out: dict[str, Any] = {}
    for f in fields(schema):
        text, kind = row.get(f.name), hints[f.name]
        if text is None:
            continue
        try:
            value = kind(text.strip()) if kind in (int, float) else text
        except ValueError:
            value = None
        if kind in (int, float) and mismatch(value, kind) is not None:  # unparsed, or inf / nan
            return None, f"field '{f.name}' is {shown(text)}, expected {describe(kind)}"
        out[f.name] = value
    wrong = problem(schema, out)
    return (None, wrong) if wrong is not None else (out, None)
