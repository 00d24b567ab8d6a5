"""Fold a batch of events into per-(workspace, project) totals before touching any metric.

Updating labelled prometheus-client metrics per event caps a worker near 70k
events/s; summing a batch first means one update per series per batch. Pure:
no Kafka, no prometheus-client.
"""

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consumer.nativehist import Native
from schemas import CreateSessionResponseBody

SeriesKey = tuple[str, str]
"""(workspace_id, project_id), project_id "" when the event has none."""


@dataclass(frozen=True, slots=True)
class Buckets:
    """Upper bounds (inclusive, like Prometheus' `le`) of the three histograms."""

    duration_seconds: tuple[float, ...]
    tokens: tuple[float, ...]
    cost: tuple[float, ...]
    native: bool = False
    """Also count native (exponential) buckets (`--native-histograms`, nativehist.py)."""


class Totals:
    """Sums and non-cumulative histogram bucket counts of one series.

    Bucket lists have one slot per bound plus a last one for +Inf; the
    exposition makes them cumulative, which keeps the hot path to one bisect.
    """

    __slots__ = (
        "completion_tokens",
        "cost",
        "cost_buckets",
        "duration_buckets",
        "duration_seconds",
        "input_cost",
        "native",
        "output_cost",
        "prompt_tokens",
        "sessions",
        "tokens",
        "tokens_buckets",
        "traces",
    )

    def __init__(self, buckets: Buckets) -> None:
        self.sessions = 0
        self.input_cost = 0.0
        self.output_cost = 0.0
        self.cost = 0.0
        self.prompt_tokens = 0.0
        self.completion_tokens = 0.0
        self.tokens = 0.0
        self.traces = 0.0
        self.duration_seconds = 0.0
        self.duration_buckets = [0] * (len(buckets.duration_seconds) + 1)
        self.tokens_buckets = [0] * (len(buckets.tokens) + 1)
        self.cost_buckets = [0] * (len(buckets.cost) + 1)
        self.native = [Native(), Native(), Native()] if buckets.native else None

    def merge(self, other: "Totals") -> None:
        self.sessions += other.sessions
        self.input_cost += other.input_cost
        self.output_cost += other.output_cost
        self.cost += other.cost
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.tokens += other.tokens
        self.traces += other.traces
        self.duration_seconds += other.duration_seconds
        _add_into(self.duration_buckets, other.duration_buckets)
        _add_into(self.tokens_buckets, other.tokens_buckets)
        _add_into(self.cost_buckets, other.cost_buckets)
        if self.native is not None and other.native is not None:
            for mine, theirs in zip(self.native, other.native, strict=True):
                mine.merge(theirs)


def _add_into(target: list[int], source: list[int]) -> None:
    for i, n in enumerate(source):
        if n:
            target[i] += n


def aggregate(
    events: Iterable[CreateSessionResponseBody],
    buckets: Buckets,
    admit: Callable[[SeriesKey, int], SeriesKey] | None = None,
) -> dict[SeriesKey, Totals]:
    """Totals per series of `events`; the caller has already dropped duplicates.

    `admit(key, sessions)` names the series a key's events go to (the cardinality
    guard): asked once per key, with the key's session count.
    """
    if buckets.native and not isinstance(events, list):
        events = list(events)  # read twice
    out: dict[SeriesKey, Totals] = {}
    duration_bounds, tokens_bounds, cost_bounds = (
        buckets.duration_seconds,
        buckets.tokens,
        buckets.cost,
    )
    for event in events:
        key = (event.workspace_id, event.project_id or "")
        t = out.get(key)
        if t is None:
            t = out[key] = Totals(buckets)
        billing, usage = event.billing, event.usage
        seconds = event.duration / 1000.0
        t.sessions += 1
        t.input_cost += billing.input_cost
        t.output_cost += billing.output_cost
        t.cost += billing.total_cost
        t.prompt_tokens += usage.prompt_tokens
        t.completion_tokens += usage.completion_tokens
        t.tokens += usage.total_tokens
        t.traces += event.traces_count
        t.duration_seconds += seconds
        t.duration_buckets[bisect_left(duration_bounds, seconds)] += 1
        t.tokens_buckets[bisect_left(tokens_bounds, usage.total_tokens)] += 1
        t.cost_buckets[bisect_left(cost_bounds, billing.total_cost)] += 1
    if buckets.native:
        _native(out, events)
    return out if admit is None else _admitted(out, admit)


def _native(out: dict[SeriesKey, Totals], events: Iterable[CreateSessionResponseBody]) -> None:
    """The native buckets, in a pass of their own: only `--native-histograms` pays."""
    for event in events:
        natives = out[(event.workspace_id, event.project_id or "")].native
        assert natives is not None
        duration, tokens, cost = natives
        duration.observe(event.duration / 1000.0)
        tokens.observe(event.usage.total_tokens)
        cost.observe(event.billing.total_cost)


def _admitted(
    totals: dict[SeriesKey, Totals], admit: Callable[[SeriesKey, int], SeriesKey]
) -> dict[SeriesKey, Totals]:
    out: dict[SeriesKey, Totals] = {}
    for key, t in totals.items():
        target = admit(key, t.sessions)
        if target in out:
            out[target].merge(t)
        else:
            out[target] = t
    return out


def newest_event_time(events: Iterable[CreateSessionResponseBody]) -> float | None:
    """Newest updatedAt (else startedAt) as a Unix timestamp, None if no event carries one."""
    newest = None
    for event in events:
        when = event.updated_at or event.started_at
        if when is not None and (newest is None or when > newest):
            newest = when
    return None if newest is None else newest.timestamp()
