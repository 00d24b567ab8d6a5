"""`reconcile`'s core: a range of the log to the exact total of every exported sample, and
the comparison with what Prometheus holds. Pure: no Kafka, no HTTP.

The fold runs the pipeline `run` runs, step for step (consumer/pipeline.py): decode_batch,
then the partitions' log windows (in_log: repeats in the partition's window, or in
another partition's, as on one worker without a claim store), then count, so
`reconcile` decides every record as one worker reading the whole range without a fault
would. A second implementation would be a second set of rules to keep in step.
"""

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from consumer.aggregate import Buckets, SeriesKey, Totals
from consumer.decode import DEFAULT_ENVELOPE
from consumer.envelope import Envelope
from consumer.logwindow import LogWindows
from consumer.metrics import COUNTERS, HISTOGRAMS, le_labels
from consumer.pipeline import DecodedBatch, Partition, Record, count, decode_batch, in_log

Sample = tuple[str, str, str, str]
"""(sample name, workspace_id, project_id, le or ""): one exported series."""

REL_TOLERANCE = 1e-9
ABS_TOLERANCE = 1e-9
"""Two totals agree when math.isclose says so with these: float sums added in another order
(per lifetime, per batch) differ in the last bits, a lost session never that little."""


def sample_names() -> tuple[str, ...]:
    """Every business sample name, in the exposition's order."""
    return (
        *(f"{name}_total" for name, _, _ in COUNTERS),
        *(f"{name}_{part}" for name, _, _, _ in HISTOGRAMS for part in ("bucket", "count", "sum")),
    )


def _keep(key: SeriesKey, _sessions: int) -> SeriesKey:
    # No --max-series here: which keys overflow depends on each worker's arrival order, so
    # reconcile names every series; a deployment that overflowed differs in `__overflow__`.
    return key


@dataclass(slots=True)
class Fold:
    """Records in, per-series totals out; `warm` first for the records before a range that
    starts mid-partition, so the log windows decide as they did for `run`."""

    buckets: Buckets
    window: int
    max_bytes: int
    strict_keys: bool = False
    envelope: Envelope = DEFAULT_ENVELOPE
    histogram_labels: int = 2
    """How many of (workspace_id, project_id) the histograms keep (`--histogram-labels`)."""
    once_per_range: bool = False
    """With `--dedup-store`: every session id counts once over the whole range, on any
    partition (what the claim store does for repeats within its TTL)."""
    totals: dict[SeriesKey, Totals] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    _windows: LogWindows = field(init=False)
    _seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._windows = LogWindows(self.window)

    def warm(self, batch: Mapping[Partition, Sequence[Record]]) -> None:
        """Records before the range: into the log windows, counting nothing."""
        in_log(self._decode(batch), self._windows)

    def add(self, batch: Mapping[Partition, Sequence[Record]]) -> None:
        decoded = self._decode(batch)
        candidates = in_log(decoded, self._windows)
        # Without a store, run's windows catch repeats on other partitions that meet on
        # one worker: here, one worker reads everything.
        repeats = {
            tp: self._repeats_anywhere(c.ids, c.repeats)
            if self.once_per_range
            else c.without_store()
            for tp, c in candidates.items()
        }
        result = count(decoded, self.buckets, _keep, repeats)
        for counted in result.partitions.values():
            for key, t in counted.totals.items():
                have = self.totals.get(key)
                if have is None:
                    self.totals[key] = t
                else:
                    have.merge(t)
        for outcome in ("counted", "duplicates", "tombstones", "skipped"):
            self.outcomes[outcome] += result.total(outcome)
        self.outcomes["invalid"] += len(decoded.rejected)
        self.outcomes["records"] += sum(map(len, batch.values()))

    def _repeats_anywhere(self, ids: list[str], window_repeats: list[int]) -> list[int]:
        seen, out, skip = self._seen, [], set(window_repeats)
        for position, session_id in enumerate(ids):
            if position in skip or session_id in seen:
                out.append(position)
            else:
                seen.add(session_id)
        return out

    def _decode(self, batch: Mapping[Partition, Sequence[Record]]) -> DecodedBatch:
        return decode_batch(
            batch, self.max_bytes, strict_keys=self.strict_keys, envelope=self.envelope
        )

    def samples(self) -> dict[Sample, float]:
        return samples_of(self.totals, self.buckets, self.histogram_labels)


def samples_of(
    totals: Mapping[SeriesKey, Totals], buckets: Buckets, histogram_labels: int = 2
) -> dict[Sample, float]:
    """Every sample the exposition renders for `totals`, keyed as Prometheus labels it.
    `histogram_labels` (`--histogram-labels`: 2 both, 1 workspace_id, 0 none) says how many
    of the labels the histograms keep; a label they drop reads "" in a query's result."""
    bounds = (buckets.duration_seconds, buckets.tokens, buckets.cost)
    les = [le_labels(b) for b in bounds]
    out: dict[Sample, float] = {}
    for (workspace, project), t in totals.items():
        for name, _, attribute in COUNTERS:
            out[(f"{name}_total", workspace, project, "")] = float(getattr(t, attribute))
        w = workspace if histogram_labels > 0 else ""
        p = project if histogram_labels > 1 else ""
        for (name, _, counts, total), labels in zip(HISTOGRAMS, les, strict=True):
            cumulative = list(accumulate(getattr(t, counts)))
            for le, n in zip(labels, cumulative, strict=True):
                _add(out, (f"{name}_bucket", w, p, le), float(n))
            _add(out, (f"{name}_count", w, p, ""), float(cumulative[-1]))
            _add(out, (f"{name}_sum", w, p, ""), float(getattr(t, total)))
    return out


def _add(out: dict[Sample, float], key: Sample, value: float) -> None:
    out[key] = out.get(key, 0.0) + value


@dataclass(frozen=True, slots=True)
class Row:
    sample: Sample
    log: float
    prometheus: float | None
    """None when no Prometheus was asked (offline)."""

    @property
    def equal(self) -> bool:
        return self.prometheus is None or agree(self.log, self.prometheus)

    @property
    def difference(self) -> float:
        """Prometheus minus the log: negative means Prometheus misses counts."""
        return 0.0 if self.prometheus is None else self.prometheus - self.log


def agree(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)


def compare(log: Mapping[Sample, float], prometheus: Mapping[Sample, float] | None) -> list[Row]:
    """One row per sample on either side (a side without it holds 0), sorted."""
    if prometheus is None:
        return [Row(key, log[key], None) for key in sorted(log)]
    keys = sorted(log.keys() | prometheus.keys())
    return [Row(key, log.get(key, 0.0), prometheus.get(key, 0.0)) for key in keys]


@dataclass(frozen=True, slots=True)
class Summary:
    compared: int
    equal: int
    differing: int
    log_cost: float
    prometheus_cost: float | None
    series: int
    """Distinct (workspace, project) pairs on either side."""
    log_sessions: float


def summarize(rows: Sequence[Row], offline: bool) -> Summary:
    differing = sum(not r.equal for r in rows)
    cost = [r for r in rows if r.sample[0] == "llm_session_cost_total"]
    return Summary(
        compared=len(rows),
        equal=len(rows) - differing,
        differing=differing,
        log_cost=math.fsum(r.log for r in cost),
        prometheus_cost=None if offline else math.fsum(r.prometheus or 0.0 for r in cost),
        series=len({r.sample[1:3] for r in rows}),
        log_sessions=math.fsum(r.log for r in rows if r.sample[0] == "llm_sessions_total"),
    )
