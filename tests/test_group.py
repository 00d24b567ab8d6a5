"""Consumer-group behaviour against the real broker: resume, split, readiness."""

import asyncio
import math

import pytest
from aiokafka import AIOKafkaProducer

from consumer.produce import produce
from tests.conftest import Broker, Running, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.faults import FULL

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(any_broker: Broker) -> Broker:
    """Every test here runs on Tansu and on Apache Kafka."""
    return any_broker


# Short group timeouts so a restarted or second worker is admitted in seconds.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


async def test_restarted_worker_resumes_from_committed_offsets(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=3)
    settings = settings_for(broker.bootstrap, topic, **FAST_GROUP)
    await produce(producer, topic, count=1200, rate=None, seed=21)
    first = await start_worker(settings)
    await eventually(lambda: first.counted() == 1200)
    await first.scrape()  # what a served scrape showed is committed
    await first.stop()

    # Events 1200..1999 of the same seeded stream, produced while no worker runs.
    everything = corpus(seed=21, count=2000)
    await produce(producer, topic, count=2000, rate=None, seed=21, skip=1200)
    second = await start_worker(settings)
    await eventually(lambda: second.counted() == 800, within=60)
    await asyncio.sleep(1)  # nothing more arrives: the first 1200 were not re-read
    assert second.counted() == 800
    await second.scrape()
    got = series_values(second.worker.metrics.registry)["llm_sessions_total"]
    want = expected_totals(everything[1200:])
    assert got == {key: float(t.sessions) for key, t in want.items()}


async def test_two_workers_in_one_group_split_partitions_and_sum_exactly(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=4)
    settings = settings_for(broker.bootstrap, topic, **FAST_GROUP)
    a = await start_worker(settings)
    b = await start_worker(settings)

    def split() -> bool:
        return all(
            r.worker.metrics.registry.get_sample_value("session_consumer_assigned_partitions") == 2
            for r in (a, b)
        )

    await eventually(split, within=60)
    await produce(producer, topic, count=4000, rate=None, seed=33)
    await eventually(lambda: a.counted() + b.counted() == 4000, within=60)
    assert a.counted() > 0
    assert b.counted() > 0

    # Each worker reports lag only for its own partitions: together all four, once.
    def lag_partitions(run: Running) -> set[str]:
        return {
            s.labels["partition"]
            for family in run.worker.metrics.registry.collect()
            if family.name == "session_consumer_lag_records"
            for s in family.samples
            if s.value == 0
        }

    await eventually(lambda: len(lag_partitions(a)) == len(lag_partitions(b)) == 2)
    assert lag_partitions(a).isdisjoint(lag_partitions(b))
    assert lag_partitions(a) | lag_partitions(b) == {"0", "1", "2", "3"}

    want = expected_totals(corpus(seed=33, count=4000))
    totals: dict[tuple[str, str], float] = {}
    cost: dict[tuple[str, str], float] = {}
    for run in (a, b):
        await run.scrape()
        values = series_values(run.worker.metrics.registry)
        for key, v in values["llm_sessions_total"].items():
            totals[key] = totals.get(key, 0.0) + v
            cost[key] = cost.get(key, 0.0) + values["llm_session_cost_total"][key]
    assert totals == {key: float(t.sessions) for key, t in want.items()}
    for key, t in want.items():
        assert math.isclose(cost[key], t.cost, rel_tol=1e-9)


# A worker without partitions is the same on both brokers: Tansu in CI (at its 20-minute
# budget), both in the full run.
@pytest.mark.parametrize(
    "any_broker",
    ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)] if FULL else ["tansu"],
    indirect=True,
)
async def test_readyz_is_503_for_a_worker_without_partitions(
    broker: Broker,
    new_topic: TopicFactory,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=1)
    settings = settings_for(broker.bootstrap, topic, **FAST_GROUP)
    a = await start_worker(settings)

    await eventually(a.is_ready)
    b = await start_worker(settings)
    await asyncio.sleep(8)  # let the group settle: one partition, two members
    statuses = sorted([await a.status("/readyz"), await b.status("/readyz")])
    assert statuses == [200, 503]
    assert await a.status("/healthz") == 200
    assert await b.status("/healthz") == 200
    await a.stop()
    await eventually(b.is_ready)
