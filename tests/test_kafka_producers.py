"""What librdkafka (confluent-kafka) writes, read from Apache Kafka: transactions with aborts
under each isolation level, lag against the last stable offset, and every compression codec."""

import asyncio
import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

from consumer.broker import create_topics
from consumer.synthetic import encode
from schemas import CreateSessionResponseBody
from tests.conftest import Running, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.kafkabroker import KafkaBroker

pytestmark = [pytest.mark.broker, pytest.mark.kafka]

TXN = 100
"""Events per transaction."""
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def transactional(kafka: KafkaBroker) -> Producer:
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    return producer


def send(producer: Producer, topic: str, events: Iterable[CreateSessionResponseBody]) -> None:
    for e in events:
        producer.produce(topic, encode(e), key=e.workspace_id.encode())
        producer.poll(0)


def committed_and_aborted(
    kafka: KafkaBroker, topic: str, events: list[CreateSessionResponseBody]
) -> list[CreateSessionResponseBody]:
    """One transaction per TXN events, every third aborted; returns the committed events."""
    producer = transactional(kafka)
    kept = []
    for n, start in enumerate(range(0, len(events), TXN)):
        batch = events[start : start + TXN]
        producer.begin_transaction()
        send(producer, topic, batch)
        if n % 3 == 1:
            # abort_transaction() purges what librdkafka has not sent yet: flushed first,
            # the records are in the log, as aborted ones.
            assert producer.flush(30) == 0
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            kept += batch
    return kept


def lags(run: Running, topic: str) -> dict[int, float]:
    return {
        int(s.labels["partition"]): s.value
        for family in run.worker.metrics.registry.collect()
        if family.name == "session_consumer_lag_records"
        for s in family.samples
        if s.labels["topic"] == topic
    }


async def assert_counts_exactly(run: Running, events: list[CreateSessionResponseBody]) -> None:
    assert run.counted() == len(events)
    await run.scrape()  # a served scrape publishes what was counted
    want = expected_totals(events)
    got = series_values(run.worker.metrics.registry)["llm_sessions_total"]
    assert got == {key: float(t.sessions) for key, t in want.items()}


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
async def test_aborted_transactions_count_only_under_read_uncommitted(
    kafka: KafkaBroker, start_worker: WorkerFactory, isolation: str
) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(kafka.bootstrap, {topic: 3})
    events = corpus(seed=130, count=9 * TXN)
    kept = await asyncio.to_thread(committed_and_aborted, kafka, topic, events)
    assert len(kept) == 6 * TXN
    want = kept if isolation == "read_committed" else events

    run = await start_worker(settings_for(kafka.bootstrap, topic, isolation_level=isolation))
    await eventually(lambda: run.counted() >= len(want), within=60)
    # The last transaction was committed, so under read_committed every aborted record
    # came before what was counted last; under read_uncommitted nothing is left to read.
    await asyncio.sleep(1)

    await assert_counts_exactly(run, want)


async def test_read_committed_lag_is_measured_to_the_last_stable_offset(
    kafka: KafkaBroker, start_worker: WorkerFactory
) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(kafka.bootstrap, {topic: 1})
    events = corpus(seed=131, count=3 * TXN)
    producer = await asyncio.to_thread(transactional, kafka)
    await asyncio.to_thread(_commit, producer, topic, events[:TXN])
    # An open transaction: its records are past the last stable offset, not yet readable.
    producer.begin_transaction()
    await asyncio.to_thread(send, producer, topic, events[TXN:])
    await asyncio.to_thread(producer.flush, 30)

    run = await start_worker(settings_for(kafka.bootstrap, topic))
    await eventually(lambda: run.counted() >= TXN, within=60)
    await eventually(lambda: lags(run, topic) == {0: 0.0})
    # The open records are in the log, past the last stable offset the lag is measured to.
    assert await highwater(kafka, topic) > 3 * TXN
    await asyncio.sleep(1)
    assert run.counted() == TXN

    await asyncio.to_thread(producer.commit_transaction, 30)
    await eventually(lambda: run.counted() >= 3 * TXN)
    await eventually(lambda: lags(run, topic) == {0: 0.0})
    await assert_counts_exactly(run, events)


def _commit(producer: Producer, topic: str, events: list[CreateSessionResponseBody]) -> None:
    producer.begin_transaction()
    send(producer, topic, events)
    producer.commit_transaction(30)


async def highwater(kafka: KafkaBroker, topic: str) -> int:
    """end_offsets() of partition 0 as a read_uncommitted client sees it: the highwater."""
    reader = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        end: int = (await reader.end_offsets([tp]))[tp]
        return end
    finally:
        await reader.stop()


# --- compression --------------------------------------------------------------------------------


def produce_with(
    kafka: KafkaBroker, topic: str, codec: str, events: list[CreateSessionResponseBody]
) -> None:
    # Batches big enough to compress: librdkafka compresses per batch, not per record.
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "compression.type": codec, "linger.ms": 20}
    )
    send(producer, topic, events)
    assert producer.flush(30) == 0


def codecs_on_disk(kafka: KafkaBroker, topic: str) -> set[str]:
    """The codecs of the batches in the topic's log segments, as Kafka's own
    DumpLogSegments tool reads them from disk."""
    segments = sorted(str(p) for p in kafka.data.glob(f"{topic}-*/*.log"))
    done = subprocess.run(
        kafka.java("kafka.tools.DumpLogSegments", "--files", ",".join(segments), heap="256m"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(re.findall(r"compresscodec: (\w+)", done.stdout))


def _slices(
    events: list[CreateSessionResponseBody], n: int
) -> Iterator[list[CreateSessionResponseBody]]:
    size = len(events) // n
    for i in range(n):
        yield events[i * size : (i + 1) * size]


async def test_one_topic_mixing_every_codec_counts_every_event_exactly(
    kafka: KafkaBroker, start_worker: WorkerFactory
) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(kafka.bootstrap, {topic: 3})
    events = corpus(seed=140, count=len(CODECS) * 400)
    for codec, part in zip(CODECS, _slices(events, len(CODECS)), strict=True):
        await asyncio.to_thread(produce_with, kafka, topic, codec, part)

    run = await start_worker(settings_for(kafka.bootstrap, topic))
    await eventually(lambda: run.counted() >= len(events), within=60)
    await asyncio.sleep(0.5)

    await assert_counts_exactly(run, events)
    assert await asyncio.to_thread(codecs_on_disk, kafka, topic) == set(CODECS)
