"""What `reconcile` prints: a table for people, JSON for scripts. Pure.

Numbers are printed exactly (repr of the float, whole numbers without a point), since
"to the cent" means nothing if the printing rounds.
"""

import json
from collections.abc import Sequence
from typing import Any

from consumer.metrics import COUNTERS
from consumer.reconcile import Row, Sample, Summary, sample_names


def number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def series_name(sample: Sample) -> str:
    name, workspace, project, le = sample
    labels = f"workspace_id={json.dumps(workspace)}, project_id={json.dumps(project)}"
    return f"{name}{{{labels}{f', le={json.dumps(le)}' if le else ''}}}"


def as_json(rows: Sequence[Row]) -> str:
    """One object per sample; `le` on buckets only, `prometheus` and `difference` only
    when a Prometheus was asked. Scripts rely on these names."""
    out: list[dict[str, Any]] = []
    for r in rows:
        name, workspace, project, le = r.sample
        item: dict[str, Any] = {"metric": name, "workspace_id": workspace, "project_id": project}
        if le:
            item["le"] = le
        item["log"] = r.log
        if r.prometheus is not None:
            item["prometheus"] = r.prometheus
            item["difference"] = r.difference
            item["equal"] = r.equal
        out.append(item)
    return json.dumps(out, indent=1)


def differences_table(rows: Sequence[Row]) -> str:
    """The samples that differ ("" when none does)."""
    differing = sorted((r for r in rows if not r.equal), key=_by_series)
    if not differing:
        return ""
    header = ("series", "log", "prometheus", "difference")
    body = [
        (series_name(r.sample), number(r.log), number(r.prometheus or 0.0), _signed(r))
        for r in differing
    ]
    return "\n".join(_aligned([header, *body]))


_ORDER = {name: i for i, name in enumerate(sample_names())}


def _by_series(r: Row) -> tuple[str, str, int, float]:
    """A series' samples together, sessions first, in the exposition's order."""
    name, workspace, project, le = r.sample
    return workspace, project, _ORDER.get(name, len(_ORDER)), float(le) if le else 0.0


def _signed(r: Row) -> str:
    text = number(r.difference)
    return text if text.startswith("-") else "+" + text


def summary_line(s: Summary) -> str:
    cost = f"cost: log {number(s.log_cost)}"
    if s.prometheus_cost is not None:
        cost += f", Prometheus {number(s.prometheus_cost)}"
        return (
            f"{s.compared} samples of {s.series} series compared: {s.equal} equal, "
            f"{s.differing} differing; {cost}"
        )
    return f"{s.series} series, {number(s.log_sessions)} sessions; {cost}"


def totals_table(rows: Sequence[Row]) -> str:
    """Offline: one line per series with its counters (the buckets are in the JSON)."""
    counters = [f"{name}_total" for name, _, _ in COUNTERS]
    by_series: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        name, workspace, project, _ = r.sample
        if name in counters:
            by_series.setdefault((workspace, project), {})[name] = r.log
    short = [
        c.removeprefix("llm_session_").removeprefix("llm_").removesuffix("_total") for c in counters
    ]
    header = ("workspace_id", "project_id", *short)
    body = [
        (w, p or '""', *(number(values.get(c, 0.0)) for c in counters))
        for (w, p), values in sorted(by_series.items())
    ]
    return "\n".join(_aligned([header, *body]))


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]
