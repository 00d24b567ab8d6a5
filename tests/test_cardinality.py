"""Cardinality attack: a million events, each from a new workspace, into `session-metrics run`.

The worker runs as its own process, as in production, so its peak RSS (VmHWM) is its own.
Series must stop at --max-series with the rest counted, exactly, under __overflow__.
The broker is this test's own: a million records stay in Tansu's memory until it stops.
"""

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.broker import EmbeddedBroker, create_topics, free_port

pytestmark = pytest.mark.broker

EVENTS = 1_000_000
MAX_SERIES = 10_000
"""--max-series default: the attack meets the worker as it ships."""
PARTITIONS = 3
RSS_LIMIT_MB = 200

# Small but complete events (~250 bytes): every required field, one new workspace each.
# Cost and tokens are exact in binary, so sums of a million of them are exact too.
EVENT = (
    b'{"id":"s-%07d","externalId":"","duration":1000,"contactIds":[],'
    b'"billing":{"inputCost":0.5,"outputCost":0.25,"totalCost":0.75},'
    b'"usage":{"promptTokens":10,"completionTokens":5,"totalTokens":15},'
    b'"tracesCount":1,"tags":[],"workspaceId":"attack-%07d"}'
)


async def produce_attack(bootstrap: str, topic: str) -> None:
    """Send EVENTS events in large record batches, round-robin over the partitions."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=1 << 20, max_request_size=4 << 20
    )
    await producer.start()
    try:
        sent, pending, partition = 0, [], 0
        while sent < EVENTS:
            batch = producer.create_batch()
            while sent < EVENTS:
                value = EVENT % (sent, sent)
                if batch.append(key=None, value=value, timestamp=None) is None:
                    break  # full: this one goes first into the next batch
                sent += 1
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            partition = (partition + 1) % PARTITIONS
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


@dataclass
class Worker:
    process: asyncio.subprocess.Process
    port: int
    group: str


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedBroker, Worker]]:
    with EmbeddedBroker() as broker:
        await create_topics(broker.bootstrap, {"attack": PARTITIONS})
        port, log = free_port(), (tmp_path / "worker.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "consumer", "run", "--topic", "attack"),
            *("--bootstrap-servers", broker.bootstrap, "--group-id", "attack"),
            *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
            stdout=log,
            stderr=log,
        )
        try:
            yield broker, Worker(process, port, "attack")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()


async def wait_counted(w: Worker, within: float) -> None:
    """Until the worker has counted every record, asked with `name[]` requests: those
    publish and commit nothing, and cost next to nothing, so the measurement stays clean."""
    url = f"http://127.0.0.1:{w.port}/metrics?name[]=session_consumer_messages_total"
    deadline = time.monotonic() + within
    counted = 0.0
    async with aiohttp.ClientSession() as http:
        while counted < EVENTS:
            assert w.process.returncode is None, "the worker exited"
            assert time.monotonic() < deadline, f"{counted} of {EVENTS} counted"
            await asyncio.sleep(0.5)
            async with http.get(url) as response:
                counted = parse(await response.text()).gauges.get("counted", 0.0)


async def committed(bootstrap: str, group: str) -> int:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        offsets = [await reader.committed(TopicPartition("attack", p)) for p in range(PARTITIONS)]
        return sum(o or 0 for o in offsets)
    finally:
        await reader.stop()


@dataclass
class Scrape:
    sessions: dict[str, float]
    """llm_sessions_total by workspace_id."""
    cost: float
    """llm_session_cost_total summed over every series."""
    gauges: dict[str, float]
    """Every unlabelled sample and session_consumer_messages_total{outcome="counted"}."""


def parse(text: str) -> Scrape:
    sessions, cost, gauges = {}, 0.0, {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith("llm_sessions_total{"):
            workspace = re.search(r'workspace_id="([^"]*)"', name)
            assert workspace, line
            sessions[workspace.group(1)] = float(value)
        elif line.startswith("llm_session_cost_total{"):
            cost += float(value)
        elif line.startswith("session_consumer_") and "{" not in name:
            gauges[name] = float(value)
        elif name == 'session_consumer_messages_total{outcome="counted"}':
            gauges["counted"] = float(value)
    return Scrape(sessions, cost, gauges)


async def test_a_million_new_workspaces_stay_within_max_series_and_200_mb(
    worker: tuple[EmbeddedBroker, Worker],
) -> None:
    broker, w = worker
    started = time.monotonic()
    await produce_attack(broker.bootstrap, "attack")
    produced = time.monotonic()
    await wait_counted(w, within=90)
    consumed = time.monotonic()
    rss_consuming = peak_rss_mb(w.process.pid)

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{w.port}/metrics") as response,
    ):
        text = await response.text()
    scraped = time.monotonic()
    rss_scraped = peak_rss_mb(w.process.pid)
    until = time.monotonic() + 10  # the served scrape makes everything committable
    while await committed(broker.bootstrap, w.group) < EVENTS:
        assert time.monotonic() < until, "the scrape's offsets were not committed"
        await asyncio.sleep(0.2)
    w.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(w.process.wait(), 30) == 0

    print(
        f"\ncardinality attack: {EVENTS} events produced in {produced - started:.1f}s, "
        f"all counted {consumed - started:.1f}s after the start; one scrape "
        f"{len(text) / 1e6:.0f} MB in {scraped - consumed:.1f}s; peak RSS "
        f"{rss_consuming:.0f} MB consuming, {rss_scraped:.0f} MB after the scrape"
    )
    got = parse(text)
    overflow = EVENTS - MAX_SERIES
    assert got.gauges["counted"] == EVENTS
    assert len(got.sessions) == got.gauges["session_consumer_series"] == MAX_SERIES + 1
    assert got.sessions.pop("__overflow__") == overflow
    assert got.gauges["session_consumer_series_overflow_total"] == overflow
    assert all(n == 1 for n in got.sessions.values())
    assert all(re.fullmatch(r"attack-\d{7}", workspace) for workspace in got.sessions)
    assert got.cost == 0.75 * EVENTS
    assert rss_consuming < RSS_LIMIT_MB
    assert rss_scraped < RSS_LIMIT_MB, (
        f"one scrape of {MAX_SERIES + 1} series took the worker to {rss_scraped:.0f} MB"
    )
