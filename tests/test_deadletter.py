"""consumer/deadletter.py at the edges: a dead-letter topic that is missing at start-up, a
dead-letter side that fails after the consumer started, and one batch's sends together."""

import asyncio
import json
import sys
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ConsumerStoppedError

from consumer.broker import EmbeddedBroker
from consumer.deadletter import DeadLetter, DeadLetterTopicError
from consumer.decode import Invalid, Reason
from consumer.pipeline import Rejected
from consumer.worker import Worker
from tests.conftest import TopicFactory, settings_for
from tests.faults import broker_behind_proxy
from tests.tcp_proxy import client

METADATA = 3
"""Kafka API key of Metadata requests."""


@pytest.mark.broker
async def test_a_missing_dead_letter_topic_stops_start_up_with_one_line_naming_the_flag(
    broker: EmbeddedBroker, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        "--bootstrap-servers",
        broker.bootstrap,
        "--topic",
        topic,
        "--dlq-topic",
        f"missing-{uuid.uuid4().hex[:8]}",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        stderr=asyncio.subprocess.PIPE,
    )
    started = time.monotonic()
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)

    assert proc.returncode == 1
    assert time.monotonic() - started < 20  # not a 40 s wait per invalid record
    human = [line for line in stderr.decode().splitlines() if not line.startswith("{")]
    assert len(human) == 1, stderr.decode()[-2000:]
    assert "--dlq-topic / SESSION_METRICS_DLQ_TOPIC" in human[0]
    assert "does not exist" in human[0]
    logged = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(entry.get("msg") == "consumer stopped" for entry in logged)


@pytest.mark.broker
async def test_the_started_consumer_is_stopped_when_the_dead_letter_side_fails(
    broker: EmbeddedBroker, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=1)
    worker = Worker(settings=settings_for(broker.bootstrap, topic, dlq_topic="no-such-dlq"))

    with pytest.raises(DeadLetterTopicError, match="does not exist"):
        await worker.run()

    consumer = worker._consumer
    assert consumer is not None, "the consumer had started"
    with pytest.raises(ConsumerStoppedError):
        await consumer.getmany(timeout_ms=0)


def rejected(n: int) -> list[Rejected]:
    why = Invalid(Reason.MALFORMED_JSON, "test")
    return [Rejected("src", 0, offset, None, b"{", (), why) for offset in range(n)]


async def test_the_dead_letters_of_one_batch_wait_together_not_one_after_another() -> None:
    async with broker_behind_proxy() as (broker, proxy):
        producer = AIOKafkaProducer(
            bootstrap_servers=f"127.0.0.1:{proxy.port}",
            client_id="dlq-together",
            request_timeout_ms=1000,
        )
        await producer.start()
        try:
            # No metadata for the topic can arrive: each send() waits its request timeout.
            proxy.hold({METADATA}, client("dlq-together"))
            started = time.monotonic()
            sent, failed = await DeadLetter(producer, "dlq").send_all(rejected(5))
            took = time.monotonic() - started
            proxy.release()
        finally:
            await producer.stop()

    assert (sent, failed) == (0, 5)
    assert took < 3.0, f"{took:.1f} s: the five waits of 1 s added up"
    assert broker.port
