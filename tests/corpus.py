"""Expected totals of a synthetic corpus, computed the plain way (one event at a time)."""

from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.synthetic import SessionFactory
from schemas import CreateSessionResponseBody


@dataclass
class Expected:
    sessions: int = 0
    cost: float = 0.0
    input_cost: float = 0.0
    tokens: float = 0.0
    duration_seconds: float = 0.0


def expected_totals(events: list[CreateSessionResponseBody]) -> dict[tuple[str, str], Expected]:
    out: dict[tuple[str, str], Expected] = defaultdict(Expected)
    for e in events:
        t = out[(e.workspace_id, e.project_id or "")]
        t.sessions += 1
        t.cost += e.billing.total_cost
        t.input_cost += e.billing.input_cost
        t.tokens += e.usage.total_tokens
        t.duration_seconds += e.duration / 1000
    return dict(out)


def corpus(seed: int, count: int) -> list[CreateSessionResponseBody]:
    """The events `produce(seed=seed, count=count)` sends (same factory, same seed)."""
    return list(SessionFactory(seed).events(count))


def series_values(registry: CollectorRegistry) -> dict[str, dict[tuple[str, str], float]]:
    """Every business sample by name, keyed by (workspace_id, project_id); one collect()."""
    out: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for family in registry.collect():
        for s in family.samples:
            if "workspace_id" in s.labels and "le" not in s.labels:
                out[s.name][(s.labels["workspace_id"], s.labels["project_id"])] = s.value
    return out
