"""End to end against the real broker: produced events become exact metric totals."""

import math

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from consumer.metrics import ConsumerMetrics
from consumer.produce import produce
from consumer.synthetic import BAD_VALUES
from tests.conftest import Broker, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(any_broker: Broker) -> Broker:
    """Every test here runs on Tansu and on Apache Kafka."""
    return any_broker


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def test_totals_per_workspace_and_project_are_exact(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=3)
    stats = await produce(producer, topic, count=3000, rate=None, seed=7)
    run = await start_worker(settings_for(broker.bootstrap, topic))
    m = run.worker.metrics

    await eventually(
        lambda: sample(m, "session_consumer_messages_total", outcome="counted") >= 3000
    )

    assert stats.events == 3000
    expected = expected_totals(corpus(seed=7, count=3000))
    assert len(expected) > 200  # the corpus really spreads over many series
    await run.scrape()  # a served scrape publishes what was counted
    got = series_values(m.registry)
    assert set(got["llm_sessions_total"]) == set(expected)
    for key, want in expected.items():
        assert got["llm_sessions_total"][key] == want.sessions
        assert math.isclose(got["llm_session_cost_total"][key], want.cost, rel_tol=1e-9)
        assert math.isclose(got["llm_session_input_cost_total"][key], want.input_cost, rel_tol=1e-9)
        assert got["llm_session_tokens_total"][key] == want.tokens
        assert got["llm_session_duration_seconds_count"][key] == want.sessions
        assert math.isclose(
            got["llm_session_duration_seconds_sum"][key], want.duration_seconds, rel_tol=1e-9
        )
    assert sample(m, "session_consumer_messages_total", outcome="counted") == 3000
    assert sample(m, "session_consumer_messages_total", outcome="invalid") == 0


async def test_invalid_messages_go_to_the_dead_letter_topic_and_the_worker_keeps_going(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic, dlq = await new_topic(partitions=2), await new_topic(partitions=1)
    run = await start_worker(
        settings_for(broker.bootstrap, topic, dlq_topic=dlq, max_message_bytes=2000)
    )
    m = run.worker.metrics
    bad = {
        b"\xff\xfe not utf8": "not_utf8",
        b'{"id": "a", "externalId": "\xff"}': "not_utf8",
        b'{"id": "a"': "malformed_json",
        b"[1]": "not_an_object",
        b'{"id": "a"}': "missing_field",
        BAD_VALUES[3]: "out_of_range",
        b"{" + b" " * 3000 + b"}": "too_large",
    }
    for i, value in enumerate(bad):
        await producer.send_and_wait(
            topic, value, key=f"k{i}".encode(), partition=i % 2, headers=[("trace", b"t-%d" % i)]
        )
    # Good events after the bad ones prove the worker kept consuming.
    await produce(producer, topic, count=50, rate=None, seed=3)

    await eventually(lambda: sample(m, "session_consumer_messages_total", outcome="counted") == 50)
    await eventually(lambda: sample(m, "session_consumer_dead_lettered_total") == len(bad))
    assert sample(m, "session_consumer_messages_total", outcome="invalid") == len(bad)
    for reason in set(bad.values()):
        want = list(bad.values()).count(reason)
        assert sample(m, "session_consumer_invalid_total", reason=reason) == want

    reader = AIOKafkaConsumer(dlq, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        got: list[ConsumerRecord[bytes, bytes]] = []
        while len(got) < len(bad):
            for records in (await reader.getmany(timeout_ms=1000)).values():
                got.extend(records)
    finally:
        await reader.stop()
    by_value = {r.value: r for r in got}
    assert set(by_value) == set(bad)
    for i, (value, reason) in enumerate(bad.items()):
        record = by_value[value]
        headers = dict(record.headers)
        assert headers["dlq-reason"] == reason.encode()
        assert headers["dlq-source-topic"] == topic.encode()
        assert headers["dlq-source-partition"] == str(i % 2).encode()
        assert int(headers["dlq-source-offset"]) >= 0
        assert headers["dlq-detail"]
        assert headers["trace"] == b"t-%d" % i
        assert record.key == f"k{i}".encode()


async def test_duplicate_session_ids_are_counted_once(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=2)
    stats = await produce(producer, topic, count=1000, rate=None, seed=11, duplicate_ratio=0.1)
    run = await start_worker(settings_for(broker.bootstrap, topic))
    m = run.worker.metrics
    await eventually(
        lambda: (
            sample(m, "session_consumer_messages_total", outcome="duplicate") == stats.duplicates
        )
    )
    assert stats.duplicates > 50
    assert sample(m, "session_consumer_messages_total", outcome="counted") == 1000
    total = sum(v.sessions for v in expected_totals(corpus(seed=11, count=1000)).values())
    await run.scrape()
    counted = sum(series_values(m.registry)["llm_sessions_total"].values())
    assert counted == total == 1000


async def test_tombstones_are_skipped_and_counted(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=1)
    for _ in range(3):
        await producer.send_and_wait(topic, None, key=b"gone")
    await produce(producer, topic, count=10, rate=None, seed=5)
    run = await start_worker(settings_for(broker.bootstrap, topic))
    m = run.worker.metrics
    await eventually(lambda: sample(m, "session_consumer_messages_total", outcome="counted") == 10)
    assert sample(m, "session_consumer_messages_total", outcome="tombstone") == 3
