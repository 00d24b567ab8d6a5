"""Each way offsets get committed, on its own: after a served scrape, on revoke, on stop.

Real worker, real broker. To see the revoke and stop commits alone, some tests switch
off the commit that follows each served scrape (the committer task idles), which is
what a commit still under way or failed at that moment looks like.
"""

import asyncio
import socket
import struct

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker
from consumer.produce import produce
from consumer.settings import Settings
from consumer.synthetic import encode
from consumer.worker import Worker
from tests.conftest import Running, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.faults import Scrape, committed

pytestmark = pytest.mark.broker

GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 1000}


@pytest.fixture
def no_commit_after_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    async def idle(self: Worker) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Worker, "_commit_when_served", idle)


async def peek(run: Running, name: str) -> Scrape:
    """A `name[]` request: shows the family, publishes and commits nothing."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(run.url + "/metrics", params={"name[]": name}) as response,
    ):
        assert response.status == 200
        return Scrape(await response.text())


def published_sessions(*runs: Running) -> dict[tuple[str, str], float]:
    total: dict[tuple[str, str], float] = {}
    for run in runs:
        for key, value in series_values(run.worker.metrics.registry)["llm_sessions_total"].items():
            total[key] = total.get(key, 0.0) + value
    return total


async def committed_total(
    broker: EmbeddedBroker, settings: Settings, topic: str, records: int
) -> bool:
    """Whether the group's committed offsets of the topic's 2 partitions add up to `records`."""
    offsets = await committed(broker.bootstrap, settings.group_id, topic, 2)
    return sum(offsets.values()) == records


def sessions_of(count: int, seed: int) -> dict[tuple[str, str], float]:
    return {k: float(t.sessions) for k, t in expected_totals(corpus(seed, count)).items()}


async def test_nothing_is_committed_until_a_scrape_is_served_and_pending_records_grow(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=500, rate=None, seed=3)
    settings = settings_for(broker.bootstrap, topic)
    run = await start_worker(settings)
    await eventually(lambda: run.counted() == 500)
    await asyncio.sleep(1.0)

    assert await committed(broker.bootstrap, settings.group_id, topic, 2) == {0: 0, 1: 0}
    assert (await peek(run, "session_consumer_pending_records")).value(
        "session_consumer_pending_records"
    ) == 500
    assert (await peek(run, "llm_sessions_total")).series("llm_sessions_total") == {}
    assert await committed(broker.bootstrap, settings.group_id, topic, 2) == {0: 0, 1: 0}

    text = await run.scrape()  # as Prometheus would: publishes, then commits
    assert sum(Scrape(text).series("llm_sessions_total").values()) == 500

    await eventually(lambda: committed_total(broker, settings, topic, 500))
    assert (await peek(run, "session_consumer_pending_records")).value(
        "session_consumer_pending_records"
    ) == 0


@pytest.mark.usefixtures("no_commit_after_scrape")
async def test_stop_commits_what_the_last_served_scrape_showed(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=300, rate=None, seed=4)
    settings = settings_for(broker.bootstrap, topic, **GROUP)
    run = await start_worker(settings)
    await eventually(lambda: run.counted() == 300)
    await run.scrape()
    await produce(producer, topic, count=400, rate=None, seed=4, skip=300)
    await eventually(lambda: run.counted() == 400)  # 100 more, never scraped
    assert await committed(broker.bootstrap, settings.group_id, topic, 2) == {0: 0, 1: 0}

    await run.stop()

    assert await committed_total(broker, settings, topic, 300)  # not the 100 after it


@pytest.mark.usefixtures("no_commit_after_scrape")
async def test_revoke_commits_served_positions_and_withdraws_the_rest_for_a_recount(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=300, rate=None, seed=5)
    settings = settings_for(broker.bootstrap, topic, **GROUP)
    first = await start_worker(settings)
    await eventually(lambda: first.counted() == 300)
    await first.scrape()  # served: 300 may be committed, but no commit follows here
    await produce(producer, topic, count=500, rate=None, seed=5, skip=300)
    await eventually(lambda: first.counted() == 500)  # 200 pending, never shown
    assert await committed(broker.bootstrap, settings.group_id, topic, 2) == {0: 0, 1: 0}

    second = await start_worker(settings)  # the rebalance revokes both partitions

    await eventually(lambda: committed_total(broker, settings, topic, 300))
    await eventually(lambda: first.counted() + second.counted() == 700)  # 200 recounted
    await first.scrape()
    await second.scrape()
    # Each withdrawn session counted again exactly once, whichever worker now owns its
    # partition: the first worker forgot the withdrawn ids in its dedup window.
    assert published_sessions(first, second) == sessions_of(500, seed=5)


async def test_a_rebalance_between_fetch_and_processing_drops_the_fetched_batch(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first worker's first batch is held in the gap after getmany() until a second
    worker's arrival has revoked its partitions; counting it would count partitions that
    the second worker reads from their committed offsets."""
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=1000, rate=None, seed=6)
    in_hand, armed = asyncio.Event(), [True]
    original = Worker._let_fetch_go_out

    async def held(self: Worker) -> None:
        if armed[0]:
            armed[0] = False
            generation = self.ledger.generation
            in_hand.set()
            await eventually(lambda: self.ledger.generation != generation)
        await original(self)

    monkeypatch.setattr(Worker, "_let_fetch_go_out", held)
    settings = settings_for(broker.bootstrap, topic, **GROUP, max_batch_records=100)
    first = await start_worker(settings)
    await asyncio.wait_for(in_hand.wait(), 30)
    second = await start_worker(settings)

    await eventually(lambda: first.counted() + second.counted() == 1000, within=60)
    await asyncio.sleep(1.0)
    await first.scrape()
    await second.scrape()
    assert published_sessions(first, second) == sessions_of(1000, seed=6)
    dropped = first.worker.metrics.registry.get_sample_value(
        "session_consumer_batches_dropped_total"
    )
    assert dropped == 1


