"""BENCHMARKS.md: the prose around the numbers of the latest run."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Results


def render(r: "Results", table: list[str], verdicts: list[str]) -> str:
    return "\n".join(["# Benchmarks", "", *table, "", *verdicts, ""])
