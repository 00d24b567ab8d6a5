"""The protobuf exposition, read back by a decoder written here from metrics.proto's field
numbers (not by the encoder's own helpers), and the native buckets' arithmetic."""

import math
import struct
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from consumer.aggregate import Buckets, aggregate
from consumer.exposition import BusinessText, render
from consumer.metrics import ConsumerMetrics
from consumer.nativehist import Native, upper_bound
from consumer.protobuf import CONTENT_TYPE, registry_families, wants_protobuf
from consumer.synthetic import SessionFactory

PROMETHEUS_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
)
"""What Prometheus 2.42 sends with --enable-feature=native-histograms."""
BUCKETS = Buckets((1.0, 60.0), (100.0, 1000.0), (0.01, 1.0), native=True)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[at]
        n |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return n, at
        shift += 7


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value): varints as int, fixed64 as float, the rest as bytes."""
    out: list[tuple[int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = struct.unpack("<d", data[at : at + 8])[0], at + 8
        else:
            assert wire == 2, wire
            length, at = _varint(data, at)
            value, at = data[at : at + length], at + length
        out.append((number, value))
    return out


def families(body: bytes) -> dict[str, tuple[int, list[bytes]]]:
    """name -> (MetricType, [Metric messages]) of a delimited body."""
    out, at = {}, 0
    while at < len(body):
        length, at = _varint(body, at)
        f = fields(body[at : at + length])
        at += length
        name = next(v for n, v in f if n == 1).decode()
        kind = next((v for n, v in f if n == 3), 0)
        out[name] = (kind, [v for n, v in f if n == 4])
    return out


def labels_of(metric: bytes) -> dict[str, str]:
    pairs = [dict(fields(v)) for n, v in fields(metric) if n == 1]
    return {p[1].decode(): p[2].decode() for p in pairs}


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def test_prometheus_with_native_histograms_gets_protobuf_and_others_get_text() -> None:
    assert wants_protobuf(PROMETHEUS_ACCEPT)
    assert not wants_protobuf("text/plain;version=0.0.4;q=0.9,*/*;q=0.1")
    assert not wants_protobuf("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert not wants_protobuf("")
    # protobuf offered, but of another message or not delimited: not ours to give
    assert not wants_protobuf("application/vnd.google.protobuf;proto=other;encoding=delimited")


def test_a_value_on_a_bucket_boundary_falls_in_the_bucket_it_bounds() -> None:
    native = Native()
    for v in (1.0, 2.0, 0.5, 1.05, 1.1, 0.0, 3e-40):
        native.observe(v)
    assert native.zero == 2  # 0 and a value under the zero threshold
    # 1 = 2^0 bounds bucket 0, 2 bucket 8, 0.5 bucket -8; 1.05 and 1.1 lie in (1, 2^(1/8)]
    # and (2^(1/8), 2^(2/8)]
    assert native.buckets == {0: 1, 8: 1, -8: 1, 1: 1, 2: 1}
    for key in native.buckets:
        assert upper_bound(key - 1) < upper_bound(key)
    assert upper_bound(1) >= 1.05
    assert upper_bound(1) < 1.1


def test_spans_cover_runs_of_buckets_and_deltas_rebuild_the_counts() -> None:
    native = Native()
    native.buckets = {-3: 2, -2: 5, 4: 1, 5: 1, 6: 4}
    spans, deltas = native.spans()
    assert spans == [(-3, 2), (5, 3)]  # from -3, two; then after a gap of 5, three
    counts, running = [], 0
    for d in deltas:
        running += d
        counts.append(running)
    assert counts == [2, 5, 1, 1, 4]


def test_business_histograms_in_protobuf_carry_classic_and_native_buckets() -> None:
    events = list(SessionFactory(seed=5).events(300))
    metrics = ConsumerMetrics(BUCKETS, 1000)
    metrics.business.apply(aggregate(events, BUCKETS))
    chunks, content_type = render(
        CollectorRegistry(), BusinessText(metrics.business), PROMETHEUS_ACCEPT, []
    )
    assert content_type == CONTENT_TYPE
    got = families(b"".join(chunks))
    kind, sessions = got["llm_sessions_total"]
    assert kind == 0  # COUNTER
    assert sum(dict(fields(dict(fields(m))[3]))[1] for m in sessions) == 300
    kind, metrics_of = got["llm_session_cost_per_session"]
    assert kind == 4  # HISTOGRAM
    count = total = 0.0
    for m in metrics_of:
        assert set(labels_of(m)) == {"workspace_id", "project_id"}
        h = fields(dict(fields(m))[7])
        one = dict(h)
        count += one[1]
        total += one[2]
        assert unzigzag(one[5]) == 3  # schema
        classic = [dict(fields(v)) for n, v in h if n == 3]
        assert [b[2] for b in classic] == [0.01, 1.0]  # +Inf left out
        deltas = [unzigzag(v) for n, v in h if n == 13]
        spans = [dict(fields(v)) for n, v in h if n == 12]
        assert sum(s.get(2, 0) for s in spans) == len(deltas)
        running, native_total = 0, one.get(7, 0)  # zero bucket
        for d in deltas:
            running += d
            native_total += running
        assert native_total == one[1]  # every observation in exactly one native bucket
    assert count == 300
    assert math.isclose(total, math.fsum(e.billing.total_cost for e in events))


def test_prometheus_clients_own_metrics_keep_their_names_and_types_in_protobuf() -> None:
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["kind"], registry=registry).labels("a").inc(3)
    Gauge("depth", "Depth.", registry=registry).set(7)
    Histogram("wait_seconds", "Wait.", buckets=(1.0,), registry=registry).observe(0.5)
    Info("build", "Build.", registry=registry).info({"version": "1"})
    got = families(b"".join(registry_families(registry)))
    assert {name: kind for name, (kind, _) in got.items()} == {
        "jobs_total": 0,
        "depth": 1,
        "wait_seconds": 4,
        "build_info": 1,
    }
    (jobs,) = got["jobs_total"][1]
    assert labels_of(jobs) == {"kind": "a"}
    assert dict(fields(dict(fields(jobs))[3]))[1] == 3.0
    (wait,) = got["wait_seconds"][1]
    h = dict(fields(dict(fields(wait))[7]))
    assert (h[1], h[2]) == (1, 0.5)


def test_each_format_shows_what_came_since_the_other_format_was_last_scraped() -> None:
    metrics = ConsumerMetrics(BUCKETS, 1000)
    text = BusinessText(metrics.business)
    events = list(SessionFactory(seed=6).events(200))

    def sessions_in_protobuf() -> float:
        chunks, _ = render(CollectorRegistry(), text, PROMETHEUS_ACCEPT, ["llm_sessions_total"])
        _, metrics_of = families(b"".join(chunks))["llm_sessions_total"]
        return float(sum(dict(fields(dict(fields(m))[3]))[1] for m in metrics_of))

    metrics.business.apply(aggregate(events[:100], BUCKETS))
    assert sessions_in_protobuf() == 100
    metrics.business.apply(aggregate(events[100:], BUCKETS))
    chunks, _ = render(CollectorRegistry(), text, "text/plain", [])  # a text scrape first
    assert b"llm_sessions_total{" in b"".join(chunks)
    assert sessions_in_protobuf() == 200
