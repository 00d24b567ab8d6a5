"""Broker loss does not crash the worker: /readyz drops, then it reconnects and consumes."""

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.produce import produce
from tests.conftest import WorkerFactory, eventually, settings_for

pytestmark = pytest.mark.broker


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    # Not the session broker: this test stops and restarts it.
    with EmbeddedBroker() as b:
        yield b


async def send(bootstrap: str, topic: str, count: int, seed: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await produce(producer, topic, count=count, rate=None, seed=seed)
    finally:
        await producer.stop()


async def test_worker_survives_a_broker_outage_and_consumes_after_it(
    own_broker: EmbeddedBroker, start_worker: WorkerFactory
) -> None:
    await create_topics(own_broker.bootstrap, {"sessions": 2})
    await send(own_broker.bootstrap, "sessions", 100, seed=1)
    run = await start_worker(
        settings_for(
            own_broker.bootstrap, "sessions", session_timeout_ms=6000, heartbeat_interval_ms=1000
        )
    )
    await eventually(lambda: run.counted() == 100)
    assert await run.status("/readyz") == 200

    own_broker.stop()

    async def unready() -> bool:
        return await run.status("/readyz") == 503

    await eventually(unready, within=20)
    await asyncio.sleep(3)
    assert not run.task.done()

    # Tansu keeps data in memory: it comes back empty, so produce fresh events.
    own_broker.start()
    await create_topics(own_broker.bootstrap, {"sessions": 2})
    await send(own_broker.bootstrap, "sessions", 50, seed=2)
    await eventually(lambda: run.counted() == 150, within=60)
    await eventually(run.is_ready, within=20)
    assert not run.task.done()
