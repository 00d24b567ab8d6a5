"""Broker outage: the broker stops for 20 s mid-stream. The worker process stays up and
healthy, /readyz is 503 during the outage and 200 again within 15 s after, and it consumes
again. Tansu keeps data in memory, so it comes back empty: the topic is created again and
fresh events are produced, which must all be counted."""

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.broker import EmbeddedBroker, create_topics
from consumer.produce import Produced, produce
from tests.faults import BATCH_COMMITS, FAST_GROUP, Worker, report, until, workers

pytestmark = pytest.mark.broker

OUTAGE = 20.0
READY_AFTER = 15.0
FRESH = 500
"""Fewer than the worker had read before: the restarted broker's offsets start again at 0,
and a fetch position still inside the new log would skip its head (see docs/guarantees.md)."""


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    # Not the session broker: this test stops and restarts it.
    with EmbeddedBroker() as b:
        yield b


@dataclass
class Probes:
    """/readyz and /healthz of a worker, polled every 0.2 s with the time of each answer."""

    worker: Worker
    answers: list[tuple[float, int | None, int | None]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            ready, healthy = await self.worker.get("/readyz"), await self.worker.get("/healthz")
            self.answers.append((time.monotonic(), ready and ready[0], healthy and healthy[0]))
            await asyncio.sleep(0.2)

    def ready(self, start: float, end: float = float("inf")) -> list[int | None]:
        return [r for at, r, _ in self.answers if start <= at < end]

    def healthy(self, start: float, end: float) -> list[int | None]:
        return [h for at, _, h in self.answers if start <= at < end]

    def first(self, status: int, after: float) -> float:
        return next(at for at, r, _ in self.answers if at >= after and r == status) - after


async def test_worker_process_outlives_a_20s_broker_outage_and_consumes_after_it(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    await create_topics(bootstrap, {"sessions": 2})
    args = ("--bootstrap-servers", bootstrap, "--topic", "sessions", "--group-id", "g")
    # Tansu restarts empty: a position served before the outage and committed after it
    # would point past the fresh log. Committing after each batch keeps commits behind
    # the outage; a restart that keeps its logs, in the default mode, is tested on
    # Apache Kafka (tests/test_kafka_restart.py).
    async with workers(tmp_path, *args, *FAST_GROUP, *BATCH_COMMITS) as ws:
        worker = await ws.start()
        probes = Probes(worker)
        polling = asyncio.create_task(probes.run())
        try:
            stopped_at, sent = await stream_then_stop_broker(own_broker, worker)
            counted_before = await worker.counted()
            await asyncio.sleep(stopped_at + OUTAGE - time.monotonic())
            assert worker.alive
            own_broker.start()
            restarted_at = time.monotonic()
            await create_topics(bootstrap, {"sessions": 2})
            await send(bootstrap, FRESH, seed=72)

            async def fresh_counted() -> bool:
                return await worker.counted() == counted_before + FRESH

            await until(fresh_counted, 60, "fresh events counted")
            counted_after = time.monotonic() - restarted_at
            await until(worker.ready, READY_AFTER + 10, "ready again")
            await asyncio.sleep(0.5)
        finally:
            polling.cancel()
        assert await worker.counted() == counted_before + FRESH
        worker.terminate()
        code, _ = await worker.wait()
        assert code == 0, worker.tail()

    unready_after = probes.first(503, stopped_at)
    ready_after = probes.first(200, restarted_at)
    assert 0 < counted_before <= sent
    assert unready_after < 10.0  # the probe checks the broker every 5 s, 5 s per check
    assert set(probes.ready(stopped_at + unready_after, restarted_at)) == {503}
    assert set(probes.healthy(stopped_at, restarted_at + ready_after)) == {200}
    assert ready_after <= READY_AFTER
    report(
        "broker_outage",
        outage_s=OUTAGE,
        readyz_503_after_s=round(unready_after, 2),
        readyz_200_after_restart_s=round(ready_after, 2),
        fresh_events_counted_after_restart_s=round(counted_after, 2),
        counted_before=counted_before,
        fresh=FRESH,
    )


async def stream_then_stop_broker(broker: EmbeddedBroker, worker: Worker) -> tuple[float, int]:
    """Stream at 500/s until the worker has counted 1000, then stop the broker under the
    stream; returns when it stopped and how many events were handed to the producer."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=2)
    await producer.start()
    stats, stop = Produced(), asyncio.Event()
    streaming = asyncio.create_task(
        produce(producer, "sessions", count=None, rate=500, seed=71, stop=stop, stats=stats)
    )
    await until(worker.ready, 60, "worker ready")

    async def counted_a_while() -> bool:
        return await worker.counted() >= 1000

    await until(counted_a_while, 60, "worker counts the stream")
    await asyncio.to_thread(broker.stop)  # Tansu can take seconds to exit
    stopped_at = time.monotonic()
    stop.set()
    streaming.cancel()
    # The producer's sends die with the broker; it only has to let go.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await streaming
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 5)
    return stopped_at, stats.events


async def send(bootstrap: str, count: int, seed: int) -> None:
    """Produce `count` events; a broker just restarted may refuse the first sends
    (UnknownError from Tansu), so try again: the worker counts a repeat once."""
    for attempt in range(3):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        try:
            await produce(producer, "sessions", count=count, rate=None, seed=seed)
            return
        except KafkaError:
            if attempt == 2:
                raise
            await asyncio.sleep(1.0)
        finally:
            await producer.stop()
