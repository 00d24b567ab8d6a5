"""A real Prometheus server scrapes the worker; PromQL answers match the produced data."""

import asyncio
import json
import math
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import free_port
from consumer.produce import produce
from tests.conftest import Broker, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals
from tests.promserver import one_target, prometheus_server

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]


@pytest.fixture
def broker(any_broker: Broker) -> Broker:
    """Every test here runs on Tansu and on Apache Kafka."""
    return any_broker


WORKER_PORT = free_port()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prometheus_server(one_target(WORKER_PORT), tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def scalar(rows: list[dict[str, object]]) -> float:
    value = rows[0]["value"]
    assert isinstance(value, list)
    return float(value[1])


async def test_promql_sums_match_the_produced_events(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    prometheus: str,
) -> None:
    topic = await new_topic(partitions=3)
    await produce(producer, topic, count=2500, rate=None, seed=61)
    await start_worker(settings_for(broker.bootstrap, topic, metrics_port=WORKER_PORT))
    want = expected_totals(corpus(seed=61, count=2500))

    async def total_sessions() -> float:
        rows = await asyncio.to_thread(query, prometheus, "sum(llm_sessions_total)")
        return scalar(rows) if rows else 0.0

    deadline = asyncio.get_running_loop().time() + 60
    while await total_sessions() != 2500:
        assert asyncio.get_running_loop().time() < deadline, "Prometheus never saw all sessions"
        await asyncio.sleep(0.5)

    rows = await asyncio.to_thread(
        query, prometheus, "sum by (workspace_id) (llm_session_cost_total)"
    )
    by_workspace: dict[str, float] = {}
    for (workspace, _), t in want.items():
        by_workspace[workspace] = by_workspace.get(workspace, 0.0) + t.cost
    got = {row["metric"]["workspace_id"]: float(row["value"][1]) for row in rows}  # type: ignore[index]
    assert got.keys() == by_workspace.keys()
    for workspace, cost in by_workspace.items():
        assert math.isclose(got[workspace], cost, rel_tol=1e-9)

    tokens = scalar(await asyncio.to_thread(query, prometheus, "sum(llm_session_tokens_total)"))
    assert tokens == sum(t.tokens for t in want.values())
    without_project = scalar(
        await asyncio.to_thread(query, prometheus, 'sum(llm_sessions_total{project_id=""})')
    )
    assert without_project == sum(t.sessions for (_, p), t in want.items() if p == "")
    count = scalar(
        await asyncio.to_thread(query, prometheus, "sum(llm_session_duration_seconds_count)")
    )
    assert count == 2500
    up = scalar(await asyncio.to_thread(query, prometheus, 'up{job="session-metrics"}'))
    assert up == 1


async def test_promtool_finds_nothing_to_report_on_a_scrape(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    topic, dlq = await new_topic(partitions=2), await new_topic(partitions=1)
    await produce(
        producer, topic, count=300, rate=None, seed=5, invalid_ratio=0.05, duplicate_ratio=0.05
    )
    run = await start_worker(settings_for(broker.bootstrap, topic, dlq_topic=dlq))
    m = run.worker.metrics
    await eventually(
        lambda: (
            (
                m.registry.get_sample_value(
                    "session_consumer_messages_total", {"outcome": "counted"}
                )
                or 0
            )
            == 300
        )
    )
    await asyncio.sleep(5.5)  # let the probe fill in lag for every partition
    # The worker serves on this event loop: fetch from a thread, never block the loop.
    text = await asyncio.to_thread(fetch, run.url + "/metrics")
    assert b"session_consumer_lag_records{" in text
    assert b"session_consumer_lag_seconds{" in text
    promtool = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(promtool.communicate(text), 30)
    assert promtool.returncode == 0, stdout + stderr
    assert stdout.strip() == b""
    assert stderr.strip() == b""
