"""consumer/metrics.py: business series from totals, cardinality guard, lag, no _created."""

from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from consumer.aggregate import Buckets, aggregate
from consumer.metrics import ConsumerMetrics, PartitionLag, ScrapeState
from schemas import CreateSessionBilling, CreateSessionResponseBody, CreateSessionSessionsUsage

BUCKETS = Buckets(duration_seconds=(1.0, 5.0), tokens=(100.0, 1000.0), cost=(0.1, 1.0))
OVERFLOW = {"workspace_id": "__overflow__", "project_id": "__overflow__"}


def session(
    workspace: str,
    project: str | None = "p",
    *,
    duration_ms: float = 500.0,
    total_cost: float = 0.25,
    total_tokens: float = 80.0,
) -> CreateSessionResponseBody:
    return CreateSessionResponseBody(
        id="s",
        external_id="e",
        duration=duration_ms,
        contact_ids=[],
        billing=CreateSessionBilling(input_cost=0.125, output_cost=0.0625, total_cost=total_cost),
        usage=CreateSessionSessionsUsage(
            prompt_tokens=50.0, completion_tokens=30.0, total_tokens=total_tokens
        ),
        traces_count=3.0,
        tags=[],
        workspace_id=workspace,
        project_id=project,
    )


def labels(workspace: str, project: str = "p") -> dict[str, str]:
    return {"workspace_id": workspace, "project_id": project}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_metrics(registry: CollectorRegistry, max_series: int = 100) -> ConsumerMetrics:
    return ConsumerMetrics(BUCKETS, max_series, registry=registry)


def apply(metrics: ConsumerMetrics, events: Iterable[CreateSessionResponseBody]) -> None:
    metrics.business.apply(aggregate(events, BUCKETS, metrics.business.admit))


def test_counters_equal_the_sums_of_the_applied_events(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry)

    apply(metrics, [session("ws-1", total_cost=0.25), session("ws-1", total_cost=0.5)])
    apply(metrics, [session("ws-1", total_cost=1.0), session("ws-2", None, total_cost=2.0)])

    value = registry.get_sample_value
    assert value("llm_session_cost_total", labels("ws-1")) == 1.75
    assert value("llm_sessions_total", labels("ws-1")) == 3.0
    assert value("llm_session_input_cost_total", labels("ws-1")) == 0.375
    assert value("llm_session_output_cost_total", labels("ws-1")) == 0.1875
    assert value("llm_session_prompt_tokens_total", labels("ws-1")) == 150.0
    assert value("llm_session_completion_tokens_total", labels("ws-1")) == 90.0
    assert value("llm_session_tokens_total", labels("ws-1")) == 240.0
    assert value("llm_session_traces_total", labels("ws-1")) == 9.0
    assert value("llm_session_cost_total", labels("ws-2", "")) == 2.0
    assert value("llm_sessions_total", labels("ws-2", "")) == 1.0
    assert metrics.business.grand_total() == (4.0, 3.75)


def test_histogram_buckets_are_cumulative_with_le_labels(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry)
    durations_ms = [200.0, 1000.0, 3000.0, 5000.0, 9000.0]

    apply(metrics, [session("ws-1", duration_ms=d) for d in durations_ms])

    value = registry.get_sample_value
    base = labels("ws-1")
    name = "llm_session_duration_seconds"
    cumulative = {le: value(f"{name}_bucket", {**base, "le": le}) for le in ("1.0", "5.0", "+Inf")}
    assert cumulative == {"1.0": 2.0, "5.0": 4.0, "+Inf": 5.0}
    assert value(f"{name}_count", base) == 5.0
    assert value(f"{name}_sum", base) == 18.2


def test_inf_bucket_equals_count_for_every_histogram(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry)
    apply(
        metrics,
        [
            session("ws-1", total_cost=0.05, total_tokens=50.0),
            session("ws-1", total_cost=0.5, total_tokens=5000.0),
            session("ws-1", total_cost=50.0, total_tokens=100.0),
        ],
    )

    value = registry.get_sample_value
    base = labels("ws-1")
    for name in (
        "llm_session_duration_seconds",
        "llm_session_tokens_per_session",
        "llm_session_cost_per_session",
    ):
        assert value(f"{name}_bucket", {**base, "le": "+Inf"}) == value(f"{name}_count", base) == 3
    assert [
        value("llm_session_cost_per_session_bucket", {**base, "le": le})
        for le in ("0.1", "1.0", "+Inf")
    ] == [1.0, 2.0, 3.0]
    assert [
        value("llm_session_tokens_per_session_bucket", {**base, "le": le})
        for le in ("100.0", "1000.0", "+Inf")
    ] == [2.0, 2.0, 3.0]
    assert value("llm_session_cost_per_session_sum", base) == 50.55


