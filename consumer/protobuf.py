"""Prometheus's protobuf exposition, written by hand. Pure.

The body is a sequence of `io.prometheus.client.MetricFamily` messages, each preceded by
its length as a varint ("encoding=delimited"), as client_golang serves it and as
Prometheus asks for it first when native histograms are on. Field numbers are those of
prometheus/client_model's metrics.proto. Why by hand rather than the protobuf package and
generated code: the exposition needs nine message types and three wire types; the cached
per-series bytes (consumer/exposition.py) need the encoder to produce fragments that are
joined later, which generated classes do not offer without decoding and re-encoding.
"""

import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.registry import RestrictedRegistry
from prometheus_client.samples import Sample

from consumer.nativehist import SCHEMA, ZERO_THRESHOLD, Native

CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
"""MetricType."""

_VARINT, _FIXED64, _LENGTH = 0, 1, 2


def wants_protobuf(accept: str) -> bool:
    """Whether the Accept header prefers the delimited MetricFamily protobuf to every text
    format it offers (Prometheus with native histograms lists it first, with the highest
    q)."""
    best_text, protobuf = -1.0, -1.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        values = dict(p.partition("=")[::2] for p in params)
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            continue
        if media == "application/vnd.google.protobuf":
            if (
                values.get("proto") == "io.prometheus.client.MetricFamily"
                and values.get("encoding") == "delimited"
            ):
                protobuf = max(protobuf, q)
        elif media in ("text/plain", "application/openmetrics-text", "*/*", "text/*"):
            best_text = max(best_text, q)
    return protobuf > 0 and protobuf >= best_text


# --- the wire format ---------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _message(number: int, payload: bytes) -> bytes:
    return _key(number, _LENGTH) + varint(len(payload)) + payload


def _text(number: int, value: str) -> bytes:
    return _message(number, value.encode())


def _double(number: int, value: float) -> bytes:
    return _key(number, _FIXED64) + struct.pack("<d", value)


def _unsigned(number: int, n: int) -> bytes:
    return _key(number, _VARINT) + varint(n)


def _signed(number: int, n: int) -> bytes:
    """sint32/sint64: zigzag, so small negative numbers stay short."""
    return _key(number, _VARINT) + varint(n << 1 if n >= 0 else (-n << 1) - 1)


# --- messages ----------------------------------------------------------------------


def labels(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Metric.label: LabelPair {name = 1, value = 2}."""
    return b"".join(_message(1, _text(1, name) + _text(2, value)) for name, value in pairs)


def counter(label_bytes: bytes, value: float) -> bytes:
    """One Metric of a counter family (Metric.counter = 3, Counter.value = 1), ready to
    join into a family (as MetricFamily.metric = 4)."""
    return _message(4, label_bytes + _message(3, _double(1, value)))


def gauge(label_bytes: bytes, value: float) -> bytes:
    return _message(4, label_bytes + _message(2, _double(1, value)))


def untyped(label_bytes: bytes, value: float) -> bytes:
    return _message(4, label_bytes + _message(5, _double(1, value)))


def summary(
    label_bytes: bytes, count: int, total: float, quantiles: Sequence[tuple[float, float]]
) -> bytes:
    body = _unsigned(1, count) + _double(2, total)
    body += b"".join(_message(3, _double(1, q) + _double(2, v)) for q, v in quantiles)
    return _message(4, label_bytes + _message(4, body))


def histogram(
    label_bytes: bytes,
    count: int,
    total: float,
    cumulative: Sequence[tuple[float, int]],
    native: Native | None = None,
) -> bytes:
    """One Metric of a histogram family: sample_count = 1, sample_sum = 2, the classic
    buckets (Bucket {cumulative_count = 1, upper_bound = 2}, +Inf left out: it is the
    count), and with `native` the exponential buckets: schema = 5, zero_threshold = 6,
    zero_count = 7, positive_span = 12 (BucketSpan {offset = 1, length = 2}),
    positive_delta = 13. A server that keeps classic histograms still finds them here."""
    body = [_unsigned(1, count), _double(2, total)]
    body += [
        _message(3, _unsigned(1, n) + _double(2, bound))
        for bound, n in cumulative
        if bound != float("inf")
    ]
    if native is not None:
        spans, deltas = native.spans()
        body += [_signed(5, SCHEMA), _double(6, ZERO_THRESHOLD), _unsigned(7, native.zero)]
        body += [
            _message(12, _signed(1, offset) + _unsigned(2, length)) for offset, length in spans
        ]
        body += [_signed(13, d) for d in deltas]
    return _message(4, label_bytes + _message(7, b"".join(body)))


def family(name: str, help_text: str, kind: int, metrics: Iterable[bytes]) -> bytes:
    """A whole MetricFamily (name = 1, help = 2, type = 3, metric = 4), length first."""
    body = b"".join([_text(1, name), _text(2, help_text), _unsigned(3, kind), *metrics])
    return varint(len(body)) + body


# --- prometheus-client's registries ------------------------------------------------


@dataclass
class _Parts:
    """A histogram's or summary's samples of one label set, gathered."""

    count: int = 0
    total: float = 0.0
    buckets: list[tuple[float, int]] = field(default_factory=list)
    quantiles: list[tuple[float, float]] = field(default_factory=list)


def registry_families(registry: CollectorRegistry | RestrictedRegistry) -> Iterator[bytes]:
    """What prometheus-client collects, as protobuf families (it has no such encoder)."""
    for mf in registry.collect():
        if mf.type == "counter":
            metrics = [
                counter(labels(sorted(s.labels.items())), s.value)
                for s in mf.samples
                if s.name.endswith("_total")
            ]
            yield family(mf.name + "_total", mf.documentation, COUNTER, metrics)
        elif mf.type in ("histogram", "summary"):
            parts = _gathered(mf.name, mf.samples)
            if mf.type == "histogram":
                metrics = [
                    histogram(labels(key), p.count, p.total, p.buckets) for key, p in parts.items()
                ]
                yield family(mf.name, mf.documentation, HISTOGRAM, metrics)
            else:
                metrics = [
                    summary(labels(key), p.count, p.total, p.quantiles) for key, p in parts.items()
                ]
                yield family(mf.name, mf.documentation, SUMMARY, metrics)
        else:  # gauge, info, stateset, unknown
            kind = UNTYPED if mf.type == "unknown" else GAUGE
            name = mf.name + "_info" if mf.type == "info" else mf.name
            encode = untyped if kind == UNTYPED else gauge
            metrics = [encode(labels(sorted(s.labels.items())), s.value) for s in mf.samples]
            yield family(name, mf.documentation, kind, metrics)


def _gathered(name: str, samples: Iterable[Sample]) -> dict[tuple[tuple[str, str], ...], _Parts]:
    out: dict[tuple[tuple[str, str], ...], _Parts] = defaultdict(_Parts)
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("le", "quantile")))
        parts, suffix = out[key], s.name[len(name) :]
        if suffix == "_bucket":
            parts.buckets.append((float(s.labels["le"]), int(s.value)))
        elif suffix == "":
            parts.quantiles.append((float(s.labels["quantile"]), s.value))
        elif suffix == "_count":
            parts.count = int(s.value)
        elif suffix == "_sum":
            parts.total = s.value
    return out
