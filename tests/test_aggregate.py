"""consumer/aggregate.py: per-(workspace, project) totals and histogram buckets of a batch."""

import math
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

from consumer.aggregate import Buckets, SeriesKey, Totals, aggregate, newest_event_time
from consumer.settings import DEFAULT_COST_BUCKETS, DEFAULT_DURATION_BUCKETS, DEFAULT_TOKENS_BUCKETS
from consumer.synthetic import SessionFactory
from schemas import CreateSessionBilling, CreateSessionResponseBody, CreateSessionSessionsUsage

BUCKETS = Buckets(duration_seconds=(1.0, 5.0), tokens=(100.0, 1000.0), cost=(0.1, 1.0))

FLOAT_FIELDS = (
    "input_cost",
    "output_cost",
    "cost",
    "prompt_tokens",
    "completion_tokens",
    "tokens",
    "traces",
    "duration_seconds",
)
BUCKET_FIELDS = ("duration_buckets", "tokens_buckets", "cost_buckets")


def session(
    workspace: str = "ws-1",
    project: str | None = "proj-1",
    *,
    duration_ms: float = 500.0,
    input_cost: float = 0.25,
    output_cost: float = 0.5,
    total_cost: float = 0.75,
    prompt_tokens: float = 60.0,
    completion_tokens: float = 20.0,
    total_tokens: float = 80.0,
    traces: float = 2.0,
    started_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> CreateSessionResponseBody:
    return CreateSessionResponseBody(
        id=f"s-{workspace}-{project}-{duration_ms}",
        external_id="ext",
        duration=duration_ms,
        contact_ids=[],
        billing=CreateSessionBilling(
            input_cost=input_cost, output_cost=output_cost, total_cost=total_cost
        ),
        usage=CreateSessionSessionsUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total_tokens,
        ),
        traces_count=traces,
        tags=[],
        workspace_id=workspace,
        project_id=project,
        started_at=started_at,
        updated_at=updated_at,
    )


def parse(bounds: str) -> tuple[float, ...]:
    return tuple(float(b) for b in bounds.split(","))


def test_totals_are_exact_per_workspace_and_project() -> None:
    events = [
        session("ws-1", "p-1", input_cost=0.25, output_cost=0.5, total_cost=0.75, traces=1.0),
        session("ws-1", "p-1", input_cost=1.0, output_cost=2.0, total_cost=3.0, traces=4.0),
        session("ws-1", "p-2", input_cost=0.5, output_cost=0.5, total_cost=1.0, traces=2.0),
        session("ws-2", "p-1", prompt_tokens=7.0, completion_tokens=3.0, total_tokens=10.0),
    ]

    out = aggregate(events, BUCKETS)

    assert set(out) == {("ws-1", "p-1"), ("ws-1", "p-2"), ("ws-2", "p-1")}
    t = out[("ws-1", "p-1")]
    assert t.sessions == 2
    assert (t.input_cost, t.output_cost, t.cost) == (1.25, 2.5, 3.75)
    assert (t.prompt_tokens, t.completion_tokens, t.tokens) == (120.0, 40.0, 160.0)
    assert t.traces == 5.0
    assert out[("ws-1", "p-2")].sessions == 1
    assert out[("ws-1", "p-2")].cost == 1.0
    assert (out[("ws-2", "p-1")].prompt_tokens, out[("ws-2", "p-1")].tokens) == (7.0, 10.0)


def test_missing_or_empty_project_is_the_empty_string() -> None:
    out = aggregate([session("ws-1", None), session("ws-1", ""), session("ws-1", "p")], BUCKETS)

    assert set(out) == {("ws-1", ""), ("ws-1", "p")}
    assert out[("ws-1", "")].sessions == 2


def test_no_events_give_no_series() -> None:
    assert aggregate([], BUCKETS) == {}


def test_duration_milliseconds_are_summed_as_seconds() -> None:
    out = aggregate([session(duration_ms=1500.0), session(duration_ms=250.0)], BUCKETS)

    assert out[("ws-1", "proj-1")].duration_seconds == 1.75


def test_value_equal_to_a_bound_lands_in_that_bucket() -> None:
    # Bounds are inclusive upper bounds, like Prometheus' `le`.
    events = [
        session(duration_ms=1000.0, total_tokens=100.0, total_cost=0.1),
        session(duration_ms=5000.0, total_tokens=1000.0, total_cost=1.0),
    ]

    t = aggregate(events, BUCKETS)[("ws-1", "proj-1")]

    assert t.duration_buckets == [1, 1, 0]
    assert t.tokens_buckets == [1, 1, 0]
    assert t.cost_buckets == [1, 1, 0]


def test_value_just_above_a_bound_lands_in_the_next_bucket() -> None:
    events = [session(duration_ms=1001.0, total_tokens=100.5, total_cost=0.10000001)]

    t = aggregate(events, BUCKETS)[("ws-1", "proj-1")]

    assert t.duration_buckets == [0, 1, 0]
    assert t.tokens_buckets == [0, 1, 0]
    assert t.cost_buckets == [0, 1, 0]


