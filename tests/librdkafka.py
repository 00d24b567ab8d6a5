"""A real librdkafka producer (confluent-kafka) for tests: what most producers in the field run."""

import asyncio
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

Message = tuple[bytes | None, Sequence[tuple[str, bytes]]]
"""(value, headers)."""


def _flush(bootstrap: str, topic: str, messages: Sequence[Message], conf: dict[str, Any]) -> None:
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    for value, headers in messages:
        producer.produce(topic, value=value, headers=list(headers), on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(30)
    if left or errors:
        raise KafkaException(f"{left} undelivered, errors: {errors[:3]}")


async def librdkafka_produce(
    bootstrap: str, topic: str, messages: Sequence[Message], **conf: Any
) -> None:
    """Produce `messages` in order with one librdkafka producer configured by `conf`
    (librdkafka's own keys, e.g. `**{"compression.type": "zstd"}`), and wait for every ack."""
    await asyncio.to_thread(_flush, bootstrap, topic, messages, conf)
