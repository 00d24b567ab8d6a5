"""Which records of a batch repeat a session that counts elsewhere: the dedup state.

Three layers, each asked only about what the one before let through:
1. the partition's log window (consumer/logwindow.py): a function of the log alone, so
   same-key repeats count once through any restart, crash or rebalance. It is read back
   from Kafka (consumer/restore.py) when a partition's counting resumes somewhere new;
2. with `--dedup-store`, the claim store shared by all replicas (consumer/claims.py):
   repeats under other keys, on other partitions and replicas, count once;
3. without it, the worker's own window of counted ids (consumer/dedup.py), best effort:
   a repeat on another partition counts once only if both copies meet on this process
   while the first is in its window.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from consumer.claims import ClaimStore, PartitionClaims, StoreRefused, StoreUnavailable
from consumer.dedup import DedupWindow
from consumer.logwindow import LogWindows, Range
from consumer.metrics import ConsumerMetrics
from consumer.pipeline import DecodedBatch, Partition, in_log
from consumer.restore import LogReader
from consumer.settings import StoreSettings

log = logging.getLogger(__name__)

STORE_RETRY = 1.0
"""Seconds between pings of an unreachable claim store."""

Decode = Callable[[dict[TopicPartition, list[ConsumerRecord]]], DecodedBatch]


STORE_YIELDS = 10
"""Event-loop turns a claim task needs to put its request on the wire."""


async def _let_it_go_out() -> None:
    for _ in range(STORE_YIELDS):
        await asyncio.sleep(0)


def _claim(
    tp: Partition, ids: list[str], offsets: list[int], repeats: list[int]
) -> tuple[list[int], PartitionClaims] | None:
    """What a partition's events claim: all but the log window's repeats."""
    if not repeats:
        keep = list(range(len(ids)))
        return (keep, PartitionClaims(tp[0], tp[1], offsets, ids)) if ids else None
    skip = set(repeats)
    keep = [i for i in range(len(ids)) if i not in skip]
    if not keep:
        return None
    return keep, PartitionClaims(tp[0], tp[1], [offsets[i] for i in keep], [ids[i] for i in keep])


def open_store(settings: StoreSettings | None, group_id: str) -> ClaimStore | None:
    """The claim store of `--dedup-store`, its keys apart for each consumer group."""
    if settings is None:
        return None
    from consumer.redisclaims import connect  # noqa: PLC0415  # redis only when asked for

    return connect(settings, f"session-metrics:{group_id}:")


class Repeats:
    def __init__(
        self,
        window: int,
        decode: Decode,
        metrics: ConsumerMetrics,
        store: ClaimStore | None = None,
        reader: LogReader | None = None,
    ) -> None:
        self.windows = LogWindows(window)
        self.cross = DedupWindow(window) if store is None else None
        self.store = store
        self._decode = decode
        self._metrics = metrics
        self.reader = reader
        self._fresh: set[Partition] = set()
        """Assigned partitions whose window is not yet prepared for their first batch."""
        self.store_down = False

    # --- assignment and read-back ------------------------------------------------

    def assigned(self, partitions: Iterable[Partition]) -> None:
        tps = set(partitions)
        self._fresh |= tps
        self.windows.keep_only(tps)

    def forget(self, ids: list[str]) -> None:
        """Withdrawn counts: their ids leave the worker's window (the ledger calls this)."""
        if self.cross is not None:
            self.cross.forget(ids)

    async def prepare(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Before a partition's first batch since its assignment: read back what its log
        window lacks, counting nothing."""
        ranges: dict[TopicPartition, list[Range]] = {}
        for tp, records in batch.items():
            if tp in self._fresh:
                self._fresh.discard(tp)
                wanted = self.windows.prepare(tp, records[0].offset)
                if wanted:
                    ranges[tp] = wanted
        if not ranges or self.reader is None:
            return
        started = time.perf_counter()
        events, read = await self.reader.read(ranges, self._events)
        for (tp, (start, end)), (offsets, ids) in events.items():
            self.windows.fill(tp, start, end, offsets, ids)
        seconds = time.perf_counter() - started
        self._metrics.restore_seconds.observe(seconds)
        self._metrics.restored_records.inc(read)
        log.info(
            "dedup window read back",
            extra={
                "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in ranges),
                "records": read,
                "seconds": round(seconds, 3),
            },
        )

    def _events(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> tuple[list[int], list[str]]:
        _, decoded = self._decode({tp: records}).partitions[tp]
        return [records[p].offset for p in decoded.positions], [e.id for e in decoded.events]

    # --- the verdict -------------------------------------------------------------

    async def judge(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> tuple[DecodedBatch, dict[Partition, list[int]]]:
        """Decode `batch` and find its repeats: positions (in each partition's events)
        the log window and the claim store call repeats. A partition at a time: its
        claims go out to the store while the next partition decodes, so the worker's
        CPU and the store's overlap. Raises StoreUnavailable with the batch forgotten
        again (nothing of it counts)."""
        decoded = DecodedBatch({}, [])
        repeats: dict[Partition, list[int]] = {}
        asked: list[tuple[Partition, list[int], asyncio.Task[list[list[bool]]]]] = []
        started = time.perf_counter()
        try:
            for tp, records in batch.items():
                part = self._decode({tp: records})
                decoded.partitions.update(part.partitions)
                decoded.rejected.extend(part.rejected)
                c = in_log(part, self.windows)[tp]
                repeats[tp] = c.repeats
                if self.store is not None and (claim := _claim(tp, c.ids, c.offsets, c.repeats)):
                    keep, claims = claim
                    asked.append((tp, keep, asyncio.create_task(self.store.claim([claims]))))
                    await _let_it_go_out()
            for tp, keep, task in asked:
                (counts,) = await task
                found = [i for i, ok in zip(keep, counts, strict=True) if not ok]
                if found:
                    repeats[tp] = sorted([*repeats[tp], *found])
        except StoreUnavailable:
            for _, _, task in asked:
                task.cancel()
            await asyncio.gather(*(t for _, _, t in asked), return_exceptions=True)
            for tp, records in batch.items():
                self.windows.rewind(tp, records[0].offset)
            self._metrics.store_errors.inc()
            raise
        if asked:
            self._metrics.store_seconds.observe(time.perf_counter() - started)
        return decoded, repeats

    # --- an unreachable store ----------------------------------------------------

    async def check_store(self) -> None:
        """At start-up: a store that refuses us stops the worker (StoreRefused); one that
        does not answer yet is waited for, with every partition held."""
        if self.store is None:
            return
        try:
            await self.store.ping()
        except StoreRefused:
            raise
        except StoreUnavailable as exc:
            self.lost_store(exc)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def lost_store(self, error: StoreUnavailable) -> None:
        if not self.store_down:
            # A store that starts refusing us (a rotated password) is held for too: a
            # restart with the new secret resumes exactly, nothing is lost meanwhile.
            refused = isinstance(error, StoreRefused)
            log.error(
                "dedup store refuses us: holding every partition until it answers"
                if refused
                else "dedup store unreachable: holding every partition until it answers",
                extra={"error": str(error)},
            )
        self.store_down = True
        self._metrics.store_up.set(0)

    async def hold_until_store_answers(self, consumer: AIOKafkaConsumer) -> None:
        """One round of the hold: every assigned partition paused (a new assignment too),
        one ping; all resumed once the store answers. The loop keeps polling meanwhile,
        so the group does not take the worker for dead."""
        assert self.store is not None
        consumer.pause(*consumer.assignment())
        try:
            await self.store.ping()
        except StoreUnavailable:
            await asyncio.sleep(STORE_RETRY)
            return
        consumer.resume(*consumer.assignment())
        self.store_down = False
        self._metrics.store_up.set(1)
        log.info("dedup store reachable again: counting resumes")
