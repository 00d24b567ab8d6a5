"""Every metric this service exports, in one place; the names are part of the product.

Business metrics (`llm_session_*`) come from a custom collector over the
per-series totals, so the hot path never touches a prometheus-client object:
a batch is folded first (aggregate.py) and merged here once per series.
Operational metrics (`session_consumer_*`) are ordinary prometheus-client
objects, plus a collector that reads partition lag fresh at each scrape.
"""

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from consumer import __version__
from consumer.aggregate import Buckets, SeriesKey, Totals
from consumer.decode import Reason

# `_created` samples double the series count and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

OVERFLOW: SeriesKey = ("__overflow__", "__overflow__")
LABELS = ("workspace_id", "project_id")


class BusinessMetrics(Collector):
    """All-time totals per (workspace, project); series never expire, at most `max_series`."""

    def __init__(self, buckets: Buckets, max_series: int, overflowed: Counter) -> None:
        self.buckets = buckets
        self.max_series = max_series
        self._overflowed = overflowed
        self._series: dict[SeriesKey, Totals] = {}

    def __len__(self) -> int:
        return len(self._series)

    def grand_total(self) -> tuple[float, float]:
        """(sessions, cost) over every series: for the demo's summary line."""
        series = self._series.values()
        return float(sum(t.sessions for t in series)), sum(t.cost for t in series)

    def apply(self, batch: dict[SeriesKey, Totals]) -> None:
        series = self._series
        for key, totals in batch.items():
            current = series.get(key)
            if current is None:
                current = self._new_series(key, totals.sessions)
            current.merge(totals)

    def _new_series(self, key: SeriesKey, sessions: int) -> Totals:
        series = self._series
        if len(series) >= self.max_series + (OVERFLOW in series):
            self._overflowed.inc(sessions)
            key = OVERFLOW
            if key in series:
                return series[key]
        totals = series[key] = Totals(self.buckets)
        return totals

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not run a full collect().
        counters, histograms = self._families()
        return [*counters, *histograms]

    def collect(self) -> Iterable[Metric]:
        counters, histograms = self._families()
        b = self.buckets
        bounds = (_le(b.duration_seconds), _le(b.tokens), _le(b.cost))
        for (workspace, project), t in self._series.items():
            labels = [workspace, project]
            for counter, value in zip(counters, _counter_values(t), strict=True):
                counter.add_metric(labels, value)
            for histogram, les, counts, total in zip(
                histograms,
                bounds,
                (t.duration_buckets, t.tokens_buckets, t.cost_buckets),
                (t.duration_seconds, t.tokens, t.cost),
                strict=True,
            ):
                cumulative = list(zip(les, _cumulative(counts), strict=True))
                histogram.add_metric(labels, cumulative, total)
        return [*counters, *histograms]

    @staticmethod
    def _families() -> tuple[list[CounterMetricFamily], list[HistogramMetricFamily]]:
        c, h = CounterMetricFamily, HistogramMetricFamily
        counters = [
            c("llm_sessions", "Sessions created.", labels=LABELS),
            c("llm_session_input_cost", "Sum of billing.inputCost.", labels=LABELS),
            c("llm_session_output_cost", "Sum of billing.outputCost.", labels=LABELS),
            c("llm_session_cost", "Sum of billing.totalCost.", labels=LABELS),
            c("llm_session_prompt_tokens", "Sum of usage.promptTokens.", labels=LABELS),
            c("llm_session_completion_tokens", "Sum of usage.completionTokens.", labels=LABELS),
            c("llm_session_tokens", "Sum of usage.totalTokens.", labels=LABELS),
            c("llm_session_traces", "Sum of tracesCount.", labels=LABELS),
        ]
        histograms = [
            h("llm_session_duration_seconds", "Session duration.", labels=LABELS),
            h("llm_session_tokens_per_session", "usage.totalTokens per session.", labels=LABELS),
            h("llm_session_cost_per_session", "billing.totalCost per session.", labels=LABELS),
        ]
        return counters, histograms


