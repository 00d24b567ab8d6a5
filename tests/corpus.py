"""Expected totals of a synthetic corpus, computed the plain way (one event at a time)."""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.settings import (
    DEFAULT_COST_BUCKETS,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_TOKENS_BUCKETS,
)
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


SampleKey = tuple[str, str, str, str]
"""(sample name, workspace_id, project_id, le or "")."""


def _bounds(text: str) -> list[float]:
    return [float(b) for b in text.split(",")]


def expected_samples(events: list[CreateSessionResponseBody]) -> dict[SampleKey, float]:
    """Every business sample the events must produce at the default buckets, computed one
    event at a time without the project's aggregation code."""
    out: dict[SampleKey, float] = defaultdict(float)
    histograms = (
        ("llm_session_duration_seconds", _bounds(DEFAULT_DURATION_BUCKETS)),
        ("llm_session_tokens_per_session", _bounds(DEFAULT_TOKENS_BUCKETS)),
        ("llm_session_cost_per_session", _bounds(DEFAULT_COST_BUCKETS)),
    )
    for e in events:
        ws, proj = e.workspace_id, e.project_id or ""
        counters = {
            "llm_sessions_total": 1.0,
            "llm_session_input_cost_total": e.billing.input_cost,
            "llm_session_output_cost_total": e.billing.output_cost,
            "llm_session_cost_total": e.billing.total_cost,
            "llm_session_prompt_tokens_total": e.usage.prompt_tokens,
            "llm_session_completion_tokens_total": e.usage.completion_tokens,
            "llm_session_tokens_total": e.usage.total_tokens,
            "llm_session_traces_total": e.traces_count,
        }
        for name, value in counters.items():
            out[(name, ws, proj, "")] += value
        observed = (e.duration / 1000, e.usage.total_tokens, e.billing.total_cost)
        for (name, bounds), value in zip(histograms, observed, strict=True):
            for bound in bounds:
                if value <= bound:
                    out[(f"{name}_bucket", ws, proj, repr(bound))] += 1
            out[(f"{name}_bucket", ws, proj, "+Inf")] += 1
            out[(f"{name}_count", ws, proj, "")] += 1
            out[(f"{name}_sum", ws, proj, "")] += value
    return dict(out)


def counted_by_window(
    partitions: Iterable[Sequence[CreateSessionResponseBody]], window: int
) -> list[CreateSessionResponseBody]:
    """The events that count when each partition's log (its events in offset order, one
    per offset) is read with the log-window rule: a record at offset o whose session id
    also sits at an offset in [o - window, o) of the same partition is a repeat."""
    out = []
    for log in partitions:
        last: dict[str, int] = {}
        for offset, e in enumerate(log):
            before = last.get(e.id)
            if before is None or before < offset - window:
                out.append(e)
            last[e.id] = offset
    return out


def counted_once(events: Iterable[CreateSessionResponseBody]) -> list[CreateSessionResponseBody]:
    """Each session id's first event: what counts when every repeat, anywhere, is caught."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out
