"""README.md, BENCHMARKS.md and docs/: every link and image resolves from a clone, every
anchor names a heading, the README stays short enough to read first, and the metric
families, invalid reasons and label values the docs list are the code's."""

import argparse
import re
from pathlib import Path

import pytest

from consumer.decode import Reason
from consumer.envelope import Kind
from consumer.metrics import OUTCOMES
from consumer.settings import run_settings
from consumer.worker import Worker

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


# --- what the docs list is what the code has --------------------------------------------------

METRIC_NAME = re.compile(r"(?:llm|session_consumer|process)_\w+")
TICKED = re.compile(r"`([^`]+)`")


def exported_families() -> set[str]:
    """Every family a `run` worker's /metrics has, named as the docs name them."""
    settings = run_settings(argparse.Namespace(bootstrap_servers="k:9092", topic="t"), environ={})
    worker = Worker(settings=settings)  # registers the collectors it reads at scrape time
    worker.metrics.register_process()  # as service.serve does
    suffix = {"counter": "_total", "info": "_info"}
    return {f.name + suffix.get(f.type, "") for f in worker.metrics.registry.collect()}


def table_metrics(page: Path) -> set[str]:
    """The metric names in the first column of a page's tables."""
    rows = [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    cells = [row.split("|")[1] for row in rows]
    return {name for cell in cells for name in TICKED.findall(cell) if METRIC_NAME.fullmatch(name)}


def paragraph(page: Path, start: str) -> str:
    text = page.read_text(encoding="utf-8")
    return text[text.index(start) :].split("\n\n", 1)[0]


def test_the_metrics_page_lists_exactly_the_families_a_worker_exports() -> None:
    assert table_metrics(ROOT / "docs" / "metrics.md") == exported_families()


def test_the_readme_tables_list_only_exported_families_and_all_but_process_ones() -> None:
    exported = exported_families()
    listed = table_metrics(ROOT / "README.md")

    assert listed <= exported
    assert {n for n in exported if not n.startswith("process_")} <= listed


def test_the_invalid_reasons_listed_are_the_decoders_reasons() -> None:
    codes = {reason.value for reason in Reason}
    listed = paragraph(ROOT / "docs" / "metrics.md", "Invalid reasons").split("):", 1)[1]
    listed = listed.split("(what each means", 1)[0]
    table = paragraph(ROOT / "docs" / "input.md", "| reason |")

    assert {n for n in TICKED.findall(listed) if re.fullmatch(r"[a-z0-9_]+", n)} == codes
    assert {row.split("`")[1] for row in table.splitlines()[2:]} == codes


def test_the_label_values_listed_are_the_codes() -> None:
    rows = {
        TICKED.findall(row.split("|")[1])[0]: row.split("|")[3]
        for row in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines()
        if row.startswith("| `session_consumer_")
    }

    assert TICKED.findall(rows["session_consumer_messages_total"])[1:] == list(OUTCOMES)
    assert TICKED.findall(rows["session_consumer_value_format_total"])[1:] == list(Kind)
