"""README.md, BENCHMARKS.md and docs/: every link and image resolves from a clone, every
anchor names a heading, and the README stays short enough to read first."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (a repeated heading gets -1, -2...)."""
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = re.match(r"^#{1,6} (.+)$", line)
        if match and not fenced:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_and_anchor_resolves(page: Path) -> None:
    links = local_links(page)
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} does not exist"
        if anchor:
            assert anchor in github_anchors(target), f"{page.name}: no heading for {link}"


def test_the_pages_name_no_issue_numbers() -> None:
    for page in PAGES:
        found = re.findall(r"\bissues? #?\d+", page.read_text(encoding="utf-8"), re.IGNORECASE)
        assert not found, f"{page.name}: {found}"


def test_readme_fits_on_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 360, len(lines)
