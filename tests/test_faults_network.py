"""Network faults between the worker and the broker: a TCP proxy resets the worker's
connections, stalls them past the group session timeout, and stalls then resets them,
while the test's own producer streams through the same proxy untouched. No crash, no loss:
the worker process counts every session exactly once (what it reads again after a failed
commit is dropped by its dedup window), and a SIGTERM while its commit hangs still exits 0
within the drain timeout plus the bounded close."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.broker import create_topics
from consumer.produce import produce
from consumer.worker import CLOSE_TIMEOUT
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
from tests.tcp_proxy import OFFSET_COMMIT, WORKER_CLIENT_ID, TcpProxy, client

pytestmark = pytest.mark.broker

CYCLES = rounds(ci=1, full=3)
EVENTS = 10_000 * CYCLES
PARTITIONS = 3
DRAIN_TIMEOUT = 3.0
WORKER = client(WORKER_CLIENT_ID)


@dataclass
class Fault:
    name: str
    apply: Callable[[TcpProxy], Awaitable[None]]


async def reset(proxy: TcpProxy) -> None:
    assert proxy.reset(WORKER) > 0


async def stall(proxy: TcpProxy) -> None:
    # Longer than --session-timeout-ms 3000; Tansu only drops a silent member when another
    # one joins (the next fault), so this one delays everything and loses nothing.
    proxy.stall(WORKER)
    await asyncio.sleep(4.0)
    proxy.resume()


async def stall_then_reset(proxy: TcpProxy) -> None:
    # A black hole: nothing sent during the stall ever arrives.
    proxy.stall(WORKER)
    await asyncio.sleep(3.0)
    assert proxy.reset(WORKER) > 0
    proxy.resume()


async def rebalance_during_stall(proxy: TcpProxy) -> None:
    """While the worker is cut off, another member joins (the group drops the worker and
    hands it every partition) and leaves without committing. The worker's commit that was in
    flight then fails, and it reads again from the last commit that landed."""
    proxy.stall(WORKER)
    intruder = AIOKafkaConsumer(
        "sessions",
        bootstrap_servers=f"127.0.0.1:{proxy.port}",
        group_id="g",
        client_id="intruder",
        enable_auto_commit=False,
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
    )
    await intruder.start()
    try:
        await until(lambda: has_all_partitions(intruder), 60, "intruder takes the partitions")
    finally:
        await intruder.stop()
        proxy.resume()


async def has_all_partitions(consumer: AIOKafkaConsumer) -> bool:
    await consumer.getmany(timeout_ms=100, max_records=1)  # drives the join
    return len(consumer.assignment()) == PARTITIONS


FAULTS = [
    Fault("reset", reset),
    Fault("stall_4s", stall),
    Fault("stall_3s_then_reset", stall_then_reset),
    Fault("rebalance_during_stall", rebalance_during_stall),
]


async def test_resets_and_stalls_crash_nothing_and_lose_nothing(tmp_path: Path) -> None:
    events = corpus(seed=81, count=EVENTS)
    async with broker_behind_proxy() as (_, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        await create_topics(bootstrap, {"sessions": PARTITIONS})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        args = ("--bootstrap-servers", bootstrap, "--topic", "sessions", "--group-id", "g")
        try:
            async with workers(
                tmp_path,
                *args,
                *("--drain-timeout", str(DRAIN_TIMEOUT), *FAST_GROUP, *BATCH_COMMITS),
                # The bound on trial is the drain's and the close steps'; the test polls
                # full /metrics, so it is a scraper a stop would otherwise wait for too.
                *("--handover-timeout", "0"),
            ) as ws:
                worker = await ws.start()
                stream = Stream(producer, "sessions", events, rate=EVENTS / (CYCLES * 30.0))
                streaming = asyncio.create_task(stream.run())
                recovery = await inflict_faults(worker, proxy)
                assert not streaming.done(), "the stream ended before the faults did"
                stream.hurry.set()
                await streaming
                await until(lambda: counts(worker, EVENTS), 60, "every event counted")
                await asyncio.sleep(1.0)  # nothing more arrives
                final = await worker.scrape()
                assert final is not None
                offsets = await committed(bootstrap, "g", "sessions", PARTITIONS)
                stop_seconds, uncommitted = await sigterm_with_its_commit_stalled(
                    worker, proxy, producer
                )
                assert await committed(bootstrap, "g", "sessions", PARTITIONS) == offsets
        finally:
            await producer.stop()

    assert final.counted == EVENTS
    assert offsets == stream.highwater
    want = expected_totals(events)
    assert final.series("llm_sessions_total") == {k: float(t.sessions) for k, t in want.items()}
    cost = final.series("llm_session_cost_total")
    assert all(math.isclose(cost[k], t.cost, rel_tol=1e-9) for k, t in want.items())
    report(
        "network_faults",
        events=EVENTS,
        faults=[f.name for f in FAULTS] * CYCLES,
        recovery_s=[round(s, 2) for s in recovery],
        connections_reset=proxy.resets,
        read_again_and_dropped=int(
            final.value("session_consumer_messages_total", outcome="duplicate")
        ),
        commit_failures=int(final.value("session_consumer_commit_failures_total")),
        rebalances=int(final.value("session_consumer_rebalances_total")),
        sigterm_with_commit_stalled_exit_s=round(stop_seconds, 2),
        sigterm_with_commit_stalled_uncommitted=uncommitted,
    )


async def inflict_faults(worker: Worker, proxy: TcpProxy) -> list[float]:
    """Each fault once per cycle, while the stream runs; the seconds until counting resumed."""
    await until(lambda: counts(worker, 1, at_least=True), 60, "worker counts")
    recovery = []
    for _ in range(CYCLES):
        for fault in FAULTS:
            await asyncio.sleep(1.0)
            await fault.apply(proxy)
            ended, before = time.monotonic(), await worker.counted()
            assert worker.alive, f"worker died at {fault.name}"
            await until(partial(counts, worker, before + 1, at_least=True), 60, fault.name)
            recovery.append(time.monotonic() - ended)
    return recovery


async def sigterm_with_its_commit_stalled(
    worker: Worker, proxy: TcpProxy, producer: AIOKafkaProducer
) -> tuple[float, int]:
    """SIGTERM while the worker's commit hangs in the network: the drain timeout cuts the
    batch off, the final commit and the clients' stops give up after CLOSE_TIMEOUT each
    (aiokafka alone would wait out its 40 s request timeout), and it exits 0. The batch it
    had applied stays uncommitted: the next worker counts it again. Returns the exit time
    and that batch's size."""
    proxy.hold({OFFSET_COMMIT}, WORKER)
    await produce(producer, "sessions", count=100, rate=None, seed=82)

    async def stuck() -> bool:
        return proxy.held(WORKER) > 0 and await counts(worker, EVENTS + 1, at_least=True)

    await until(stuck, 30, "a batch applied with its commit held")
    worker.terminate()
    code, seconds = await worker.wait(60)
    proxy.reset(WORKER)  # the held commit dies with the connection
    proxy.release()
    assert code == 0, worker.tail()
    assert worker.logged("shutdown step timed out")
    assert seconds < DRAIN_TIMEOUT + 3 * CLOSE_TIMEOUT + 1.0
    return seconds, worker.logged("consumer stopped")[-1]["counted"] - EVENTS


async def counts(worker: Worker, n: int, at_least: bool = False) -> bool:
    scrape = await worker.scrape("session_consumer_messages_total")
    if scrape is None:
        return False
    return scrape.counted >= n if at_least else scrape.counted == n
