"""Crash: `kill -9` the worker at random moments during a stream; nothing is lost, and each
crash recounts at most the one batch it had applied but not committed.

How a SIGKILLed process is observed (see tests/faults.py):
- `n`, what it counted, exactly: its counters live in prometheus-client multiprocess files,
  which outlive it.
- Its business series at a scrape taken right before the kill: lower bounds.
- Committed offsets, read from Kafka after the kill: where the next incarnation starts.
The uncommitted work of a crash is `n - progress`, progress being how far it moved the
committed offsets: exact. Per partition, the scrape says how far the process had read each
one (its series summed over the workspaces keyed to that partition); `slack`, what it counted
after that scrape, bounds the rest. Nothing is lost where no commit passes what was read.
"""

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.produce import produce
from tests.conftest import TopicFactory
from tests.corpus import corpus, expected_totals
from tests.faults import (
    BATCH_COMMITS,
    FAST_GROUP,
    Exact,
    Scrape,
    SeriesKey,
    Stream,
    Worker,
    add,
    broker_behind_proxy,
    committed,
    report,
    rounds,
    until,
    workers,
)
from tests.tcp_proxy import OFFSET_COMMIT, WORKER_CLIENT_ID, client

pytestmark = pytest.mark.broker

EVENTS = 50_000
PARTITIONS = 3
MAX_BATCH = 100
ROUNDS = rounds(ci=3, full=10)
SECONDS_PER_ROUND = 12.0
"""Stream pacing: a restart after a kill takes ~8 s, so the stream outlasts every kill. The
backlog that builds up meanwhile is what a restarted worker chews through when it is killed."""
OBSERVED = ("session_consumer_messages_total", "llm_sessions_total")


@dataclass
class Crash:
    worker: Worker
    delay: float
    synced: bool
    scrape: Scrape
    exact: Exact
    before: dict[int, int]
    after: dict[int, int]

    @property
    def progress(self) -> int:
        return sum(self.after[p] - self.before[p] for p in self.after)

    @property
    def recounted(self) -> int:
        """Counted by this process but not committed: the next one reads it again."""
        return self.exact.counted - self.progress

    @property
    def slack(self) -> int:
        """Counted after the last scrape, in the instant before the kill."""
        return self.exact.counted - self.scrape.counted

    def __repr__(self) -> str:
        return (
            f"Crash({self.worker.name}: counted {self.exact.counted}, scraped "
            f"{self.scrape.counted}, committed {self.before} -> {self.after})"
        )


async def test_kill_9_at_random_moments_loses_nothing_and_recounts_at_most_a_batch_per_crash(
    broker: EmbeddedBroker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=PARTITIONS)
    group = f"crash-{topic}"
    events = corpus(seed=51, count=EVENTS)
    stream = Stream(producer, topic, events, rate=EVENTS / (ROUNDS * SECONDS_PER_ROUND))
    streaming = asyncio.create_task(stream.run())
    args = ("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", group)
    crashes: list[Crash] = []
    async with workers(
        tmp_path, *args, "--max-batch-records", str(MAX_BATCH), *FAST_GROUP, *BATCH_COMMITS
    ) as ws:
        before = dict.fromkeys(range(PARTITIONS), 0)
        for n in range(ROUNDS):
            worker = await ws.start()
            crash = await crash_once(
                worker, before, broker.bootstrap, group, topic, synced=n % 2 == 0
            )
            assert not streaming.done(), "the stream ended before this kill: pace it slower"
            crashes.append(crash)
            before = crash.after
        stream.hurry.set()
        await streaming
        last = await ws.start()
        final = sum(stream.highwater.values()) - sum(before.values())
        final_series = await catch_up(last, final)
        assert await committed(broker.bootstrap, group, topic, PARTITIONS) == stream.highwater

    for crash in crashes:
        check_crash(crash, stream)
    lower_bounds: dict[SeriesKey, float] = {}
    for crash in crashes:
        add(lower_bounds, crash.scrape.series("llm_sessions_total"))
    add(lower_bounds, final_series)
    want = expected_totals(events)
    # Where the scrapes saw fewer sessions than were sent, the difference must be what the
    # processes counted after their last scrape (0 when every scrape was exact).
    unseen = sum(max(0.0, t.sessions - lower_bounds.get(k, 0.0)) for k, t in want.items())
    assert unseen <= sum(c.slack for c in crashes)
    recounts = [c.recounted for c in crashes]
    report(
        "crash",
        events=EVENTS,
        crashes=len(crashes),
        max_batch_records=MAX_BATCH,
        kill_delays_s=[round(c.delay, 2) for c in crashes],
        counted_per_crash=[c.exact.counted for c in crashes],
        recounted_per_crash=recounts,
        recounted_total=sum(recounts),
        recounted_max=max(recounts),
        kill_after_scrape=[c.synced for c in crashes],
        slack_per_crash=[c.slack for c in crashes],
        exact_scrapes=sum(c.slack == 0 for c in crashes),
        sessions_unseen_by_scrapes=unseen,
        final_counted=final,
        counted_total=sum(c.exact.counted for c in crashes) + final,
    )


