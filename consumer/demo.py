"""`session-metrics demo`: everything on one machine, no Kafka needed.

Starts the embedded broker, creates the topic (6 partitions) and a dead-letter
topic, produces synthetic events (with a few duplicates and malformed ones so
the operational metrics move), runs the consumer and prints a live summary.
"""

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.http import HttpServer
from consumer.produce import produce
from consumer.service import serve
from consumer.settings import run_settings
from consumer.worker import Worker

TOPIC, DLQ_TOPIC, PARTITIONS = "sessions", "sessions-dlq", 6


async def demo(*, port: int, rate: float, duration: float | None) -> None:
    with EmbeddedBroker() as broker:
        await create_topics(broker.bootstrap, {TOPIC: PARTITIONS, DLQ_TOPIC: 1})
        args = argparse.Namespace(
            bootstrap_servers=broker.bootstrap,
            topic=TOPIC,
            dlq_topic=DLQ_TOPIC,
            metrics_port=str(port),
            metrics_host="127.0.0.1",
            group_id="session-metrics-demo",
            drain_timeout="5",
            # Offsets wait for a scrape of /metrics; a demo nobody scrapes still commits.
            max_unscraped_seconds="10",
        )
        settings = run_settings(args, environ={})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:

            async def started(worker: Worker, server: HttpServer) -> None:
                print(
                    f"session-metrics demo: broker {broker.bootstrap}, topic {TOPIC!r}\n"
                    f"  metrics: http://127.0.0.1:{server.port}/metrics   "
                    f"(also /healthz, /readyz)\n  Ctrl-C to stop",
                    flush=True,
                )
                tasks.append(
                    asyncio.create_task(_supervise(worker, producer, rate, stop, duration))
                )

            tasks: list[asyncio.Task[None]] = []
            await serve(settings, on_started=started, handle_signals=False)
            for task in tasks:
                await task
        finally:
            await producer.stop()
    print("\nsession-metrics demo: stopped cleanly", flush=True)


async def _supervise(
    worker: Worker,
    producer: AIOKafkaProducer,
    rate: float,
    stop: asyncio.Event,
    duration: float | None,
) -> None:
    producing = asyncio.create_task(
        produce(
            producer,
            TOPIC,
            count=None,
            rate=rate,
            seed=42,
            invalid_ratio=0.002,
            duplicate_ratio=0.01,
            stop=stop,
        )
    )
    deadline = None if duration is None else time.monotonic() + duration
    last_count, last_time = 0.0, time.monotonic()
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        (shown, shown_cost), (pending, pending_cost) = (
            worker.metrics.business.grand_total(),
            worker.ledger.pending_total(),
        )
        sessions, cost = shown + pending, shown_cost + pending_cost
        now = time.monotonic()
        per_second = (sessions - last_count) / (now - last_time)
        last_count, last_time = sessions, now
        line = (
            f"{per_second:8.0f} events/s | {sessions:10.0f} sessions | "
            f"${cost:12,.2f} cost | lag {sum(p.records for p in worker.partition_lag())}"
        )
        end = "\r" if sys.stdout.isatty() else "\n"
        print(line, end=end, flush=True)
    stop.set()
    await producing
    worker.stop()
