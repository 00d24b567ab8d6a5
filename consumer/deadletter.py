"""Invalid messages to the dead-letter topic: original key, value and headers, plus why.

Headers added: dlq-reason, dlq-detail, dlq-source-topic, dlq-source-partition,
dlq-source-offset. A failed produce is counted and logged, never retried
forever: the message is still counted as invalid, so it is not lost silently.
"""

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.pipeline import Rejected

log = logging.getLogger(__name__)


def dlq_headers(r: Rejected) -> list[tuple[str, bytes]]:
    return [
        *r.headers,
        ("dlq-reason", r.invalid.reason.value.encode()),
        ("dlq-detail", r.invalid.detail[:1024].encode("utf-8", "replace")),
        ("dlq-source-topic", r.topic.encode()),
        ("dlq-source-partition", str(r.partition).encode()),
        ("dlq-source-offset", str(r.offset).encode()),
    ]


class DeadLetterTopicError(KafkaError):  # type: ignore[misc]  # aiokafka has no type hints
    """The dead-letter topic cannot be written; str() is the one line shown to the user."""


async def check_topic(producer: AIOKafkaProducer, topic: str) -> None:
    """Raise DeadLetterTopicError if `topic` is missing or we may not see it, at start-up:
    found later, every invalid record would wait for it (aiokafka's request timeout).

    All-topics metadata, so that asking does not auto-create the topic on brokers that
    would; a broker that denies writes but allows describing is only found at a send.
    """
    metadata = await producer.client.fetch_all_metadata()
    where = "--dlq-topic / SESSION_METRICS_DLQ_TOPIC"
    if topic in metadata.unauthorized_topics:
        raise DeadLetterTopicError(f"{where}: not authorized for topic {topic!r}")
    if topic not in metadata.topics():
        raise DeadLetterTopicError(f"{where}: topic {topic!r} does not exist; create it first")


class DeadLetter:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send_all(self, rejected: list[Rejected]) -> tuple[int, int]:
        """Produce every rejected message and wait for the acks; returns (sent, failed).

        Queued all at once: send() itself can wait (for metadata, up to the request
        timeout), and one after another those waits would add up per record."""
        futures = await asyncio.gather(*(self._send(r) for r in rejected))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = 0
        for r, result in zip(rejected, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                log.error(
                    "dead-letter produce failed",
                    extra={
                        "topic": r.topic,
                        "partition": r.partition,
                        "offset": r.offset,
                        "error": repr(result),
                    },
                )
        return len(rejected) - failed, failed

    async def _send(self, r: Rejected) -> "asyncio.Future[object]":
        try:
            sent: asyncio.Future[object] = await self._producer.send(
                self.topic, value=r.value, key=r.key, headers=dlq_headers(r)
            )
        except KafkaError as exc:
            # send() raises at once for a record it cannot even queue (one over the
            # producer's max_request_size, i.e. any too_large value bigger than 1 MiB):
            # a failed dead-letter, never an error that stops the worker.
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return sent
