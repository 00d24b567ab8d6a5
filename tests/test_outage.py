"""Broker loss does not crash the worker: /readyz drops, then it reconnects and consumes."""

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.produce import produce
from tests.conftest import Running, WorkerFactory, eventually, settings_for

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


async def readyz(run: Running) -> int:
    async with aiohttp.ClientSession() as http, http.get(run.url + "/readyz") as response:
        return response.status


def counted(run: Running) -> float:
    registry = run.worker.metrics.registry
    return registry.get_sample_value("session_consumer_messages_total", {"outcome": "counted"}) or 0


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
    await eventually(lambda: counted(run) == 100)
    assert await readyz(run) == 200

    own_broker.stop()
    deadline = asyncio.get_running_loop().time() + 20
    while await readyz(run) != 503:
        assert asyncio.get_running_loop().time() < deadline, "/readyz stayed 200 without broker"
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)
    assert not run.task.done()

    # Tansu keeps data in memory: it comes back empty, so produce fresh events.
    own_broker.start()
    await create_topics(own_broker.bootstrap, {"sessions": 2})
    await send(own_broker.bootstrap, "sessions", 50, seed=2)
    await eventually(lambda: counted(run) == 150, within=60)
    deadline = asyncio.get_running_loop().time() + 20
    while await readyz(run) != 200:
        assert asyncio.get_running_loop().time() < deadline, "/readyz did not recover"
        await asyncio.sleep(0.5)
    assert not run.task.done()