def test_zero_lands_in_the_first_bucket() -> None:
    t = aggregate([session(duration_ms=0.0, total_tokens=0.0, total_cost=0.0)], BUCKETS)

    totals = t[("ws-1", "proj-1")]
    assert (totals.duration_buckets, totals.tokens_buckets, totals.cost_buckets) == (
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
    )


def test_value_above_the_last_bound_lands_in_the_inf_slot() -> None:
    events = [session(duration_ms=5000.001, total_tokens=1e9, total_cost=1.5)]

    t = aggregate(events, BUCKETS)[("ws-1", "proj-1")]

    assert t.duration_buckets == [0, 0, 1]
    assert t.tokens_buckets == [0, 0, 1]
    assert t.cost_buckets == [0, 0, 1]


def test_merge_adds_every_sum_and_bucket() -> None:
    first = [session(duration_ms=500.0, total_cost=0.05), session(duration_ms=7000.0)]
    second = [session(duration_ms=2000.0, total_tokens=5000.0, total_cost=2.0, traces=9.0)]
    key: SeriesKey = ("ws-1", "proj-1")
    merged = aggregate(first, BUCKETS)[key]
    merged.merge(aggregate(second, BUCKETS)[key])

    expected = aggregate(first + second, BUCKETS)[key]

    assert merged.sessions == expected.sessions == 3
    for name in (*FLOAT_FIELDS, *BUCKET_FIELDS):
        assert getattr(merged, name) == getattr(expected, name), name
    assert merged.duration_buckets == [1, 1, 1]
    assert merged.cost_buckets == [1, 1, 1]


def test_merge_into_empty_totals_copies_everything() -> None:
    source = aggregate([session(duration_ms=3000.0)], BUCKETS)[("ws-1", "proj-1")]
    target = Totals(BUCKETS)

    target.merge(source)

    for name in ("sessions", *FLOAT_FIELDS, *BUCKET_FIELDS):
        assert getattr(target, name) == getattr(source, name), name
    # merge copies values, it does not alias the source's lists.
    target.merge(source)
    assert source.duration_buckets == [0, 1, 0]
    assert target.duration_buckets == [0, 2, 0]


def test_newest_event_time_prefers_updated_at_over_started_at() -> None:
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    events = [
        # updatedAt wins even when startedAt is later (placeholder data is not consistent).
        session(started_at=start + timedelta(hours=5), updated_at=start + timedelta(minutes=1)),
        session(started_at=start + timedelta(minutes=2)),
        session(),
    ]

    assert newest_event_time(events) == (start + timedelta(minutes=2)).timestamp()


def test_newest_event_time_compares_across_time_zones() -> None:
    utc = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    plus_two = datetime(2026, 11, 24, 11, 30, tzinfo=timezone(timedelta(hours=2)))  # 09:30 UTC

    assert newest_event_time([session(updated_at=plus_two), session(updated_at=utc)]) == (
        utc.timestamp()
    )


def test_newest_event_time_is_none_without_timestamps() -> None:
    assert newest_event_time([session(), session()]) is None
    assert newest_event_time([]) is None


def test_aggregate_of_synthetic_events_matches_a_per_event_sum() -> None:
    buckets = Buckets(
        parse(DEFAULT_DURATION_BUCKETS), parse(DEFAULT_TOKENS_BUCKETS), parse(DEFAULT_COST_BUCKETS)
    )
    events = list(SessionFactory(seed=42).events(5000))

    out = aggregate(events, buckets)

    sessions: Counter[SeriesKey] = Counter()
    sums: dict[SeriesKey, dict[str, float]] = {}
    slots: dict[SeriesKey, dict[str, Counter[int]]] = {}
    for e in events:
        key = (e.workspace_id, e.project_id if e.project_id is not None else "")
        sessions[key] += 1
        s = sums.setdefault(key, dict.fromkeys(FLOAT_FIELDS, 0.0))
        s["input_cost"] += e.billing.input_cost
        s["output_cost"] += e.billing.output_cost
        s["cost"] += e.billing.total_cost
        s["prompt_tokens"] += e.usage.prompt_tokens
        s["completion_tokens"] += e.usage.completion_tokens
        s["tokens"] += e.usage.total_tokens
        s["traces"] += e.traces_count
        s["duration_seconds"] += e.duration / 1000
        b = slots.setdefault(key, {name: Counter() for name in BUCKET_FIELDS})
        for name, bounds, value in (
            ("duration_buckets", buckets.duration_seconds, e.duration / 1000),
            ("tokens_buckets", buckets.tokens, e.usage.total_tokens),
            ("cost_buckets", buckets.cost, e.billing.total_cost),
        ):
            b[name][next((i for i, le in enumerate(bounds) if value <= le), len(bounds))] += 1

    assert sum(t.sessions for t in out.values()) == 5000
    assert set(out) == set(sessions)
    assert any(project == "" for _, project in out)
    for key, t in out.items():
        assert t.sessions == sessions[key]
        for name in FLOAT_FIELDS:
            assert math.isclose(getattr(t, name), sums[key][name], rel_tol=1e-9), (key, name)
        for name, bounds in zip(
            BUCKET_FIELDS, (buckets.duration_seconds, buckets.tokens, buckets.cost), strict=True
        ):
            expected = [slots[key][name][i] for i in range(len(bounds) + 1)]
            assert getattr(t, name) == expected, (key, name)