def _counter_values(t: Totals) -> tuple[float, ...]:
    return (
        t.sessions,
        t.input_cost,
        t.output_cost,
        t.cost,
        t.prompt_tokens,
        t.completion_tokens,
        t.tokens,
        t.traces,
    )


def _le(bounds: tuple[float, ...]) -> list[str]:
    return [*(repr(float(b)) for b in bounds), "+Inf"]


def _cumulative(counts: list[int]) -> list[float]:
    out, running = [], 0
    for n in counts:
        running += n
        out.append(float(running))
    return out


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    records: int
    seconds: float | None
    """None until a record of the partition has been processed."""


class LagCollector(Collector):
    """Lag of each currently assigned partition, read at scrape time.

    Because only assigned partitions are reported, a revoked partition's
    series disappears with the revocation and two workers never both report it.
    """

    def __init__(self, read: Callable[[], Iterable[PartitionLag]]) -> None:
        self._read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        records, seconds = self._families()
        for lag in self._read():
            labels = [lag.topic, str(lag.partition)]
            records.add_metric(labels, lag.records)
            if lag.seconds is not None:
                seconds.add_metric(labels, lag.seconds)
        yield records
        yield seconds

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["topic", "partition"]
        return (
            GaugeMetricFamily(
                "session_consumer_lag_records",
                "Records between the last processed offset and the highwater.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "session_consumer_lag_seconds",
                "Now minus the timestamp of the last processed record; 0 when caught up.",
                labels=labels,
            ),
        )


class ConsumerMetrics:
    """Operational metrics of one worker, on its own registry (tests run several workers)."""

    def __init__(
        self, buckets: Buckets, max_series: int, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        p = "session_consumer_"
        self.messages = Counter(
            p + "messages", "Messages read, by outcome.", ["outcome"], registry=r
        )
        self.invalid = Counter(
            p + "invalid", "Invalid messages, by reason.", ["reason"], registry=r
        )
        self.dead_lettered = Counter(
            p + "dead_lettered", "Messages produced to the dead-letter topic.", registry=r
        )
        self.dead_letter_failures = Counter(
            p + "dead_letter_failures", "Dead-letter produce attempts that failed.", registry=r
        )
        self.series_overflow = Counter(
            p + "series_overflow",
            "Sessions counted under __overflow__ labels because --max-series was reached.",
            registry=r,
        )
        self.commits = Counter(p + "commits", "Offset commits that succeeded.", registry=r)
        self.commit_failures = Counter(
            p + "commit_failures", "Offset commits that failed.", registry=r
        )
        self.rebalances = Counter(p + "rebalances", "Partition assignments received.", registry=r)
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions assigned now.", registry=r
        )
        self.series = Gauge(
            p + "series", "Distinct (workspace, project) series exported.", registry=r
        )
        self.newest_event = Gauge(
            p + "newest_event_timestamp_seconds",
            "Newest updatedAt (else startedAt) of a counted event.",
            registry=r,
        )
        self.last_processed = Gauge(
            p + "last_processed_timestamp_seconds", "When the last batch was applied.", registry=r
        )
        self.batch_seconds = Histogram(
            p + "batch_duration_seconds",
            "Time to process one batch: decode, dead-letter, dedup, aggregate, apply.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_records = Histogram(
            p + "batch_records",
            "Records per batch.",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
        )
        Info(p + "build", "Version of this service.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.business = BusinessMetrics(buckets, max_series, self.series_overflow)
        r.register(self.business)
        # Every label value exists from the start, so rate() sees the first increase.
        for outcome in ("counted", "duplicate", "invalid", "tombstone"):
            self.messages.labels(outcome)
        for reason in Reason:
            self.invalid.labels(reason.value)

    def register_lag(self, read: Callable[[], Iterable[PartitionLag]]) -> None:
        self.registry.register(LagCollector(read))

    def mark_processed(self) -> None:
        self.last_processed.set(time.time())
        self.series.set(len(self.business))
