"""`session-metrics produce`: synthetic events into any Kafka, at a steady rate or flat out."""

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from consumer.synthetic import BAD_VALUES, SessionFactory, encode

log = logging.getLogger(__name__)


@dataclass
class Produced:
    events: int = 0
    duplicates: int = 0
    invalid: int = 0


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    *,
    count: int | None,
    rate: float | None,
    seed: int = 0,
    skip: int = 0,
    invalid_ratio: float = 0.0,
    duplicate_ratio: float = 0.0,
    stop: asyncio.Event | None = None,
    stats: Produced | None = None,
) -> Produced:
    """Send `count` events (None: until `stop`), at most `rate` per second (None: flat out).

    With `skip`, the first `skip` events of the seeded stream are not sent (and `count`
    still counts them), so a corpus can be extended where an earlier call stopped.
    Keys are the workspace id, so a workspace's events stay in order on one partition.
    Some events can be re-sent (duplicates) or replaced by malformed values (invalid),
    which the demo uses to show the consumer's operational metrics.
    """
    stats = stats or Produced()
    factory, rng = SessionFactory(seed), random.Random(seed + 1)
    for _ in range(skip):  # resume a seeded stream part-way, e.g. to extend a corpus
        factory.event()
    chunk = 500 if rate is None else max(1, min(500, int(rate / 20)))
    started, previous, previous_key = time.monotonic(), b"", b""
    pending: list[asyncio.Future[object]] = []
    stats.events = max(stats.events, skip)
    while (count is None or stats.events < count) and not (stop and stop.is_set()):
        for _ in range(chunk if count is None else min(chunk, count - stats.events)):
            event = factory.event()
            value, key = encode(event), event.workspace_id.encode()
            if previous and rng.random() < duplicate_ratio:
                pending.append(await producer.send(topic, previous, key=previous_key))
                stats.duplicates += 1
            if rng.random() < invalid_ratio:
                pending.append(await producer.send(topic, rng.choice(BAD_VALUES), key=key))
                stats.invalid += 1
            pending.append(await producer.send(topic, value, key=key))
            previous, previous_key = value, key
            stats.events += 1
        await asyncio.gather(*pending)
        pending.clear()
        if rate is not None:
            ahead = stats.events / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return stats
