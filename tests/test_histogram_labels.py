"""`--histogram-labels workspace_id`: a real Prometheus ingests the histograms per
workspace, summed over its projects, while the counters keep both labels."""

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import free_port
from consumer.produce import produce
from tests.conftest import Broker, TopicFactory, WorkerFactory, settings_for
from tests.corpus import corpus, expected_totals
from tests.promserver import one_target, prometheus_server
from tests.test_prometheus import query

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

WORKER_PORT = free_port()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prometheus_server(one_target(WORKER_PORT), tmp_path_factory.mktemp("prometheus")) as url:
        yield url


async def test_histograms_per_workspace_reach_prometheus_summed_over_projects(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    prometheus: str,
) -> None:
    topic = await new_topic(partitions=3)
    await produce(producer, topic, count=1500, rate=None, seed=67)
    await start_worker(
        settings_for(
            broker.bootstrap,
            topic,
            metrics_port=WORKER_PORT,
            histogram_labels="workspace_id",
        )
    )
    want = expected_totals(corpus(seed=67, count=1500))
    sessions: dict[str, float] = {}
    for (workspace, _), t in want.items():
        sessions[workspace] = sessions.get(workspace, 0.0) + t.sessions

    async def rows(promql: str) -> list[tuple[dict[str, str], float]]:
        got = await asyncio.to_thread(query, prometheus, promql)
        out = []
        for row in got:
            labels, value = row["metric"], row["value"]
            assert isinstance(labels, dict)
            assert isinstance(value, list)
            out.append((labels, float(value[1])))
        return out

    deadline = asyncio.get_running_loop().time() + 60
    while sum(v for _, v in await rows("llm_session_cost_per_session_count")) != 1500:
        assert asyncio.get_running_loop().time() < deadline, "Prometheus never saw them all"
        await asyncio.sleep(0.5)

    per_workspace = await rows('llm_session_cost_per_session_count{job="session-metrics"} - 0')
    assert {labels["workspace_id"]: v for labels, v in per_workspace} == sessions
    assert all("project_id" not in labels for labels, _ in per_workspace)
    pairs = await rows('llm_sessions_total{job="session-metrics"} - 0')
    assert len(pairs) == len(want)  # the counters keep (workspace, project)
    buckets = await rows("count by (workspace_id) (llm_session_cost_per_session_bucket) - 0")
    assert len(buckets) == len(sessions)
