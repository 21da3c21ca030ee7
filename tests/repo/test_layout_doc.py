"""docs/layout.md lists every Python file of tamp/ and harness/, and every path it lists exists.

A row is a markdown table line whose first cell is one path in backticks: "| `tamp/cli.py` | what it holds |".
When a file is added, moved or removed, add, move or remove its row; the failure names each one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "docs" / "layout.md"
PACKAGES = ("tamp", "harness")
GENERATED = {"out/"}  # listed for orientation: `make demo` creates it, git ignores it
ROW = re.compile(r"^\| *`([^`]+)` *\|(.*)\|\s*$")


def rows(text: str) -> dict[str, str]:
    """path -> description, for every table row whose first cell is a path in backticks."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            path, rest = match.groups()
            assert path not in out, f"docs/layout.md lists {path} twice"
            out[path] = rest.split("|")[0].strip()
    return out


def source_files() -> list[str]:
    """What `find tamp harness -name '*.py' | sort` prints."""
    return sorted(str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_rows_are_read() -> None:
    text = "| file | what |\n|---|---|\n| `tamp/a.py` | A |\n| `tamp/b/` | folder |\nnot a row `tamp/c.py`\n"
    assert rows(text) == {"tamp/a.py": "A", "tamp/b/": "folder"}
    listed = rows(LAYOUT.read_text())
    assert "tamp/cli.py" in listed and "harness/cli.py" in listed


def test_every_source_file_has_a_row() -> None:
    listed = rows(LAYOUT.read_text())
    missing = [path for path in source_files() if path not in listed]
    assert not missing, "add a row \"| `PATH` | what it holds |\" to docs/layout.md for:\n" + "\n".join(missing)


def test_every_row_names_a_path_that_exists() -> None:
    gone = [path for path in rows(LAYOUT.read_text()) if path not in GENERATED and not (ROOT / path).exists()]
    assert not gone, "docs/layout.md lists paths that do not exist (remove or move their rows):\n" + "\n".join(gone)


def test_every_row_says_what_the_file_holds() -> None:
    empty = [path for path, what in rows(LAYOUT.read_text()).items() if not what]
    assert not empty, "docs/layout.md rows with no description: " + ", ".join(empty)