async def crash(run: Running) -> None:
    """End the worker the way kill -9 ends it as far as offsets go: nothing more is
    committed (no drain, no final commit)."""
    run.task.cancel()
    await asyncio.gather(run.task, return_exceptions=True)


@pytest.mark.usefixtures("no_commit_after_scrape")
async def test_a_crash_between_a_served_scrape_and_its_commit_recounts_what_it_covered(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    """The bound on counting twice: what the scrapes since the last commit covered."""
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=300, rate=None, seed=8)
    settings = settings_for(broker.bootstrap, topic, **GROUP)
    first = await start_worker(settings)
    await eventually(lambda: first.counted() == 300)
    shown = sum(Scrape(await first.scrape()).series("llm_sessions_total").values())
    await crash(first)

    second = await start_worker(settings)
    await eventually(lambda: second.counted() == 300, within=60)
    await asyncio.sleep(1.0)
    assert second.counted() == shown == 300  # counted again: exactly that scrape's cover


async def test_a_scrape_served_but_never_stored_loses_at_most_what_it_covered(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    """Served, committed, then not ingested (the scraper failed to store it) and the
    worker dies before the next scrape: what that one scrape covered is lost, no more."""
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=300, rate=None, seed=9)
    settings = settings_for(broker.bootstrap, topic, **GROUP)
    first = await start_worker(settings)
    await eventually(lambda: first.counted() == 300)
    await first.scrape()  # served and committed; imagine Prometheus dropped the answer

    await eventually(lambda: committed_total(broker, settings, topic, 300))
    await produce(producer, topic, count=500, rate=None, seed=9, skip=300)
    await eventually(lambda: first.counted() == 500)  # pending: dies with the process
    await crash(first)

    second = await start_worker(settings)
    await eventually(lambda: second.counted() == 200, within=60)
    await asyncio.sleep(1.0)
    assert second.counted() == 200  # the 200 never shown are counted; the 300 are gone


async def test_max_unscraped_seconds_commits_when_nobody_scrapes(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=400, rate=None, seed=10)
    settings = settings_for(broker.bootstrap, topic, max_unscraped_seconds=1)
    run = await start_worker(settings)
    await eventually(lambda: run.counted() == 400)

    # The probe checks every 5 s: within a few of them, with no scrape at all.
    await eventually(lambda: committed_total(broker, settings, topic, 400), within=20)
    published = await peek(run, "llm_sessions_total")
    assert sum(published.series("llm_sessions_total").values()) == 400


async def test_a_scraper_that_hangs_up_mid_answer_makes_nothing_committable(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    """A cut-off answer was not seen by anyone: its positions must not be committed, and
    its client is not a scraper that was served anything."""
    topic = await new_topic(partitions=2)
    events = [
        msgspec.structs.replace(e, workspace_id=f"w-{i}")
        for i, e in enumerate(corpus(seed=11, count=3000))
    ]
    for e in events:  # 3000 series: an answer of ~16 MB, far more than socket buffers hold
        await producer.send(topic, encode(e))
    await producer.flush()
    settings = settings_for(broker.bootstrap, topic)
    run = await start_worker(settings)
    await eventually(lambda: run.counted() == 3000)

    for _ in range(2):  # twice: a client that scraped twice would be an active scraper
        await asyncio.to_thread(hang_up_mid_answer, run.server.port)
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)

    assert await committed(broker.bootstrap, settings.group_id, topic, 2) == {0: 0, 1: 0}
    assert run.worker.scrapers.active() == []
    published = await peek(run, "llm_sessions_total")  # published all the same: shown next time
    assert sum(published.series("llm_sessions_total").values()) == 3000
    await run.scrape()
    await eventually(lambda: committed_total(broker, settings, topic, 3000))


def hang_up_mid_answer(port: int) -> None:
    """GET /metrics, read the first few KB, then reset the connection."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = 0
        while got < 8192:
            got += len(sock.recv(4096))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
