"""getmany() that survives a record batch nobody can read: that partition is held, the rest flow.

aiokafka unpacks batches inside getmany(): a bad CRC or broken records raise
CorruptRecordException, a codec it lacks UnsupportedCodecError, a corrupt compressed
payload the codec's own error (cramjam's DecompressionError, gzip's BadGzipFile...). The
error carries no partition (only the CRC message names one), it is raised again at
every fetch of that batch, and the other partitions' records that the same call had
already taken are dropped with it, their positions moved past them.

So on such an error: every assigned partition is put back where processing stands (the
ledger's processed position, else its committed offset), and each is then read on its
own, up to the bad batch; the one that raises again is
paused ("held"), reported by `session_consumer_partition_unreadable` and logged. It stays
held, at that position, until the partition is assigned anew (a rebalance or a
restart, which meets the batch again if it is still unreadable). Its lag grows, so the
lag alert fires too.

Held rather than skipped: the usual cause is the reader's (a codec missing, the issue's
crash loop) and skipping would lose data for good, while the batch's end offset, needed
to skip it exactly, is what the error hides. Kafka's own consumer also stops there.
"""

import gzip
import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cramjam
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

log = logging.getLogger(__name__)

PROBE_MS = 500
"""How long each partition is read for on its own, once a batch proved unreadable."""

UNREADABLE: tuple[type[BaseException], ...] = (
    CorruptRecordException,
    UnsupportedCodecError,
    cramjam.DecompressionError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
)

Batch = dict[TopicPartition, list[ConsumerRecord]]


def reason_of(exc: BaseException) -> str:
    """The `reason` label: what kind of unreadable."""
    if isinstance(exc, CorruptRecordException):
        return "corrupt"
    if isinstance(exc, UnsupportedCodecError):
        return "unsupported_codec"
    return "decompression"


@dataclass(frozen=True)
class Held:
    topic: str
    partition: int
    reason: str


@dataclass
class Fetcher:
    """Wraps one consumer's getmany; `held` are the partitions paused on an unreadable batch.
    `processed(tp)` is where processing of `tp` stands, None when nothing was processed
    since its assignment (then its committed offset is)."""

    auto_offset_reset: str = "earliest"
    processed: Callable[[TopicPartition], int | None] = lambda tp: None
    held: dict[TopicPartition, str] = field(default_factory=dict)

    def unreadable(self) -> Iterable[Held]:
        return [Held(tp.topic, tp.partition, reason) for tp, reason in self.held.items()]

    async def getmany(
        self, consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int
    ) -> Batch:
        if self.held:
            # A new assignment resumes every partition: what is not paused is not held.
            paused = consumer.paused()
            self.held = {tp: r for tp, r in self.held.items() if tp in paused}
        try:
            batch: Batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except UNREADABLE as exc:
            log.warning(
                "unreadable record batch, finding its partition", extra={"error": repr(exc)}
            )
            return await self._isolate(consumer, max_records)
        return batch

    async def _isolate(self, consumer: AIOKafkaConsumer, max_records: int) -> Batch:
        partitions = [tp for tp in consumer.assignment() if tp not in self.held]
        for tp in partitions:
            await self._rewind(consumer, tp)
        out: Batch = {}
        for tp in partitions:
            records = await self._read_alone(consumer, tp, max_records)
            if records:
                out[tp] = records
        return out

    async def _read_alone(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, limit: int
    ) -> list[ConsumerRecord]:
        """`tp`'s records up to an unreadable batch, one per call: aiokafka drops what one
        call had taken when the batch after it raises, so each call takes a single record."""
        records: list[ConsumerRecord] = []
        while len(records) < limit:
            try:
                got = await consumer.getmany(tp, timeout_ms=PROBE_MS, max_records=1)
            except UNREADABLE as exc:
                self._hold(consumer, tp, exc)
                break
            if not got:
                break
            records.extend(got[tp])
        return records

    async def _rewind(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        position = self.processed(tp)
        if position is not None:
            consumer.seek(tp, position)
            return
        try:
            committed = await consumer.committed(tp)
        except KafkaError as exc:
            # Left where it is: what the failed call had taken from it is redelivered
            # after the next restart or rebalance, as anything uncommitted is.
            log.warning(
                "cannot read the committed offset to rewind",
                extra={"topic": tp.topic, "partition": tp.partition, "error": repr(exc)},
            )
            return
        if committed is not None:
            consumer.seek(tp, committed)
        elif self.auto_offset_reset == "earliest":
            await consumer.seek_to_beginning(tp)
        # With `latest` and nothing committed, the start is unknown: left where it is.

    def _hold(self, consumer: AIOKafkaConsumer, tp: TopicPartition, exc: BaseException) -> None:
        consumer.pause(tp)
        self.held[tp] = reason_of(exc)
        log.error(
            "partition held: a record batch cannot be read",
            extra={
                "topic": tp.topic,
                "partition": tp.partition,
                "reason": self.held[tp],
                "error": repr(exc),
            },
        )
