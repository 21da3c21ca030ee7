"""The demo tables in docs/benchmarks.md are what `make demo` and `make token-demo` wrote (their copies in
results/), value for value, and the commands it shows are the ones the Makefile runs. Text only: no model is run
here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tamp.models import shipped

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "benchmarks.md").read_text()
DEMO = "## What `make demo` measured"
TOKEN_DEMO = "## Token methods beside weight pruning"
TABLE = "tiny-trained-llava-next_unstructured.md"


def _section(title: str) -> str:
    """From the heading that starts with `title` to the next heading of the same level or higher."""
    level = len(title) - len(title.lstrip("#"))
    start = PAGE.index("\n" + title) + 1
    ends = [PAGE.find("\n" + "#" * n + " ", start + len(title)) for n in range(1, level + 1)]
    ends = [end for end in ends if end >= 0]
    return PAGE[start:min(ends) if ends else None]


def _rows(text: str, header: str) -> list[list[str]]:
    """The body rows of the first markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _harness_scores(path: Path) -> dict[int, dict[str, str]]:
    """sparsity % -> method -> the `Held-out VQA` cell of each scores table the sweep wrote."""
    out: dict[int, dict[str, str]] = {}
    for block in path.read_text().split("\n### ")[1:]:
        match = re.match(r"tiny-trained-llava-next: unstructured, (\d+)% sparsity \(scores", block)
        if match:
            out[int(match.group(1))] = {row[0]: row[1] for row in _rows(block, "| Method")}
    return out


def test_the_demo_table_is_what_make_demo_wrote() -> None:
    scores = _harness_scores(ROOT / "results" / "demo" / TABLE)
    assert sorted(scores) == [30, 50, 70]
    page = {row[0]: row[1:] for row in _rows(_section(DEMO), "| method | 30% |")}
    assert list(page) == list(scores[30])  # every method, in the harness's order
    for method, cells in page.items():
        assert cells == [scores[s][method] for s in (30, 50, 70)], method


def test_the_token_table_scores_are_what_make_token_demo_wrote() -> None:
    [scores] = _harness_scores(ROOT / "results" / "token-demo" / TABLE).values()
    page = {row[0]: row[1] for row in _rows(_section(TOKEN_DEMO), "| method | held-out")}
    assert page == scores


def test_the_demo_ran_on_the_shipped_build() -> None:
    build = shipped.build_id(shipped.weights_sha256("llava-next"))
    assert f"(`model_build` `{build}`)" in _section(DEMO)
    for folder in ("demo", "token-demo"):
        board = (ROOT / "results" / folder / "leaderboard.csv").read_text().splitlines()
        assert board[0].startswith("model,model_build,") and all(f",{build}," in line for line in board[1:])


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target,title", [("demo", DEMO), ("token-demo", TOKEN_DEMO)])
def test_the_page_shows_the_command_make_runs(target: str, title: str) -> None:
    ran = subprocess.run(["make", "-s", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ran = " ".join(ran.replace("\\\n", " ").split()).removeprefix(".venv/bin/")
    block = _section(title).split("```bash\n", 1)[1].split("```", 1)[0]
    shown = " ".join(block.replace(f"make {target}", "").replace("#", " ").replace("=", " ", 1).split())
    assert shown == ran
