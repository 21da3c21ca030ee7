"""The token seam's direction: the sequence-editing core, the installs methods share, the cost meter and the engine's
attention scoring name no method (not even under TYPE_CHECKING), and only tamp/models/internals.py reaches the
transformers internals the seam relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tamp

ROOT = Path(tamp.__file__).parent
# every module of the sequence-editing core and the installs it shares (tamp/inference/), of the engine, and
# the internals module: the methods build on them, never the reverse
CORE = tuple(sorted(str(p.relative_to(ROOT)) for folder in ("inference", "engine") for p in (ROOT / folder).glob("*.py"))
             ) + ("models/internals.py",)
# the names only tamp/models/internals.py may spell (as attributes or strings)
PRIVATE = ("_attn_implementation_internal", "eager_attention_forward")


def _imported(path: Path) -> set[str]:
    """Every module a file imports anywhere (module level, functions, TYPE_CHECKING blocks)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return out


@pytest.mark.parametrize("relative", CORE)
def test_the_core_names_no_method(relative: str) -> None:
    imported = _imported(ROOT / relative)
    assert not [m for m in imported if m == "tamp.methods" or m.startswith("tamp.methods.")], imported


def test_private_internals_are_named_in_one_module() -> None:
    spelled = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") for name in PRIVATE if name in p.read_text()}
    assert spelled == {"models/internals.py"}
