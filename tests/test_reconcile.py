"""`reconcile`'s fold, comparison and output, without a broker: totals equal sums
computed one event at a time by tests/corpus.py, for a log with repeats, envelopes,
invalid records and tombstones."""

import json
import struct
from dataclasses import dataclass, field

import pytest

from consumer.aggregate import Buckets
from consumer.promquery import _earlier_lifetimes, lookback, retention_of
from consumer.reconcile import Fold, Sample, compare, sample_names, summarize
from consumer.reconcile_output import as_json, differences_table, summary_line, totals_table
from consumer.settings import (
    DEFAULT_COST_BUCKETS,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_TOKENS_BUCKETS,
    _buckets,
)
from consumer.synthetic import SessionFactory, encode
from schemas import CreateSessionResponseBody
from tests.corpus import counted_once, expected_samples

BUCKETS = Buckets(
    _buckets(DEFAULT_DURATION_BUCKETS),
    _buckets(DEFAULT_TOKENS_BUCKETS),
    _buckets(DEFAULT_COST_BUCKETS),
)
WINDOW = 50


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def confluent(value: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", 7) + value


def cloudevent(value: bytes) -> bytes:
    return (
        b'{"specversion":"1.0","type":"session.created","source":"t","id":"1","data":'
        + value
        + b"}"
    )


@dataclass
class Log:
    """One partition's records, and the event each offset carries (None: not an event)."""

    records: list[Rec] = field(default_factory=list)
    events: list[CreateSessionResponseBody | None] = field(default_factory=list)

    def add(
        self,
        tp: int,
        value: bytes | None,
        event: CreateSessionResponseBody | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.records.append(Rec("t", tp, len(self.records), value, headers=headers or []))
        self.events.append(event)


def build_logs(partitions: int = 3, events: int = 900, seed: int = 5) -> list[Log]:
    """Events spread over partitions, each partition with repeats at distances inside and
    beyond the window, values in three envelopes, invalid values and tombstones."""
    logs = [Log() for _ in range(partitions)]
    structured = [("content-type", b"application/cloudevents+json")]
    for i, e in enumerate(SessionFactory(seed).events(events)):
        log, p = logs[i % partitions], i % partitions
        if i % 3 == 1:
            log.add(p, confluent(encode(e)), e)
        elif i % 3 == 2:
            log.add(p, cloudevent(encode(e)), e, structured)
        else:
            log.add(p, encode(e), e)
        if i % 7 == 0:
            log.add(p, b"not json", None)
        if i % 11 == 0:
            log.add(p, None, None)
        if i % 13 == 0:  # a repeat a few records later (inside the window)
            log.add(p, encode(e), e)
        if i % 4 == 0 and len(log.events) > WINDOW:  # half a window back: ranges split them
            half = log.events[-WINDOW // 2]
            if half is not None:
                log.add(p, encode(half), half)
        if i % 17 == 0 and len(log.events) > 2 * WINDOW:  # far behind: beyond the window
            old = next(x for x in log.events[-2 * WINDOW :] if x is not None)
            log.add(p, encode(old), old)
    return logs


def fold_of(logs: list[Log], batch: int = 64, **kw: object) -> Fold:
    fold = Fold(BUCKETS, WINDOW, 1 << 20, **kw)  # type: ignore[arg-type]
    longest = max(len(log.records) for log in logs)
    for at in range(0, longest, batch):
        fold.add(
            {
                ("t", p): log.records[at : at + batch]
                for p, log in enumerate(logs)
                if log.records[at : at + batch]
            }
        )
    return fold


def normalized(samples: dict[Sample, float]) -> dict[Sample, float]:
    return {
        (n, w, p, le if le in ("", "+Inf") else repr(float(le))): v
        for (n, w, p, le), v in samples.items()
    }


def differing(got: dict[Sample, float], want: dict[Sample, float]) -> list[Sample]:
    """Samples whose values differ; a sample absent on one side is 0 there (the reference
    leaves out buckets nothing fell into)."""
    return [
        k
        for k in sorted(got.keys() | want.keys())
        if abs(got.get(k, 0.0) - want.get(k, 0.0)) > 1e-9 * max(1.0, abs(want.get(k, 0.0)))
    ]


def test_totals_equal_the_sums_of_the_events_that_count() -> None:
    logs = build_logs()
    want = expected_samples([e for log in logs for e in window_counted(log)])
    got = normalized(fold_of(logs).samples())
    assert differing(got, want) == []
    assert {k[0] for k in got} == set(sample_names())


def window_counted(log: Log, start: int = 0) -> list[CreateSessionResponseBody]:
    """The log-window rule, one offset at a time: an event counts unless its id sits at an
    offset in [o - WINDOW, o); only offsets from `start` count."""
    last: dict[str, int] = {}
    out = []
    for offset, e in enumerate(log.events):
        if e is None:
            continue
        before = last.get(e.id)
        if offset >= start and (before is None or before < offset - WINDOW):
            out.append(e)
        last[e.id] = offset
    return out


def test_the_outcomes_add_up_to_every_record() -> None:
    logs = build_logs()
    fold = fold_of(logs)
    o = fold.outcomes
    assert o["records"] == sum(len(log.records) for log in logs)
    assert (
        o["counted"] + o["duplicates"] + o["invalid"] + o["tombstones"] + o["skipped"]
        == o["records"]
    )
    assert o["tombstones"] == sum(r.value is None for log in logs for r in log.records)
    assert o["invalid"] == sum(r.value == b"not json" for log in logs for r in log.records)
    assert o["duplicates"] > 0


@pytest.mark.parametrize("start", [WINDOW + 7, 3 * WINDOW, 200])
def test_a_range_that_starts_mid_partition_decides_repeats_as_the_whole_log_does(
    start: int,
) -> None:
    logs = build_logs(partitions=1)
    (log,) = logs
    fold = Fold(BUCKETS, WINDOW, 1 << 20)
    warm_from = max(0, start - WINDOW)
    fold.warm({("t", 0): log.records[warm_from:start]})
    for at in range(start, len(log.records), 64):
        fold.add({("t", 0): log.records[at : at + 64]})
    want = expected_samples(window_counted(log, start))
    assert differing(normalized(fold.samples()), want) == []

    cold = Fold(BUCKETS, WINDOW, 1 << 20)  # without the warm-up a repeat just after counts
    cold.add({("t", 0): log.records[start:]})
    assert cold.outcomes["counted"] > fold.outcomes["counted"]


def test_with_a_claim_store_each_session_counts_once_over_the_range_on_any_partition() -> None:
    events = list(SessionFactory(9).events(300))
    others = list(SessionFactory(10).events(200))
    # Each session on partition 0, and again under another key on partition 1, after 200
    # other sessions there: read side by side, partition 1's copies come ever later.
    logs = [Log(), Log()]
    for e in events:
        logs[0].add(0, encode(e), e)
    for e in others + events[::3]:
        logs[1].add(1, encode(e), e)
    once = normalized(fold_of(logs, once_per_range=True).samples())
    assert differing(once, expected_samples(counted_once(events + others))) == []
    # Without the store a copy is caught only while the first is in partition 0's window.
    sessions = fold_of(logs).outcomes["counted"] - len(events) - len(others)
    assert 0 < sessions < len(events[::3])


def test_comparison_names_each_differing_sample_and_the_summary_adds_up() -> None:
    key = ("llm_sessions_total", "ws", "", "")
    cost = ("llm_session_cost_total", "ws", "", "")
    bucket = ("llm_session_cost_per_session_bucket", "ws", "", "+Inf")
    log = {key: 10.0, cost: 1.25, bucket: 10.0}
    held = {key: 8.0, cost: 1.25 + 1e-13, bucket: 10.0}
    rows = compare(log, held)
    summary = summarize(rows, offline=False)
    assert [r.sample for r in rows if not r.equal] == [key]
    assert (summary.compared, summary.equal, summary.differing) == (3, 2, 1)
    table = differences_table(rows)
    assert 'llm_sessions_total{workspace_id="ws", project_id=""}' in table
    assert table.splitlines()[1].split()[-3:] == ["10", "8", "-2"]
    assert summary_line(summary).startswith("3 samples of 1 series compared: 2 equal, 1 differing")
    items = json.loads(as_json(rows))
    assert items[0] == {
        "metric": "llm_session_cost_per_session_bucket",
        "workspace_id": "ws",
        "project_id": "",
        "le": "+Inf",
        "log": 10.0,
        "prometheus": 10.0,
        "difference": 0.0,
        "equal": True,
    }
    assert "le" not in items[1]


def test_offline_output_has_the_logs_totals_and_no_prometheus_field() -> None:
    fold = fold_of(build_logs())
    rows = compare(fold.samples(), None)
    items = json.loads(as_json(rows))
    assert all("prometheus" not in i for i in items)
    sessions = sum(i["log"] for i in items if i["metric"] == "llm_sessions_total")
    assert sessions == fold.outcomes["counted"]
    table = totals_table(rows)
    assert table.splitlines()[0].split()[:4] == [
        "workspace_id",
        "project_id",
        "sessions",
        "input_cost",
    ]
    assert len(table.splitlines()) == 1 + len(
        {i["workspace_id"] + "\0" + i["project_id"] for i in items}
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15d", 15 * 86400),
        ("1y2w", 31536000 + 2 * 604800),
        ("15d or 10GiB", 15 * 86400),
        ("10GiB", None),
        ("", None),
    ],
)
def test_prometheus_retention_by_time_is_read_from_its_runtime_info(
    text: str, seconds: float | None
) -> None:
    assert retention_of(text) == seconds


def test_prometheus_is_asked_back_to_the_ranges_first_record_and_a_margin() -> None:
    assert lookback(1_000_000, 1_000_000 / 1000 + 3600) == 3600 + 600
    assert lookback(None, 0) == 3600


@pytest.mark.parametrize("kept", [1, 0])
def test_histograms_over_fewer_labels_are_summed_as_the_exposition_sums_them(kept: int) -> None:
    logs = build_logs()
    both = fold_of(logs).samples()
    fewer = Fold(BUCKETS, WINDOW, 1 << 20, histogram_labels=kept)
    for at in range(0, max(len(log.records) for log in logs), 64):
        fewer.add({("t", p): log.records[at : at + 64] for p, log in enumerate(logs)})
    want: dict[Sample, float] = {}
    for (name, ws, proj, le), value in both.items():
        workspace, project = ws, proj
        if not name.endswith("_total"):
            workspace, project = (workspace if kept else ""), (project if kept > 1 else "")
        key = (name, workspace, project, le)
        want[key] = want.get(key, 0) + value
    assert differing(fewer.samples(), want) == []
    assert any(k[2] == "" for k in fewer.samples() if k[0].endswith("_bucket"))


def test_a_worker_restarted_in_place_adds_each_earlier_lifetimes_last_value() -> None:
    # Samples [time, value] of one series; a new process started at time 10.
    across = [[1, "1"], [2, "3"], [11, "3"], [12, "5"]]  # counted back up past the old value
    assert _earlier_lifetimes(across, [10.0]) == 3
    assert _earlier_lifetimes([[1, "1"], [2, "2"]], [10.0]) == 0  # only before: already last
    assert _earlier_lifetimes([[11, "4"]], [10.0]) == 0  # only after
    assert _earlier_lifetimes([[1, "2"], [11, "1"], [21, "7"]], [10.0, 20.0]) == 3
