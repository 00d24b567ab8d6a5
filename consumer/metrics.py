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
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumer import __version__
from consumer.aggregate import Buckets, SeriesKey, Totals
from consumer.decode import Reason
from consumer.envelope import Kind
from consumer.fetch import Held

OUTCOMES = ("counted", "duplicate", "invalid", "tombstone", "skipped")
"""Every record read gets exactly one (skipped: a CloudEvent type not asked for)."""

# `_created` samples double the series count and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

OVERFLOW: SeriesKey = ("__overflow__", "__overflow__")
LABELS = ("workspace_id", "project_id")
HISTOGRAM_LABELS = {"workspace_id,project_id": LABELS, "workspace_id": LABELS[:1], "none": ()}
"""`--histogram-labels`: the labels the three histograms keep, a prefix of LABELS. A pair
costs 8 counter series and 42 histogram series (buckets, _sum, _count); a team that reads
distributions per workspace spares the 42 per project."""

COUNTERS = (
    # (family name, help, Totals attribute); exported with a _total suffix.
    ("llm_sessions", "Sessions created.", "sessions"),
    ("llm_session_input_cost", "Sum of billing.inputCost.", "input_cost"),
    ("llm_session_output_cost", "Sum of billing.outputCost.", "output_cost"),
    ("llm_session_cost", "Sum of billing.totalCost.", "cost"),
    ("llm_session_prompt_tokens", "Sum of usage.promptTokens.", "prompt_tokens"),
    ("llm_session_completion_tokens", "Sum of usage.completionTokens.", "completion_tokens"),
    ("llm_session_tokens", "Sum of usage.totalTokens.", "tokens"),
    ("llm_session_traces", "Sum of tracesCount.", "traces"),
)
HISTOGRAMS = (
    # (family name, help, Totals bucket-count attribute, Totals sum attribute)
    ("llm_session_duration_seconds", "Session duration.", "duration_buckets", "duration_seconds"),
    (
        "llm_session_tokens_per_session",
        "usage.totalTokens per session.",
        "tokens_buckets",
        "tokens",
    ),
    ("llm_session_cost_per_session", "billing.totalCost per session.", "cost_buckets", "cost"),
)


