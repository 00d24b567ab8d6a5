"""The /metrics body: operational metrics via prometheus-client, business metrics rendered here.

prometheus-client builds a Sample object per line; at the default
`--max-series` (10k series x 54 lines) that took seconds and hundreds of MB
per scrape. Here each series' lines are rendered once when the series
changes and kept as bytes, so a scrape re-renders only the series changed
since the last one and then joins cached bytes, family by family.

Same text as prometheus-client's encoders would give (tests compare them),
in both the classic text format and OpenMetrics.
"""

from collections.abc import Collection, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from consumer import protobuf
from consumer.aggregate import SeriesKey, Totals
from consumer.metrics import COUNTERS, HISTOGRAMS, LABELS, BusinessMetrics, le_labels
from consumer.protobuf import registry_families, wants_protobuf

OPENMETRICS = "application/openmetrics-text"
SLICE = 2000
"""Series per chunk of a family's text."""
EOF = b"# EOF\n"


class BusinessText:
    """Rendered lines of every business series, refreshed for changed series at each scrape.

    With `--histogram-labels` coarser than the counters' labels, the histograms' lines
    are rendered per group (workspace, or one for all) from the group's own totals."""

    def __init__(self, business: BusinessMetrics) -> None:
        self.business = business
        b = business.buckets
        comma = "," if business.histogram_labels else ""
        self._bucket_prefixes = [
            [f'{name}_bucket{{le="{le}"{comma}' for le in le_labels(bounds)]
            for (name, _, _, _), bounds in zip(
                HISTOGRAMS, (b.duration_seconds, b.tokens, b.cost), strict=True
            )
        ]
        self._lines: dict[SeriesKey, tuple[bytes, ...]] = {}
        """Per series, one fragment per family, in COUNTERS + HISTOGRAMS order (the
        counters only, with coarse histograms)."""
        self._group_lines: dict[tuple[str, ...], tuple[bytes, ...]] = {}
        """With coarse histograms: per group, one fragment per histogram family."""
        self._proto: _ProtoCache | None = None
        """The protobuf fragments, made once a scraper first asks for protobuf."""

    def proto_families(self, names: frozenset[str] = frozenset()) -> Iterator[bytes]:
        """The protobuf exposition (consumer/protobuf.py), one family per chunk, from a
        snapshot taken now, like `families`."""
        self._refresh()
        if self._proto is None:
            self._proto = _ProtoCache(self.business)
        return self._proto.families(names)

    def families(self, openmetrics: bool, names: frozenset[str] = frozenset()) -> Iterator[bytes]:
        """A family's header, then its series in slices, from a snapshot taken now
        (between batches: the event loop runs both), so a response written across awaits
        stays consistent.
        """
        self._refresh()
        series = list(self._lines.values())
        if not self.business.coarse:
            return self._join(series, series, 0, openmetrics, names)
        return self._join(
            series, list(self._group_lines.values()), len(COUNTERS), openmetrics, names
        )

    @staticmethod
    def _join(
        series: list[tuple[bytes, ...]],
        histograms: list[tuple[bytes, ...]],
        offset: int,
        openmetrics: bool,
        names: frozenset[str],
    ) -> Iterator[bytes]:
        """`offset`: where the histogram families' fragments start in `histograms`'
        tuples (0: in the series' own tuples, after the counters)."""
        for index, (name, help_text, kind, samples) in enumerate(_FAMILIES):
            if names and not names & samples:
                continue
            family = name if openmetrics or kind == "histogram" else name + "_total"
            yield f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n".encode()
            source, at = (series, index) if kind == "counter" else (histograms, index - offset)
            # A slice of series at a time: a histogram family at the default --max-series
            # is ~15 MB of text, and joining it whole would hold it twice at the peak.
            for start in range(0, len(source), SLICE):
                yield b"".join([lines[at] for lines in source[start : start + SLICE]])

    def _refresh(self) -> None:
        business, lines = self.business, self._lines
        series, coarse = business.series, business.coarse
        for key in business.changed:
            lines[key] = self._render(key, series[key], histograms=not coarse)
        if self._proto is not None:
            self._proto.changed |= business.changed
        business.changed.clear()
        if coarse:
            groups, group_lines = business.groups, self._group_lines
            for group in business.changed_groups:
                labels = ",".join(
                    f'{name}="{_escape(value)}"'
                    for name, value in sorted(zip(business.histogram_labels, group, strict=True))
                )
                group_lines[group] = tuple(self._histograms(labels, groups[group]))
            if self._proto is not None:
                self._proto.changed_groups |= business.changed_groups
            business.changed_groups.clear()

    def _render(self, key: SeriesKey, t: Totals, histograms: bool) -> tuple[bytes, ...]:
        # Label names in sorted order, le first, as prometheus-client prints them.
        workspace, project = map(_escape, key)
        labels = f'project_id="{project}",workspace_id="{workspace}"'
        out = [
            f"{name}_total{{{labels}}} {_number(value)}\n".encode()
            for (name, _, attribute) in COUNTERS
            for value in (getattr(t, attribute),)
        ]
        if histograms:
            out.extend(self._histograms(labels, t))
        return tuple(out)

    def _histograms(self, labels: str, t: Totals) -> list[bytes]:
        """One fragment per histogram family; `labels` rendered and sorted, maybe empty."""
        braced = f"{{{labels}}}" if labels else ""
        out = []
        for (name, _, buckets, total), prefixes in zip(
            HISTOGRAMS, self._bucket_prefixes, strict=True
        ):
            counts = list(accumulate(getattr(t, buckets)))
            text = "".join(
                [f"{p}{labels}}} {_count(n)}\n" for p, n in zip(prefixes, counts, strict=True)]
            )
            out.append(
                (
                    f"{text}{name}_count{braced} {_count(counts[-1])}\n"
                    f"{name}_sum{braced} {_number(getattr(t, total))}\n"
                ).encode()
            )
        return out


