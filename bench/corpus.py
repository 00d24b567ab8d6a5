"""The events the benchmark consumes: produced once per run into the embedded broker."""

import msgspec
from aiokafka import AIOKafkaProducer

from consumer.produce import produce
from consumer.synthetic import SessionFactory, encode

SEED = 3


def _producer(bootstrap: str) -> AIOKafkaProducer:
    # Large batches: the producer is not what is measured, it only has to be quick.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )


async def realistic(bootstrap: str, topic: str, events: int) -> None:
    """`events` sessions over 50 workspaces x 5 projects (10% without a project), ~480 bytes."""
    producer = _producer(bootstrap)
    await producer.start()
    try:
        await produce(producer, topic, count=events, rate=None, seed=SEED)
    finally:
        await producer.stop()


async def many_series(bootstrap: str, topic: str, series: int, per_series: int) -> None:
    """`per_series` sessions in each of `series` distinct (workspace, project) pairs."""
    factory = SessionFactory(SEED)
    producer = _producer(bootstrap)
    await producer.start()
    try:
        for _ in range(per_series):
            futures = []
            for i in range(series):
                workspace = f"ws-{i // 5:05d}"
                event = msgspec.structs.replace(
                    factory.event(), workspace_id=workspace, project_id=f"proj-{i % 5}"
                )
                futures.append(await producer.send(topic, encode(event), key=workspace.encode()))
            for future in futures:
                await future
    finally:
        await producer.stop()