class BusinessMetrics(Collector):
    """Published all-time totals per (workspace, project): what scrapes show.

    Series never expire; at most `max_series` of them. A key gets its series when
    it is first admitted (counting, before any scrape publishes it), so counts that
    are pending somewhere cannot push the published set past the limit.
    """

    def __init__(
        self,
        buckets: Buckets,
        max_series: int,
        overflowed: Counter,
        histogram_labels: tuple[str, ...] = LABELS,
    ) -> None:
        self.buckets = buckets
        self.max_series = max_series
        self._overflowed = overflowed
        self.series: dict[SeriesKey, Totals] = {}
        """Totals per series; read by the exposition, written only by apply()."""
        self.changed: set[SeriesKey] = set()
        """Series changed since the exposition last rendered them."""
        self.histogram_labels = histogram_labels
        self.coarse = len(histogram_labels) < len(LABELS)
        """Histograms over fewer labels than the counters: summed apart, per group."""
        self.groups: dict[tuple[str, ...], Totals] = {}
        """With coarse histograms: totals per value of `histogram_labels`, summed in the
        same batches as the series (so in a fixed order, not at each scrape)."""
        self.changed_groups: set[tuple[str, ...]] = set()
        self._admitted: set[SeriesKey] = set()
        """Keys given a series slot, published or not yet."""

    def __len__(self) -> int:
        return len(self.series)

    def grand_total(self) -> tuple[float, float]:
        """(sessions, cost) over every published series: for the demo's summary line."""
        series = self.series.values()
        return float(sum(t.sessions for t in series)), sum(t.cost for t in series)

    def admit(self, key: SeriesKey, sessions: int) -> SeriesKey:
        """The series `key`'s `sessions` are counted under: itself, or the overflow once full."""
        admitted = self._admitted
        if key in admitted:
            return key
        if len(admitted) - (OVERFLOW in admitted) < self.max_series:
            admitted.add(key)
            return key
        self._overflowed.inc(sessions)
        admitted.add(OVERFLOW)
        return OVERFLOW

    def apply(self, batch: dict[SeriesKey, Totals]) -> None:
        """Publish `batch` (keys already admitted): the next scrape shows it."""
        series, changed, buckets = self.series, self.changed, self.buckets
        for key, totals in batch.items():
            target = series.get(key)
            if target is None:
                target = series[key] = Totals(buckets)
            target.merge(totals)
            changed.add(key)
        if self.coarse:
            self._apply_groups(batch)

    def _apply_groups(self, batch: dict[SeriesKey, Totals]) -> None:
        groups, changed, width = self.groups, self.changed_groups, len(self.histogram_labels)
        for key, totals in batch.items():
            group = key[:width]
            target = groups.get(group)
            if target is None:
                target = groups[group] = Totals(self.buckets)
            target.merge(totals)
            changed.add(group)

    def histogram_totals(self) -> Iterable[tuple[tuple[str, ...], Totals]]:
        """What the histograms are exported from: label values and totals."""
        return self.groups.items() if self.coarse else self.series.items()

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not run a full collect().
        counters, histograms = self._families()
        return [*counters, *histograms]

    def collect(self) -> Iterable[Metric]:
        """The prometheus-client view, for registry readers (tests, tools); /metrics
        renders the same lines faster in consumer/exposition.py."""
        counters, histograms = self._families()
        b = self.buckets
        bounds = (le_labels(b.duration_seconds), le_labels(b.tokens), le_labels(b.cost))
        for (workspace, project), t in self.series.items():
            for counter, (_, _, attribute) in zip(counters, COUNTERS, strict=True):
                counter.add_metric([workspace, project], getattr(t, attribute))
        for group, t in self.histogram_totals():
            for histogram, (_, _, buckets, total), les in zip(
                histograms, HISTOGRAMS, bounds, strict=True
            ):
                cumulative = list(zip(les, _cumulative(getattr(t, buckets)), strict=True))
                histogram.add_metric(list(group), cumulative, getattr(t, total))
        return [*counters, *histograms]

    def _families(self) -> tuple[list[CounterMetricFamily], list[HistogramMetricFamily]]:
        counters = [CounterMetricFamily(n, h, labels=LABELS) for n, h, _ in COUNTERS]
        histograms = [
            HistogramMetricFamily(n, h, labels=self.histogram_labels) for n, h, _, _ in HISTOGRAMS
        ]
        return counters, histograms


def le_labels(bounds: tuple[float, ...]) -> list[str]:
    """The `le` label values of a histogram's buckets: part of each series' identity, so
    spelled as prometheus-client spells them (`1e+06`, not `1000000.0`)."""
    return [*(str(floatToGoString(b)) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call]


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


@dataclass(frozen=True)
class ScrapeState:
    pending_records: int
    seconds_since_served: float


class ScrapeStateCollector(Collector):
    """What no served scrape covers yet, read as the scrape renders (before it is served)."""

    def __init__(self, read: Callable[[], ScrapeState]) -> None:
        self._read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(ScrapeState(0, 0.0))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(self._read())

    @staticmethod
    def _families(state: ScrapeState) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "session_consumer_pending_records",
                "Records processed that no served scrape has covered yet; their offsets are "
                "held back, and the next owner counts them again if this worker stops now.",
                value=state.pending_records,
            ),
            GaugeMetricFamily(
                "session_consumer_seconds_since_served_scrape",
                "Seconds since the last served scrape of /metrics (before this one).",
                value=state.seconds_since_served,
            ),
        ]


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


class UnreadableCollector(Collector):
    """Partitions held on a record batch that cannot be read (consumer/fetch.py), read at
    scrape time: 1 per held partition, none once it is assigned anew."""

    def __init__(self, read: Callable[[], Iterable[Held]]) -> None:
        self._read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for held in self._read():
            family.add_metric([held.topic, str(held.partition), held.reason], 1)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "session_consumer_partition_unreadable",
            "1 for a partition held at a record batch that cannot be read, by reason "
            "(corrupt, unsupported_codec, decompression).",
            labels=["topic", "partition", "reason"],
        )


