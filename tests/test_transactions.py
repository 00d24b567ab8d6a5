"""Transactions written by librdkafka, read by the worker on Tansu: what Tansu allows.

Measured on Tansu (the embedded broker), and asserted here so a change shows:
- records of an open transaction are held back under read_committed (the default): the
  last stable offset stops before them, lag is measured to it, and they count once
  committed; read_uncommitted counts them at once;
- records of an aborted transaction are counted even under read_committed: Tansu writes
  them and the abort marker, but its fetch responses list no aborted transactions, which
  is what a consumer (aiokafka, like the Java client) filters by. Apache Kafka lists them,
  so there they are not counted: that is the real-Kafka suite's test. (The issue's
  "Tansu drops aborted records" came from aborting before a flush: librdkafka then purges
  the unsent records, so they never reach any broker.)
"""

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from consumer.broker import EmbeddedBroker
from consumer.synthetic import SessionFactory, encode
from tests.conftest import Running, TopicFactory, WorkerFactory, eventually, settings_for

COMMITTED, ABORTED, MORE_COMMITTED, OPEN = 5, 7, 3, 4


class Transactions:
    """One librdkafka transactional producer writing to partition 0 of `topic`."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.events: Iterator[bytes] = (encode(e) for e in SessionFactory(seed=51).events(100))
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}
        )
        self.producer.init_transactions(30)

    def write(self, count: int) -> None:
        self.producer.begin_transaction()
        for _ in range(count):
            self.producer.produce(self.topic, next(self.events), partition=0)
        # Flushed before any commit or abort: the records reach the broker either way.
        assert self.producer.flush(30) == 0

    def commit(self) -> None:
        self.producer.commit_transaction(30)

    def abort(self) -> None:
        self.producer.abort_transaction(30)


def lag(run: Running, topic: str) -> float | None:
    return run.worker.metrics.registry.get_sample_value(
        "session_consumer_lag_records", {"topic": topic, "partition": "0"}
    )


@pytest.mark.broker
async def test_transactions_on_tansu_open_ones_wait_for_commit_aborted_ones_are_counted(
    broker: EmbeddedBroker, new_topic: TopicFactory, start_worker: WorkerFactory
) -> None:
    topic = await new_topic(partitions=1)
    tx = await asyncio.to_thread(Transactions, broker.bootstrap, topic)
    for count, end in ((COMMITTED, tx.commit), (ABORTED, tx.abort), (MORE_COMMITTED, tx.commit)):
        await asyncio.to_thread(tx.write, count)
        await asyncio.to_thread(end)
    await asyncio.to_thread(tx.write, OPEN)  # left open

    committed = await start_worker(settings_for(broker.bootstrap, topic))
    uncommitted = await start_worker(
        settings_for(broker.bootstrap, topic, isolation_level="read_uncommitted")
    )
    readable = COMMITTED + ABORTED + MORE_COMMITTED
    await eventually(lambda: uncommitted.counted() >= readable + OPEN)
    await eventually(lambda: committed.counted() >= readable and lag(committed, topic) == 0)
    await asyncio.sleep(2)  # long enough for the open transaction's records to show if they would

    assert uncommitted.counted() == readable + OPEN
    assert committed.counted() == readable
    assert lag(committed, topic) == 0  # measured to the last stable offset, not the highwater

    await asyncio.to_thread(tx.commit)
    await eventually(lambda: committed.counted() >= readable + OPEN)
    assert committed.counted() == readable + OPEN
