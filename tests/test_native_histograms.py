"""`--native-histograms`: a real Prometheus with native histograms on asks for the
protobuf exposition and ingests the three histograms as native ones. Its
histogram_count, histogram_sum and histogram_quantile agree with the produced events:
counts and sums exactly, quantiles within one schema-3 bucket (9.05%)."""

import asyncio
import math
import statistics
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import free_port
from consumer.produce import produce
from tests.conftest import Broker, TopicFactory, WorkerFactory, settings_for
from tests.corpus import corpus
from tests.promserver import prometheus_server
from tests.test_prometheus import query

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

WORKER_PORT = free_port()
BUCKET_WIDTH = 2 ** (1 / 8) - 1
"""Schema 3: a bucket's upper bound is 9.05% above its lower one."""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = (
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: session-metrics\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{WORKER_PORT}']}}]\n"
    )
    with prometheus_server(
        config, tmp_path_factory.mktemp("prometheus"), ["--enable-feature=native-histograms"]
    ) as url:
        yield url


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
    prometheus: str,
) -> None:
    topic = await new_topic(partitions=3)
    await produce(producer, topic, count=1500, rate=None, seed=71)
    await start_worker(
        settings_for(broker.bootstrap, topic, metrics_port=WORKER_PORT, native_histograms=True)
    )
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