class ConsumerMetrics:
    """All metrics of one worker, on registries of its own (tests run several workers).

    `operational` holds the session_consumer_* metrics; /metrics serves it next to
    `business`, which consumer/exposition.py renders. `registry` holds both, for
    anything that reads a registry (tests, promtool checks).
    """

    def __init__(
        self,
        buckets: Buckets,
        max_series: int,
        registry: CollectorRegistry | None = None,
        histogram_labels: tuple[str, ...] = LABELS,
    ) -> None:
        self.operational = r = CollectorRegistry()
        p = "session_consumer_"
        self.messages = Counter(
            p + "messages", "Messages read, by outcome.", ["outcome"], registry=r
        )
        self.invalid = Counter(
            p + "invalid", "Invalid messages, by reason.", ["reason"], registry=r
        )
        self.value_format = Counter(
            p + "value_format",
            "Records read, by the envelope their value came in (tombstones and "
            "unreadable envelopes excepted).",
            ["format"],
            registry=r,
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
        self.batches_dropped = Counter(
            p + "batches_dropped",
            "Batches fetched before a rebalance and not counted: read again from the "
            "committed offsets.",
            registry=r,
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
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
        )
        self.restore_seconds = Histogram(
            p + "dedup_restore_seconds",
            "Time to read a log window back before counting resumes on newly assigned "
            "partitions (one observation per read-back, all its partitions together).",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.restored_records = Counter(
            p + "dedup_restored_records",
            "Records read back to rebuild log windows (counted nothing).",
            registry=r,
        )
        self.dedup_ids = Gauge(
            p + "dedup_window_ids", "Session ids held in the log windows.", registry=r
        )
        self.store_up = Gauge(
            p + "dedup_store_up",
            "1 while the claim store answers (or none is set), 0 while every partition is "
            "held waiting for it.",
            registry=r,
        )
        self.store_up.set(1)
        self.store_errors = Counter(
            p + "dedup_store_errors",
            "Claim round trips that failed: the batch was not counted, and read again.",
            registry=r,
        )
        self.store_seconds = Histogram(
            p + "dedup_store_seconds",
            "Time of one claim round trip to the claim store (one per partition of a batch).",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.scrapers = Gauge(
            p + "scrapers",
            "Active scrapers: clients with regular full scrapes, waited for at a stop.",
            registry=r,
        )
        Info(p + "build", "Version of this service.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.business = BusinessMetrics(buckets, max_series, self.series_overflow, histogram_labels)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Registered(r))
        self.registry.register(self.business)
        # Every label value exists from the start, so rate() sees the first increase.
        for outcome in OUTCOMES:
            self.messages.labels(outcome)
        for reason in Reason:
            self.invalid.labels(reason.value)
        for kind in Kind:
            self.value_format.labels(kind.value)

    def register_lag(self, read: Callable[[], Iterable[PartitionLag]]) -> None:
        self.operational.register(LagCollector(read))

    def register_scrape_state(self, read: Callable[[], ScrapeState]) -> None:
        self.operational.register(ScrapeStateCollector(read))

    def register_unreadable(self, read: Callable[[], Iterable[Held]]) -> None:
        self.operational.register(UnreadableCollector(read))

    def register_process(self) -> None:
        """process_* (memory, CPU, fds, start time): what Prometheus users expect of every
        target. Registered by service.serve, not here in __init__: unit tests compare two
        renderings of one registry, and these values move between them. python_info and
        python_gc_* are left out: build_info names the Python, and the cyclic collector
        runs rarely by design (service.tune_gc)."""
        ProcessCollector(registry=self.operational)

    def mark_processed(self) -> None:
        self.last_processed.set(time.time())

    def mark_published(self) -> None:
        self.series.set(len(self.business))


class _Registered(Collector):
    """Another registry's metrics as one collector, so two registries can share them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()

    def describe(self) -> Iterable[Metric]:
        return self._registry.collect()
