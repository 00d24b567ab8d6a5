"""Rebalance: three worker processes share a topic's six partitions; one of them leaves
mid-stream. The other two take over its partitions. Stopped with SIGTERM, the three
together count every session exactly once; killed with SIGKILL, at least once, with at
most the killed worker's one uncommitted batch counted twice."""

import asyncio
import math
import random
import time
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker
from tests.conftest import TopicFactory
from tests.corpus import corpus, expected_totals
from tests.faults import (
    BATCH_COMMITS,
    FAST_GROUP,
    SeriesKey,
    Stream,
    Worker,
    Workers,
    add,
    committed,
    report,
    until,
    workers,
)

pytestmark = pytest.mark.broker

EVENTS = 20_000
PARTITIONS = 6
MAX_BATCH = 100
OBSERVED = ("session_consumer_messages_total", "session_consumer_assigned_partitions")


async def assigned(worker: Worker) -> int:
    scrape = await worker.scrape(*OBSERVED)
    return int(scrape.value("session_consumer_assigned_partitions")) if scrape else -1


async def split(group: list[Worker], each: int) -> bool:
    return all([await assigned(w) == each for w in group])


async def counted_total(group: list[Worker], want: int, at_least: bool = False) -> bool:
    total = sum([await w.counted() for w in group])
    return total >= want if at_least else total == want


async def three_workers_mid_stream(
    ws: Workers, stream: Stream
) -> tuple[list[Worker], "asyncio.Task[None]"]:
    """Three workers with two partitions each, the stream running."""
    group = [await ws.start() for _ in range(3)]
    streaming = asyncio.create_task(stream.run())
    await until(partial(split, group, 2), 60, "three workers with two partitions each")

    async def all_counting() -> bool:
        return all([await w.counted() > 0 for w in group])

    await until(all_counting, 30, "each worker counts")
    await asyncio.sleep(random.uniform(0.0, 1.0))
    return group, streaming


async def take_over(survivors: list[Worker]) -> None:
    await until(partial(split, survivors, 3), 60, "survivors take over")


async def test_one_of_three_leaves_with_sigterm_and_the_group_counts_each_session_once(
    broker: EmbeddedBroker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=PARTITIONS)
    events = corpus(seed=91, count=EVENTS)
    stream = Stream(producer, topic, events, rate=1500)
    args = ("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", topic)
    async with workers(
        tmp_path, *args, "--max-batch-records", str(MAX_BATCH), *FAST_GROUP, *BATCH_COMMITS
    ) as ws:
        (leaver, *survivors), streaming = await three_workers_mid_stream(ws, stream)
        leaver.terminate()
        assert (await leaver.wait())[0] == 0
        await take_over(survivors)
        assert leaver.signalled_at is not None
        takeover = time.monotonic() - leaver.signalled_at
        stream.hurry.set()
        await streaming
        rest = EVENTS - leaver.logged("consumer stopped")[-1]["counted"]
        await until(partial(counted_total, survivors, rest), 60, "survivors count the rest")
        for worker in survivors:
            worker.terminate()
            assert (await worker.wait())[0] == 0
        offsets = await committed(broker.bootstrap, topic, topic, PARTITIONS)

    stopped = [w.logged("consumer stopped")[-1] for w in (leaver, *survivors)]
    assert sum(s["counted"] for s in stopped) == EVENTS
    assert all(s["duplicate"] == 0 and s["counted"] > 0 for s in stopped)
    want = sum(t.cost for t in expected_totals(events).values())
    assert math.isclose(sum(s["cost"] for s in stopped), want, rel_tol=1e-9)
    assert offsets == stream.highwater
    report(
        "rebalance_sigterm",
        events=EVENTS,
        counted_per_worker=[s["counted"] for s in stopped],
        takeover_s=round(takeover, 2),
    )


async def test_one_of_three_killed_the_others_take_over_and_nothing_is_lost(
    broker: EmbeddedBroker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=PARTITIONS)
    events = corpus(seed=92, count=EVENTS)
    stream = Stream(producer, topic, events, rate=1500)
    args = ("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", topic)
    async with workers(
        tmp_path, *args, "--max-batch-records", str(MAX_BATCH), *FAST_GROUP, *BATCH_COMMITS
    ) as ws:
        (victim, *survivors), streaming = await three_workers_mid_stream(ws, stream)
        last_seen = victim.scrape_then_kill("session_consumer_messages_total", "llm_sessions_total")
        killed_at = time.monotonic()
        assert (await victim.wait())[0] == -9
        await take_over(survivors)
        takeover = time.monotonic() - killed_at
        stream.hurry.set()
        await streaming
        exact = victim.exact()
        # The rest, and again the victim's last batch if it was applied but not committed.
        rest = partial(counted_total, survivors, EVENTS - exact.counted, at_least=True)
        await until(rest, 60, "survivors count the rest")
        await asyncio.sleep(1.0)
        finals = [await w.scrape() for w in survivors]
        for worker in survivors:
            worker.terminate()
            assert (await worker.wait())[0] == 0
        offsets = await committed(broker.bootstrap, topic, topic, PARTITIONS)

    assert all(f is not None for f in finals)
    survivors_counted = [f.counted for f in finals if f is not None]
    recounted = exact.counted + sum(survivors_counted) - EVENTS
    assert 0 <= recounted <= MAX_BATCH
    assert offsets == stream.highwater
    slack = exact.counted - last_seen.counted
    lower_bounds: dict[SeriesKey, float] = {}
    add(lower_bounds, last_seen.series("llm_sessions_total"))
    for final in finals:
        assert final is not None
        add(lower_bounds, final.series("llm_sessions_total"))
    want = expected_totals(events)
    unseen = sum(max(0.0, t.sessions - lower_bounds.get(k, 0.0)) for k, t in want.items())
    assert unseen <= slack
    report(
        "rebalance_kill",
        events=EVENTS,
        killed_counted=exact.counted,
        survivors_counted=survivors_counted,
        recounted=recounted,
        takeover_s=round(takeover, 2),
        slack=slack,
    )
