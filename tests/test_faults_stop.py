"""Graceful stop: SIGTERM during a stream exits 0 within the drain timeout, with every
session counted exactly once; a batch the drain timeout cuts off is never committed."""

import asyncio
import math
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.produce import produce
from consumer.synthetic import BAD_VALUES
from consumer.worker import CLOSE_TIMEOUT
from tests.conftest import TopicFactory
from tests.corpus import corpus, expected_totals
from tests.faults import (
    BATCH_COMMITS,
    FAST_GROUP,
    Stream,
    Worker,
    broker_behind_proxy,
    committed,
    report,
    rounds,
    until,
    workers,
)
from tests.tcp_proxy import PRODUCE, WORKER_CLIENT_ID, client

pytestmark = pytest.mark.broker

EVENTS = 20_000
PARTITIONS = 3
ROUNDS = rounds(ci=3, full=10)
DRAIN_TIMEOUT = 5.0
OBSERVED = ("session_consumer_messages_total",)


async def test_sigterm_during_a_stream_exits_0_in_time_and_counts_each_session_once(
    broker: EmbeddedBroker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=PARTITIONS)
    events = corpus(seed=61, count=EVENTS)
    stream = Stream(producer, topic, events, rate=EVENTS / (ROUNDS * 6.0))
    streaming = asyncio.create_task(stream.run())
    offsets = Offsets(broker.bootstrap, f"stop-{topic}", topic)
    args = ("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", offsets.group)
    stops: list[Stopped] = []
    async with workers(
        tmp_path, *args, "--drain-timeout", str(DRAIN_TIMEOUT), "--max-batch-records", "100"
    ) as ws:
        for _ in range(ROUNDS):
            worker = await ws.start(*FAST_GROUP, *BATCH_COMMITS)
            await until(partial(counting, worker), 60, f"{worker.name} counts")
            await asyncio.sleep(random.uniform(0.0, 0.5))
            assert not streaming.done(), "the stream ended before this SIGTERM"
            stops.append(await stop(worker, offsets))
        stream.hurry.set()
        await streaming
        worker = await ws.start(*FAST_GROUP, *BATCH_COMMITS)
        rest = EVENTS - sum(offsets.last.values())
        await until(partial(counting, worker, rest), 60, "the rest counted")
        stops.append(await stop(worker, offsets))
    assert offsets.last == stream.highwater
    assert sum(s.counted for s in stops) == EVENTS
    want = sum(t.cost for t in expected_totals(events).values())
    assert math.isclose(sum(s.cost for s in stops), want, rel_tol=1e-9)
    exit_seconds = [s.seconds for s in stops]
    assert max(exit_seconds) < DRAIN_TIMEOUT
    report(
        "sigterm",
        events=EVENTS,
        sigterms=len(stops),
        counted_per_process=[s.counted for s in stops],
        counted_total=sum(s.counted for s in stops),
        exit_seconds_max=round(max(exit_seconds), 2),
        exit_seconds=[round(s, 2) for s in exit_seconds],
        drain_timeout=DRAIN_TIMEOUT,
    )


@dataclass
class Offsets:
    """The group's committed offsets, as of the last read."""

    bootstrap: str
    group: str
    topic: str
    last: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(PARTITIONS), 0))

    async def progress(self) -> int:
        """Records committed since the last read."""
        before, self.last = (
            self.last,
            await committed(self.bootstrap, self.group, self.topic, PARTITIONS),
        )
        assert all(self.last[p] >= before[p] for p in before)
        return sum(self.last.values()) - sum(before.values())


@dataclass(frozen=True)
class Stopped:
    counted: int
    cost: float
    seconds: float


async def stop(worker: Worker, offsets: Offsets) -> Stopped:
    """SIGTERM; exit 0; everything it counted is committed (and nothing more), so the next
    worker re-reads none of it."""
    worker.terminate()
    code, seconds = await worker.wait()
    assert code == 0, worker.tail()
    stopped = worker.logged("consumer stopped")[-1]
    assert stopped["counted"] == await offsets.progress()
    assert stopped["counted"] == worker.exact().counted
    assert stopped["duplicate"] == 0
    return Stopped(stopped["counted"], stopped["cost"], seconds)


async def counting(worker: Worker, at_least: int = 1) -> bool:
    scrape = await worker.scrape(*OBSERVED)
    return scrape is not None and scrape.counted >= at_least


async def test_a_batch_cut_off_by_the_drain_timeout_is_not_committed_and_is_redelivered(
    tmp_path: Path,
) -> None:
    """The batch is stuck sending its invalid record to the dead-letter topic (the proxy
    holds the worker's produce requests) when SIGTERM comes: the drain timeout abandons it."""
    drain = 2.0
    async with broker_behind_proxy() as (_, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        await create_topics(bootstrap, {"sessions": 1, "dlq": 1})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        args = ("--bootstrap-servers", bootstrap, "--topic", "sessions", "--group-id", "g")
        try:
            async with workers(
                tmp_path,
                *args,
                "--dlq-topic",
                "dlq",
                "--drain-timeout",
                str(drain),
                *FAST_GROUP,
                *BATCH_COMMITS,
            ) as ws:
                await produce(producer, "sessions", count=1000, rate=None, seed=62)
                first = await ws.start()
                await until(partial(counting, first, 1000), 60, "first worker counts 1000")
                proxy.hold({PRODUCE}, client(WORKER_CLIENT_ID))
                invalid = await (await producer.send("sessions", BAD_VALUES[0]))
                await produce(producer, "sessions", count=1200, rate=None, seed=62, skip=1000)

                async def stuck() -> bool:
                    return proxy.held(client(WORKER_CLIENT_ID)) > 0

                await until(stuck, 30, "the dead-letter send is held")
                first.terminate()
                code, seconds = await first.wait()
                assert code == 0, first.tail()
                assert first.logged(
                    "drain timeout: in-flight batch abandoned, it will be redelivered"
                )
                cut_off = await committed(bootstrap, "g", "sessions", 1)
                counted_first = first.logged("consumer stopped")[-1]["counted"]
                proxy.release()

                second = await ws.start()
                rest = 1200 - counted_first
                await until(partial(counting, second, rest), 60, "the cut-off batch is redelivered")
                second.terminate()
                assert (await second.wait())[0] == 0
                stopped = second.logged("consumer stopped")[-1]
                dead_letters = await read_all(bootstrap, "dlq")
        finally:
            await producer.stop()
    # Not committed: the commit stops before the stuck batch, whose first record may be the
    # invalid one or a valid one before it; the first worker counted only what it committed.
    assert cut_off[0] <= invalid.offset
    assert counted_first == cut_off[0]
    # Redelivered: the next worker counts the rest exactly and dead-letters the invalid record.
    assert stopped["counted"] == 1200 - counted_first
    assert stopped["invalid"] == 1
    assert str(invalid.offset).encode() in [
        dict(r.headers)["dlq-source-offset"] for r in dead_letters
    ]
    # The drain, then the dead-letter producer's stop gives up after CLOSE_TIMEOUT.
    assert seconds < drain + CLOSE_TIMEOUT + 1.5
    report(
        "drain_cut_off",
        drain_timeout=drain,
        exit_seconds=round(seconds, 2),
        committed_before_cut=cut_off[0],
        invalid_offset=invalid.offset,
        redelivered_and_counted=stopped["counted"],
    )


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        batch = await reader.getmany(timeout_ms=3000)
        return [r for records in batch.values() for r in records]
    finally:
        await reader.stop()
