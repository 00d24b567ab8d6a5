"""`python -m bench.restore`: what reading a log window back costs a rebalance.

On the embedded broker: produce `--per-partition` events into each of 6 partitions
(keyed by session id, as the replay tests do), let one `session-metrics run` read them
all and stop after a served scrape (so the group's offsets sit at the end), then start a
fresh worker in the same group: before its first record it reads the window back,
`--dedup-window` records per partition, counting nothing. Reported from its own metrics
(`session_consumer_dedup_restore_seconds`, `..._restored_records_total`): records read,
seconds, records per second and the pause per partition. docs/guarantees.md quotes it.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from consumer.broker import EmbeddedBroker, create_topics, free_port
from consumer.synthetic import SessionFactory, encode

PARTITIONS = 6


async def produce(bootstrap: str, topic: str, events: int, seed: int = 7) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for event in SessionFactory(seed).events(events):
            await producer.send(topic, encode(event), key=event.id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def metrics(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels or s.labels.get("outcome") == "counted"
    }


async def worker(
    bootstrap: str, topic: str, window: int, logs: Path, tag: str
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    argv = [
        sys.executable, "-m", "consumer", "run", "--bootstrap-servers", bootstrap,
        "--topic", topic, "--group-id", "restore-bench", "--metrics-host", "127.0.0.1",
        "--metrics-port", str(port), "--dedup-window", str(window),
    ]  # fmt: skip
    with (logs / f"{tag}.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    return proc, port


async def ended(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL if it is still there after a minute: never left behind."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def until(port: int, check: str, at_least: float, within: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            got = await metrics(port)
            if got.get(check, 0.0) >= at_least:
                return got
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"{check} did not reach {at_least} within {within}s")


async def main(per_partition: int, window: int) -> dict[str, float]:
    events = per_partition * PARTITIONS
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        logs = Path(tmp)
        topic = "restore-bench"
        await create_topics(broker.bootstrap, {topic: PARTITIONS})
        await produce(broker.bootstrap, topic, events)
        first, port = await worker(broker.bootstrap, topic, window, logs, "first")
        try:
            await until(port, "session_consumer_messages_total", events)
            await metrics(port)  # a served scrape: the offsets it covers are committed
            await asyncio.sleep(1)
        finally:
            await ended(first)
        second, port = await worker(broker.bootstrap, topic, window, logs, "second")
        try:
            # The window is read back before a partition's first record: send it some.
            await until(port, "session_consumer_assigned_partitions", PARTITIONS)
            await produce(broker.bootstrap, topic, 100 * PARTITIONS, seed=8)
            got = await until(port, "session_consumer_dedup_restore_seconds_count", 1)
        finally:
            await ended(second)
    seconds = got["session_consumer_dedup_restore_seconds_sum"]
    records = got["session_consumer_dedup_restored_records_total"]
    return {
        "window": window,
        "partitions": PARTITIONS,
        "records_read": records,
        "seconds": round(seconds, 3),
        "records_per_second": round(records / seconds),
        "seconds_per_partition": round(seconds / PARTITIONS, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    parser.add_argument("--per-partition", type=int, default=25_000)
    parser.add_argument("--dedup-window", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(asyncio.run(main(args.per_partition, args.dedup_window))))