def test_series_beyond_max_series_go_to_overflow_labels(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry, max_series=2)
    value = registry.get_sample_value

    apply(metrics, [session("ws-a"), session("ws-b")])
    apply(metrics, [session("ws-c"), session("ws-c"), session("ws-c")])

    assert value("llm_sessions_total", labels("ws-c")) is None
    assert value("llm_sessions_total", OVERFLOW) == 3.0
    assert value("llm_session_cost_total", OVERFLOW) == 0.75
    assert value("session_consumer_series_overflow_total") == 3.0

    # Existing series keep counting; the overflow series itself does not use up the limit.
    apply(metrics, [session("ws-a"), session("ws-b"), session("ws-d"), session("ws-c")])

    assert value("llm_sessions_total", labels("ws-a")) == 2.0
    assert value("llm_sessions_total", labels("ws-b")) == 2.0
    assert value("llm_sessions_total", labels("ws-d")) is None
    assert value("llm_sessions_total", OVERFLOW) == 5.0
    assert value("session_consumer_series_overflow_total") == 5.0
    assert len(metrics.business) == 3


def test_overflow_within_a_single_batch(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry, max_series=2)

    apply(metrics, [session("ws-a"), session("ws-b"), session("ws-c"), session("ws-d")])

    value = registry.get_sample_value
    assert value("llm_sessions_total", labels("ws-a")) == 1.0
    assert value("llm_sessions_total", labels("ws-b")) == 1.0
    assert value("llm_sessions_total", OVERFLOW) == 2.0
    assert value("session_consumer_series_overflow_total") == 2.0


def test_no_overflow_below_the_limit(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry, max_series=2)

    apply(metrics, [session("ws-a"), session("ws-a", "q")])

    assert registry.get_sample_value("llm_sessions_total", OVERFLOW) is None
    assert registry.get_sample_value("session_consumer_series_overflow_total") == 0.0


def test_series_gauge_counts_exported_series(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry, max_series=2)
    apply(metrics, [session("ws-a"), session("ws-b"), session("ws-c")])

    metrics.mark_processed()
    metrics.mark_published()

    assert registry.get_sample_value("session_consumer_series") == 3.0
    last = registry.get_sample_value("session_consumer_last_processed_timestamp_seconds")
    assert last is not None
    assert last > 0


def test_no_created_samples_are_exported(registry: CollectorRegistry) -> None:
    metrics = make_metrics(registry)
    apply(metrics, [session("ws-1")])
    metrics.messages.labels("counted").inc()
    metrics.invalid.labels("too_large").inc()
    metrics.batch_seconds.observe(0.01)

    names = {s.name for family in registry.collect() for s in family.samples}

    assert "llm_sessions_total" in names
    assert "session_consumer_messages_total" in names
    assert [n for n in names if n.endswith("_created")] == []


def test_message_outcomes_exist_before_any_message(registry: CollectorRegistry) -> None:
    make_metrics(registry)

    for outcome in ("counted", "duplicate", "invalid", "tombstone"):
        sample = registry.get_sample_value("session_consumer_messages_total", {"outcome": outcome})
        assert sample == 0.0


def test_lag_collector_reports_only_what_its_callable_returns(
    registry: CollectorRegistry,
) -> None:
    metrics = make_metrics(registry)
    lags = [
        PartitionLag("sessions", 0, records=5, seconds=1.5),
        PartitionLag("sessions", 1, records=0, seconds=None),
    ]
    metrics.register_lag(lambda: list(lags))
    value = registry.get_sample_value
    p0 = {"topic": "sessions", "partition": "0"}
    p1 = {"topic": "sessions", "partition": "1"}

    assert value("session_consumer_lag_records", p0) == 5.0
    assert value("session_consumer_lag_seconds", p0) == 1.5
    assert value("session_consumer_lag_records", p1) == 0.0
    assert value("session_consumer_lag_seconds", p1) is None

    lags[:] = [PartitionLag("sessions", 1, records=7, seconds=0.0)]

    assert value("session_consumer_lag_records", p0) is None
    assert value("session_consumer_lag_seconds", p0) is None
    assert value("session_consumer_lag_records", p1) == 7.0
    assert value("session_consumer_lag_seconds", p1) == 0.0


@pytest.mark.parametrize("page", ["README.md", "docs/metrics.md"])
def test_every_exported_family_is_documented(page: str) -> None:
    metrics = ConsumerMetrics(BUCKETS, max_series=10)
    metrics.register_lag(list)
    metrics.register_scrape_state(lambda: ScrapeState(0, 0.0))
    metrics.register_unreadable(list)
    metrics.register_process()
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in metrics.registry.collect()}
    text = (Path(__file__).parent.parent / page).read_text(encoding="utf-8")
    assert sorted(name for name in exported if f"`{name}`" not in text) == []
