"""Batches as real producers and broken ones leave them: every codec librdkafka writes, and
record batches nobody can read, which hold their partition while the others flow."""

import gzip
import math

import cramjam
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from consumer.broker import EmbeddedBroker
from consumer.fetch import UNREADABLE, reason_of
from consumer.metrics import ConsumerMetrics
from consumer.synthetic import SessionFactory, encode
from schemas import CreateSessionResponseBody
from tests.conftest import TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import expected_totals, series_values
from tests.crafted_batch import bad_crc, corrupt_records, not_compressed, produce_raw
from tests.librdkafka import librdkafka_produce
from tests.test_decode import raw

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 200


def sample(m: ConsumerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def check_totals(m: ConsumerMetrics, events: list[CreateSessionResponseBody]) -> None:
    want = expected_totals(events)
    got = series_values(m.registry)
    assert got["llm_sessions_total"] == {k: w.sessions for k, w in want.items()}
    for key, w in want.items():
        assert math.isclose(got["llm_session_cost_total"][key], w.cost, rel_tol=1e-9)
        assert got["llm_session_tokens_total"][key] == w.tokens


@pytest.mark.broker
async def test_one_topic_written_with_every_codec_is_counted_exactly(
    broker: EmbeddedBroker, new_topic: TopicFactory, start_worker: WorkerFactory
) -> None:
    topic = await new_topic(partitions=3)
    events = list(SessionFactory(seed=41).events(PER_CODEC * len(CODECS)))
    # One librdkafka producer per codec, batches interleaved on the same partitions.
    for i, codec in enumerate(CODECS):
        chunk = events[i * PER_CODEC : (i + 1) * PER_CODEC]
        await librdkafka_produce(
            broker.bootstrap,
            topic,
            [(encode(e), []) for e in chunk],
            **{"compression.type": codec, "linger.ms": 20, "batch.num.messages": 50},
        )
    run = await start_worker(settings_for(broker.bootstrap, topic))

    await eventually(lambda: run.counted() >= len(events))

    assert run.counted() == len(events)
    assert sample(run.worker.metrics, "session_consumer_messages_total", outcome="invalid") == 0
    await run.scrape()  # a served scrape publishes what was counted
    check_totals(run.worker.metrics, events)


BROKEN = {
    "bad-crc": (bad_crc, "corrupt"),
    "corrupt-records": (corrupt_records, "corrupt"),
    "gzip-that-is-not": (lambda v: not_compressed(v, 1), "decompression"),
    "zstd-that-is-not": (lambda v: not_compressed(v, 4), "decompression"),
}


@pytest.mark.broker
@pytest.mark.parametrize("kind", BROKEN.keys())
async def test_an_unreadable_batch_holds_its_partition_and_the_others_keep_flowing(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    kind: str,
) -> None:
    make, reason = BROKEN[kind]
    topic = await new_topic(partitions=3)
    events = list(SessionFactory(seed=43).events(90))
    before, after = events[:60], events[60:]
    # Partition 0: 20 good records, the broken batch, 10 more; partitions 1 and 2: 30 each.
    for i, e in enumerate(before):
        await producer.send(topic, encode(e), partition=i % 3)
    await producer.flush()
    assert await produce_raw(broker.bootstrap, topic, 0, make([raw(), raw()])) == 0
    for i, e in enumerate(after):
        await producer.send(topic, encode(e), partition=i % 3)
    await producer.flush()
    run = await start_worker(settings_for(broker.bootstrap, topic))
    readable = [e for i, e in enumerate(events) if i % 3 != 0 or i < 60]

    await eventually(lambda: run.counted() >= len(readable))
    await eventually(lambda: bool(run.worker.fetcher.held))

    assert run.counted() == len(readable)
    await run.scrape()
    check_totals(run.worker.metrics, readable)
    m = run.worker.metrics
    unreadable = {
        (s.labels["topic"], s.labels["partition"], s.labels["reason"]): s.value
        for family in m.registry.collect()
        if family.name == "session_consumer_partition_unreadable"
        for s in family.samples
    }
    assert unreadable == {(topic, "0", reason): 1.0}
    assert not run.task.done()
    assert await run.status("/healthz") == 200
    assert await run.is_ready()
    # The other partitions keep flowing after the hold.
    more = list(SessionFactory(seed=44).events(20))
    for i, e in enumerate(more):
        await producer.send(topic, encode(e), partition=1 + i % 2)
    await producer.flush()
    await eventually(lambda: run.counted() >= len(readable) + len(more))
    assert run.counted() == len(readable) + len(more)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (CorruptRecordException("Invalid CRC"), "corrupt"),
        # Not producible here: Tansu refuses a batch with an unknown codec id at produce.
        (UnsupportedCodecError("Unknown compression codec 0x07"), "unsupported_codec"),
        (cramjam.DecompressionError("lz4: ERROR_frameType_unknown"), "decompression"),
        (gzip.BadGzipFile("Not a gzipped file"), "decompression"),
    ],
)
def test_each_unreadable_error_is_held_with_its_reason(error: BaseException, reason: str) -> None:
    assert isinstance(error, UNREADABLE)
    assert reason_of(error) == reason