def render(
    registry: CollectorRegistry, business: BusinessText | None, accept: str, names: Collection[str]
) -> tuple[Iterator[bytes], str]:
    """(chunks of the body, content type) for a request's Accept header and `name[]` filter."""
    if wants_protobuf(accept):
        chosen = registry.restricted_registry(names) if names else registry
        encoded = list(registry_families(chosen))
        only = frozenset(names)
        if business is None or (only and not only & _ALL_SAMPLE_NAMES):
            return iter(encoded), protobuf.CONTENT_TYPE
        return _chain_all(encoded, business.proto_families(only)), protobuf.CONTENT_TYPE
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith(OPENMETRICS)
    operational = encoder(registry.restricted_registry(names) if names else registry)
    if business is None:
        return iter([operational]), content_type
    wanted = frozenset(names)
    if wanted and not wanted & _ALL_SAMPLE_NAMES:
        # A `name[]` poll for operational metrics only (e.g. a counter watched every
        # few ms) must not pay for re-rendering the business series.
        return iter([operational]), content_type
    families = business.families(openmetrics, wanted)
    if not openmetrics:
        return _chain(operational, families), content_type
    return _chain(operational.removesuffix(EOF), families, EOF), content_type


def _chain(first: bytes, rest: Iterator[bytes], last: bytes = b"") -> Iterator[bytes]:
    yield first
    yield from rest
    if last:
        yield last


def _chain_all(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


class _ProtoCache:
    """Per series (and group), the encoded Metric of each family; families are joined
    from these at a scrape, so a quiet protobuf scrape costs what a quiet text one does."""

    def __init__(self, business: BusinessMetrics) -> None:
        self.business = business
        b = business.buckets
        self._bounds = [
            (*bounds, float("inf")) for bounds in (b.duration_seconds, b.tokens, b.cost)
        ]
        self._series: dict[SeriesKey, tuple[bytes, ...]] = {}
        self._groups: dict[tuple[str, ...], tuple[bytes, ...]] = {}
        self.changed: set[SeriesKey] = set(business.series)
        self.changed_groups: set[tuple[str, ...]] = set(business.groups)

    def families(self, names: frozenset[str]) -> Iterator[bytes]:
        business, coarse = self.business, self.business.coarse
        for key in self.changed:
            self._series[key] = self._encode(key, business.series[key], not coarse)
        self.changed.clear()
        for group in self.changed_groups:
            self._groups[group] = tuple(self._histograms(group, business.groups[group]))
        self.changed_groups.clear()
        series = list(self._series.values())
        histograms, offset = (list(self._groups.values()), len(COUNTERS)) if coarse else (series, 0)
        for index, (name, help_text, kind, samples) in enumerate(_FAMILIES):
            if names and not names & samples:
                continue
            if kind == "counter":
                metrics = [m[index] for m in series]
                yield protobuf.family(name + "_total", help_text, protobuf.COUNTER, metrics)
            else:
                metrics = [m[index - offset] for m in histograms]
                yield protobuf.family(name, help_text, protobuf.HISTOGRAM, metrics)

    def _encode(self, key: SeriesKey, t: Totals, histograms: bool) -> tuple[bytes, ...]:
        labels = protobuf.labels(zip(LABELS, key, strict=True))
        out = [protobuf.counter(labels, float(getattr(t, a))) for _, _, a in COUNTERS]
        if histograms:
            out.extend(self._histograms(key, t))
        return tuple(out)

    def _histograms(self, group: tuple[str, ...], t: Totals) -> list[bytes]:
        labels = protobuf.labels(zip(self.business.histogram_labels, group, strict=True))
        out = []
        for i, ((_, _, buckets, total), bounds) in enumerate(
            zip(HISTOGRAMS, self._bounds, strict=True)
        ):
            counts = list(accumulate(getattr(t, buckets)))
            native = t.native[i] if t.native is not None else None
            out.append(
                protobuf.histogram(
                    labels,
                    counts[-1],
                    float(getattr(t, total)),
                    list(zip(bounds, counts, strict=True)),
                    native,
                )
            )
        return out


def _number(value: float) -> str:
    # floatToGoString (what prometheus-client prints) switches to Go's exponent form from
    # 1e6 and spells infinities; below that it is repr.
    if isinstance(value, int):
        return _count(value)
    if 0.0 <= value < 1e6:  # repr is exactly what floatToGoString gives here, and faster
        return repr(value)
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _count(n: int) -> str:
    """A whole number as prometheus-client prints it (as a float: `3.0`, `1e+06`)."""
    if 0 <= n < 1_000_000:
        return f"{n}.0"
    text: str = floatToGoString(float(n))  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_names(name: str, kind: str) -> frozenset[str]:
    if kind == "counter":
        return frozenset({name + "_total"})
    return frozenset({name + "_bucket", name + "_count", name + "_sum"})


_FAMILIES = [
    *((name, text, "counter", _sample_names(name, "counter")) for name, text, _ in COUNTERS),
    *(
        (name, text, "histogram", _sample_names(name, "histogram"))
        for name, text, _, _ in HISTOGRAMS
    ),
]
_ALL_SAMPLE_NAMES = frozenset().union(*(samples for _, _, _, samples in _FAMILIES))
