"""Every relative link in README.md and docs/*.md points at a file or folder that exists, and a link with a
`#fragment` into a markdown page names one of that page's headings (GitHub's anchor for it). Text only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(text: str) -> list[str]:
    return LINK.findall(_prose(text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, links reduced to their text, punctuation dropped, spaces -> '-'."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = anchor(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def broken(page: Path) -> list[str]:
    problems = []
    for target in links(page.read_text()):
        if target.startswith(EXTERNAL):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            problems.append(f"{page.relative_to(ROOT)}: {target} (no heading #{fragment} in {file.name})")
    return problems


def test_the_checker_reads_links_and_headings() -> None:
    text = "# A `make demo` run (CPU)\n## Same\n## Same\n[x](a.md#b) ![p](c.png) `[not](a link)`\n```\n[no](t)\n```\n"
    assert links(text) == ["a.md#b", "c.png"]
    assert anchors(text) == {"a-make-demo-run-cpu", "same", "same-1"}
    assert anchor("The paper's model (GPU)") == "the-papers-model-gpu"


def test_the_pages_have_links() -> None:
    assert len(PAGES) > 2 and all(links(page.read_text()) for page in PAGES[:2])


def test_every_relative_link_resolves() -> None:
    problems = [problem for page in PAGES for problem in broken(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)
