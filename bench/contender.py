"""What the ceiling and naive processes share: arguments, the consumer, /metrics."""

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from prometheus_client import start_http_server

Loop = Callable[[AIOKafkaConsumer], Awaitable[None]]


def main(loop: Loop) -> None:
    """Parse --bootstrap/--topic/--group/--port, serve /metrics, run `loop` until killed."""
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--topic", "--group"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # prometheus-client's own threaded server: what a hand-written consumer would use.
    start_http_server(args.port, addr="127.0.0.1")
    asyncio.run(_consume(args, loop))


async def _consume(args: argparse.Namespace, loop: Loop) -> None:
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await loop(consumer)
    finally:
        await consumer.stop()
