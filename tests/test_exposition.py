"""consumer/exposition.py: the fast /metrics text says exactly what prometheus-client would."""

import gzip

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from consumer.aggregate import Buckets, aggregate
from consumer.exposition import SLICE, BusinessText, render
from consumer.metrics import ConsumerMetrics
from consumer.synthetic import SessionFactory

BUCKETS = Buckets(
    duration_seconds=(1.0, 60.0, 3600.0), tokens=(100.0, 1000.0, 1e6), cost=(0.01, 1.0)
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def metrics_with(workspaces: list[str], max_series: int = 1000) -> ConsumerMetrics:
    metrics = ConsumerMetrics(BUCKETS, max_series)
    events = [
        msgspec.structs.replace(e, workspace_id=workspaces[i % len(workspaces)])
        for i, e in enumerate(SessionFactory(seed=7).events(400))
    ]
    metrics.business.apply(aggregate(events, BUCKETS, metrics.business.admit))
    metrics.messages.labels("counted").inc(len(events))
    return metrics


def body(metrics: ConsumerMetrics, text: BusinessText, accept: str = "") -> str:
    chunks, _ = render(metrics.operational, text, accept, [])
    return b"".join(chunks).decode()


def samples(
    text: str, openmetrics: bool = False
) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    parse = parse_om if openmetrics else parse_text
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in parse(text)
        for s in family.samples
    }


@pytest.mark.parametrize("openmetrics", [False, True])
def test_fast_text_has_the_same_samples_as_prometheus_client(openmetrics: bool) -> None:
    odd = ['ws-"quoted"', "ws\\back", "ws\nnewline", "plain"]
    metrics = metrics_with(odd)
    generate = generate_openmetrics if openmetrics else generate_latest
    expected = generate(metrics.registry).decode()

    got = body(metrics, BusinessText(metrics.business), OPENMETRICS if openmetrics else "")

    assert samples(got, openmetrics) == samples(expected, openmetrics)
    assert len(samples(got, openmetrics)) > 300
    if openmetrics:
        assert got.endswith("# EOF\n")
        assert got.count("# EOF") == 1


def test_text_is_byte_for_byte_what_prometheus_client_prints_per_family() -> None:
    metrics = metrics_with(["a", "b"])
    expected = generate_latest(metrics.registry).decode()

    got = body(metrics, BusinessText(metrics.business))

    # Same lines; only the order of families may differ.
    assert sorted(got.splitlines()) == sorted(expected.splitlines())


def test_series_changed_after_a_scrape_show_their_new_values_in_the_next() -> None:
    metrics = metrics_with(["a", "b"])
    text = BusinessText(metrics.business)
    body(metrics, text)

    more = list(SessionFactory(seed=8).events(10))
    more = [msgspec.structs.replace(e, workspace_id="a", project_id=None) for e in more]
    metrics.business.apply(aggregate(more, BUCKETS, metrics.business.admit))

    assert samples(body(metrics, text)) == samples(generate_latest(metrics.registry).decode())


def test_a_name_filter_keeps_only_the_families_asked_for() -> None:
    metrics = metrics_with(["a"])
    chunks, _ = render(
        metrics.operational,
        BusinessText(metrics.business),
        "",
        ["llm_sessions_total", "session_consumer_messages_total"],
    )

    names = {name for name, _, _ in samples(b"".join(chunks).decode())}

    assert names == {"llm_sessions_total", "session_consumer_messages_total"}


def test_gzip_of_the_chunks_decompresses_to_the_same_body() -> None:
    metrics = metrics_with(["a", "b", "c"])
    text = BusinessText(metrics.business)
    chunks, _ = render(metrics.operational, text, "", [])
    plain = list(chunks)

    assert gzip.decompress(gzip.compress(b"".join(plain))) == b"".join(plain)
    # operational, then each business family's header and its series (one slice here)
    assert len(plain) == 1 + 11 * 2


def test_a_large_family_is_written_in_slices_that_join_to_the_whole() -> None:
    workspaces = [f"w{i}" for i in range(2 * SLICE + 1)]
    metrics = ConsumerMetrics(BUCKETS, len(workspaces))
    events = [
        msgspec.structs.replace(e, workspace_id=w)
        for w, e in zip(workspaces, SessionFactory(seed=8).events(len(workspaces)), strict=True)
    ]
    metrics.business.apply(aggregate(events, BUCKETS, metrics.business.admit))
    chunks = list(BusinessText(metrics.business).families(openmetrics=False))
    assert len(chunks) == 11 * (1 + 3)  # each family: header, then three slices
    sessions = b"".join(chunks[:4]).decode()
    assert sessions.startswith("# HELP llm_sessions_total ")
    assert sessions.count("\nllm_sessions_total{") == len(workspaces)


def test_registry_fixture_still_reads_both_kinds_of_metric() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(BUCKETS, 10, registry=registry)
    metrics.business.apply(
        aggregate(list(SessionFactory(seed=1).events(5)), BUCKETS, metrics.business.admit)
    )

    assert registry.get_sample_value("session_consumer_messages_total", {"outcome": "counted"}) == 0
    assert (
        sum(s.value for f in registry.collect() if f.name == "llm_sessions" for s in f.samples) == 5
    )
