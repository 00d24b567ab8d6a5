"""`--native-histograms`: a real Prometheus with native histograms on asks for the
protobuf exposition and ingests the three histograms as native ones. Its
histogram_count, histogram_sum and histogram_quantile agree with the produced events:
counts and sums exactly, quantiles within one schema-3 bucket (9.05%). Prometheus fetches
it gzipped and through basic auth, as in production; `reconcile` compares those counts
and sums with the log's and finds them equal. A worker without the option serves the
same protobuf with classic histograms only, and Prometheus keeps those."""

import asyncio
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import free_port
from consumer.produce import produce
from consumer.settings import Settings
from tests.conftest import Broker, TopicFactory, WorkerFactory, settings_for
from tests.corpus import corpus, expected_samples
from tests.faults import committed, until
from tests.promserver import one_target, prometheus_server
from tests.reconcile_run import disagreements, reconcile
from tests.test_prometheus import query

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

WORKER_PORT = free_port()
USER, PASSWORD = "prometheus", "Native-Pa55word"
BUCKET_WIDTH = 2 ** (1 / 8) - 1
"""Schema 3: a bucket's upper bound is 9.05% above its lower one."""


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "password"
    path.write_text(PASSWORD)
    return path


class Scraping(NamedTuple):
    url: str
    password_file: Path


@pytest.fixture(scope="module")
def scraping(tmp_path_factory: pytest.TempPathFactory, password_file: Path) -> Iterator[Scraping]:
    auth = f"    basic_auth: {{username: {USER}, password_file: '{password_file}'}}\n"
    config = one_target(WORKER_PORT, extra=auth)
    with prometheus_server(
        config, tmp_path_factory.mktemp("prometheus"), ["--enable-feature=native-histograms"]
    ) as url:
        yield Scraping(url, password_file)


def secured(broker: Broker, topic: str, password_file: Path, **options: object) -> Settings:
    return settings_for(
        broker.bootstrap,
        topic,
        metrics_port=WORKER_PORT,
        metrics_auth_username=USER,
        metrics_auth_password_file=password_file,
        **options,
    )


async def value(prometheus: str, promql: str) -> float | None:
    rows = await asyncio.to_thread(query, prometheus, promql)
    if not rows:
        return None
    sample = rows[0]["value"]
    assert isinstance(sample, list)
    return float(sample[1])


async def test_prometheus_ingests_native_histograms_that_agree_with_the_events(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    scraping: Scraping,
) -> None:
    prometheus = scraping.url
    topic = await new_topic(partitions=3)
    await produce(producer, topic, count=1500, rate=None, seed=71)
    settings = secured(broker, topic, scraping.password_file, native_histograms=True)
    await start_worker(settings)
    events = corpus(seed=71, count=1500)
    # histogram_count() answers only for native histograms: a classic one gives nothing.
    count = "sum(histogram_count(llm_session_cost_per_session))"
    deadline = asyncio.get_running_loop().time() + 60
    while await value(prometheus, count) != 1500:
        assert asyncio.get_running_loop().time() < deadline, "no native histogram of them all"
        await asyncio.sleep(0.5)

    # The rest of the body came in protobuf too: counters, and prometheus-client's own.
    assert await value(prometheus, "sum(llm_sessions_total)") == 1500
    counted = 'sum(session_consumer_messages_total{outcome="counted"})'
    assert await value(prometheus, counted) == 1500
    assert await value(prometheus, "sum(process_resident_memory_bytes) > 0") is not None
    costs = [e.billing.total_cost for e in events]
    total = await value(prometheus, "sum(histogram_sum(llm_session_cost_per_session))")
    assert total is not None
    assert math.isclose(total, math.fsum(costs), rel_tol=1e-9)
    for name, observed in (
        ("llm_session_cost_per_session", costs),
        ("llm_session_duration_seconds", [e.duration / 1000 for e in events]),
        ("llm_session_tokens_per_session", [e.usage.total_tokens for e in events]),
    ):
        for q in (0.5, 0.9):
            estimate = await value(prometheus, f"histogram_quantile({q}, sum({name}))")
            truth = statistics.quantiles(observed, n=100, method="inclusive")[round(q * 100) - 1]
            assert estimate is not None
            assert abs(estimate / truth - 1) <= BUCKET_WIDTH, (name, q, estimate, truth)
    workspaces: dict[str, int] = {}
    for e in events:
        workspaces[e.workspace_id] = workspaces.get(e.workspace_id, 0) + 1
    for workspace, sessions in workspaces.items():
        got = await value(
            prometheus,
            f'sum(histogram_count(llm_session_duration_seconds{{workspace_id="{workspace}"}}))',
        )
        assert got == sessions

    # reconcile finds the histograms held natively only, and compares their counts and sums
    # with the log's (counts that differ: tests/test_reconcile_broker.py).
    async def all_committed() -> bool:
        offsets = await committed(broker.bootstrap, settings.group_id, topic, 3)
        return sum(offsets.values()) == 1500

    await until(all_committed, 30, "the worker commits what Prometheus scraped")
    run = await reconcile(
        *("--bootstrap-servers", broker.bootstrap, "--topic", topic),
        *("--group-id", settings.group_id, "--prometheus-url", prometheus, "--format", "json"),
    )
    assert run.code == 0, run.out + run.err
    warnings = run.err.strip().splitlines()
    assert len(warnings) == 3
    assert all("as a native histogram: its count and sum are compared" in w for w in warnings)
    rows = run.rows()
    assert not [k for k in rows if k[0].endswith("_bucket")]
    want = {k: v for k, v in expected_samples(events).items() if not k[0].endswith("_bucket")}
    assert disagreements(rows, want, want) == []


async def test_without_the_option_prometheus_gets_classic_histograms_in_protobuf(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    scraping: Scraping,
) -> None:
    prometheus = scraping.url
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=400, rate=None, seed=72)
    await start_worker(secured(broker, topic, scraping.password_file))
    count = 'sum(llm_session_cost_per_session_count{job="session-metrics"})'
    deadline = asyncio.get_running_loop().time() + 60
    while await value(prometheus, count) != 400:
        assert asyncio.get_running_loop().time() < deadline, "no classic histogram of them all"
        await asyncio.sleep(0.5)
    inf = 'sum(llm_session_cost_per_session_bucket{le="+Inf"})'
    assert await value(prometheus, inf) == 400
    # ...and no native one: histogram_count() has nothing to count.
    assert await value(prometheus, "sum(histogram_count(llm_session_cost_per_session))") is None
