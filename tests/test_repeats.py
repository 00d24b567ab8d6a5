"""Repeats against the real broker: the log window follows the partition's log, not the
process. A new worker reads it back before counting, so a session sent again with the same
key counts once after a restart, whoever reads the partition."""

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.claims import MemoryClaims, PartitionClaims, StoreUnavailable
from consumer.synthetic import encode
from schemas import CreateSessionResponseBody
from tests.conftest import Broker, Running, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus
from tests.faults import FULL
from tests.redisserver import RedisServer

pytestmark = pytest.mark.broker

FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture
def broker(any_broker: Broker) -> Broker:
    """Read-back goes through the broker's fetch path: on Tansu and on Apache Kafka."""
    return any_broker


async def send_keyed_by_session(
    producer: AIOKafkaProducer, topic: str, events: list[CreateSessionResponseBody]
) -> None:
    futures = [await producer.send(topic, encode(e), key=e.id.encode("utf-8")) for e in events]
    for f in futures:
        await f


def sessions(scrape: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in scrape.splitlines()
        if line.startswith("llm_sessions_total{")
    )


# Without the window the new process counts them again: what the window is for, shown in
# the full run (CI is at its budget; the window's own variant fails if the window goes).
@pytest.mark.parametrize(
    "window", [20_000, 0] if FULL else [20_000], ids=["window", "no-window"][: 2 if FULL else 1]
)
async def test_a_session_sent_again_after_a_restart_counts_once(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    window: int,
) -> None:
    topic = await new_topic(partitions=3)
    settings = settings_for(broker.bootstrap, topic, dedup_window=window, **FAST_GROUP)
    events = corpus(seed=61, count=600)
    await send_keyed_by_session(producer, topic, events)
    first = await start_worker(settings)
    await eventually(lambda: first.counted() == 600)
    assert sessions(await first.scrape()) == 600  # served: committed after this
    await first.stop()

    # An upstream retry: 60 of the sessions again, same key, same bytes.
    await send_keyed_by_session(producer, topic, events[100:160])
    second = await start_worker(settings)
    registry = second.worker.metrics.registry

    await eventually(lambda: read_outcomes(second) == 60, within=60)
    scraped = sessions(await second.scrape())
    if window:
        assert scraped == 0  # every record was a repeat of one before it in its partition
        assert registry.get_sample_value("session_consumer_dedup_restored_records_total") == 600
    else:
        assert scraped == 60  # without the window the new process counts them again


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.mark.redis
async def test_with_the_store_a_repeat_under_another_key_on_another_worker_counts_once(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    redis: RedisServer,
) -> None:
    topic = await new_topic(partitions=4)
    settings = settings_for(broker.bootstrap, topic, dedup_store=redis.url, **FAST_GROUP)
    a = await start_worker(settings)
    b = await start_worker(settings)
    await eventually(a.is_ready, within=60)
    await eventually(b.is_ready, within=60)
    events = corpus(seed=62, count=400)
    await send_keyed_by_session(producer, topic, events)
    # The same sessions under other keys: most land on another partition.
    futures = [await producer.send(topic, encode(e), key=f"x{e.id}".encode()) for e in events]
    for f in futures:
        await f

    def handled() -> bool:
        return sum(read_outcomes(w) for w in (a, b)) == 800

    await eventually(handled, within=60)
    assert sessions(await a.scrape()) + sessions(await b.scrape()) == 400


@pytest.mark.redis
async def test_while_the_store_is_down_nothing_is_counted_and_counting_resumes_exactly(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    topic = await new_topic(partitions=2)
    with RedisServer(tmp_path, aof=True) as redis:
        settings = settings_for(
            broker.bootstrap, topic, dedup_store=redis.url, dedup_store_timeout=1, **FAST_GROUP
        )
        worker = await start_worker(settings)
        events = corpus(seed=63, count=300)
        await send_keyed_by_session(producer, topic, events[:100])
        await eventually(lambda: read_outcomes(worker) == 100, within=60)
        redis.stop()
        await send_keyed_by_session(producer, topic, events[100:])
        await eventually(lambda: not_ready(worker), within=30)
        assert read_outcomes(worker) == 100
        assert (
            worker.worker.metrics.registry.get_sample_value("session_consumer_dedup_store_up") == 0
        )
        redis.restart(keep_data=True)
        await eventually(lambda: read_outcomes(worker) == 300, within=60)
        assert sessions(await worker.scrape()) == 300
        assert await worker.is_ready()


def read_outcomes(run: Running) -> float:
    registry = run.worker.metrics.registry
    return sum(
        registry.get_sample_value("session_consumer_messages_total", {"outcome": o}) or 0.0
        for o in ("counted", "duplicate")
    )


async def not_ready(run: Running) -> bool:
    return not await run.is_ready()


class GatedClaims(MemoryClaims):
    """The claim rule in memory, its answers held at a gate the test opens, reachable or
    not as the test says: so the test knows which batches are out at a failure."""

    def __init__(self) -> None:
        super().__init__(ttl=3600)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.down = False

    async def claim(self, batch: Sequence[PartitionClaims]) -> list[list[bool]]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.down:
            raise StoreUnavailable("test: the store is down")
        return await super().claim(batch)

    async def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("test: the store is down")


# The worker's own pipelining, whatever the broker: Tansu in CI, both in the full run.
@pytest.mark.parametrize(
    "any_broker",
    ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)] if FULL else ["tansu"],
    indirect=True,
)
async def test_a_store_failure_sends_back_the_batch_out_and_the_one_started_after_it(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    """A batch's claims are out while the next batch is fetched and judged; the store
    fails the first: neither counts, and both are read again once it answers."""
    topic = await new_topic(partitions=2)
    worker = await start_worker(settings_for(broker.bootstrap, topic, **FAST_GROUP))
    store = GatedClaims()
    worker.worker.repeats.store = store
    await eventually(worker.is_ready, within=60)
    events = corpus(seed=64, count=20)
    store.gate.clear()
    for partition, part in ((0, events[:10]), (1, events[10:])):
        futures = [await producer.send(topic, encode(e), partition=partition) for e in part]
        for f in futures:
            await f
        # One batch's claims out, then two: the second batch started behind the first.
        out = partition + 1
        await eventually(lambda: store.waiting == out, within=30)  # noqa: B023
    store.down = True
    store.gate.set()
    await eventually(lambda: not_ready(worker), within=30)
    assert read_outcomes(worker) == 0
    store.down = False
    await eventually(lambda: read_outcomes(worker) == 20, within=60)
    assert sessions(await worker.scrape()) == 20