async def crash_once(
    worker: Worker, before: dict[int, int], bootstrap: str, group: str, topic: str, *, synced: bool
) -> Crash:
    """Kill `worker` a random 0-0.3 s after it starts counting, mostly while it works
    through the backlog of its restart.

    `synced`: right after a scrape, so the scrape is (nearly always) exact. The worker answers
    scrapes between batches, so such a kill seldom finds a batch applied but not committed;
    the other rounds kill at an instant of their own while scrapes poll every 50 ms.
    """

    async def counting() -> bool:
        scrape = await worker.scrape(*OBSERVED)
        return scrape is not None and scrape.counted > 0

    await until(counting, 60, f"{worker.name} counts", every=0.01)
    delay = random.uniform(0.0, 0.3)
    if synced:
        await asyncio.sleep(delay)
        scrape = worker.scrape_then_kill(*OBSERVED)
    else:
        polling = asyncio.create_task(poll(worker))
        await asyncio.sleep(delay)
        worker.kill()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        assert worker.last_scrape is not None
        scrape = worker.last_scrape
    code, _ = await worker.wait()
    assert code == -9
    await asyncio.sleep(0.3)  # a commit the process sent just before it died still lands
    after = await committed(bootstrap, group, topic, len(before))
    return Crash(worker, delay, synced, scrape, worker.exact(), before, after)


async def poll(worker: Worker) -> None:
    while True:
        await worker.scrape(*OBSERVED)
        await asyncio.sleep(0.05)


async def catch_up(worker: Worker, remaining: int) -> dict[SeriesKey, float]:
    """Let the last incarnation read to the end, exactly `remaining`; SIGTERM; its series."""

    async def done() -> bool:
        return await worker.counted() == remaining

    await until(done, 60, f"{worker.name} counts the rest")
    await asyncio.sleep(0.5)
    scrape = await worker.scrape()
    assert scrape is not None
    assert scrape.counted == remaining, "counted more than what was left after the last commit"
    worker.terminate()
    code, _ = await worker.wait()
    assert code == 0, worker.tail()
    assert worker.logged("consumer stopped")[-1]["counted"] == remaining
    return scrape.series("llm_sessions_total")


def check_crash(crash: Crash, stream: Stream) -> None:
    """No commit moved backwards or past what the process had read; the uncommitted rest
    is at most one batch; the scrape before the kill is a lower bound of the exact count."""
    assert crash.exact.duplicate == 0
    assert crash.slack >= 0
    assert 0 <= crash.recounted <= MAX_BATCH, crash
    read = stream.per_partition(crash.scrape.series("llm_sessions_total"))
    for p, offset in crash.after.items():
        assert offset >= crash.before[p]
        assert offset - crash.before[p] <= read.get(p, 0.0) + crash.slack, (p, crash)


async def test_a_crash_with_its_commit_in_flight_recounts_exactly_that_one_batch(
    tmp_path: Path,
) -> None:
    """The worst moment for a crash, made on purpose: the batch is applied and its commit
    never reaches the broker (held in the proxy, then dropped with the dead connection)."""
    async with broker_behind_proxy() as (_, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        await create_topics(bootstrap, {"sessions": 2})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        args = ("--bootstrap-servers", bootstrap, "--topic", "sessions", "--group-id", "g")
        try:
            async with workers(
                tmp_path, *args, "--max-batch-records", str(MAX_BATCH), *FAST_GROUP, *BATCH_COMMITS
            ) as ws:
                await produce(producer, "sessions", count=1000, rate=None, seed=52)
                first = await ws.start()
                await until(lambda: counts(first, 1000), 60, "first worker counts 1000")
                worker = client(WORKER_CLIENT_ID)
                proxy.hold({OFFSET_COMMIT}, worker)
                await produce(producer, "sessions", count=1300, rate=None, seed=52, skip=1000)

                async def stuck() -> bool:
                    return proxy.held(worker) > 0 and not await counts(first, 1000)

                await until(stuck, 30, "a batch applied with its commit held")
                await asyncio.sleep(0.3)  # no further batch while its commit hangs
                scraped = first.scrape_then_kill(*OBSERVED).counted
                assert (await first.wait())[0] == -9
                proxy.reset(worker)  # the held commit dies with the connection
                proxy.release()
                in_flight = first.exact().counted - 1000
                assert scraped == first.exact().counted
                assert sum((await committed(bootstrap, "g", "sessions", 2)).values()) == 1000

                second = await ws.start()
                await until(lambda: counts(second, 300), 60, "second worker counts the rest")
                second.terminate()
                assert (await second.wait())[0] == 0
        finally:
            await producer.stop()
    assert 1 <= in_flight <= MAX_BATCH
    report("crash_commit_in_flight", batch_recounted=in_flight, max_batch_records=MAX_BATCH)


async def counts(worker: Worker, n: int) -> bool:
    scrape = await worker.scrape(*OBSERVED)
    return scrape is not None and scrape.counted == n
