"""Which records of a batch repeat a session that counts elsewhere: the dedup state.

Two layers, the second asked only about what the first let through:
1. the partition's log window (consumer/logwindow.py): a function of the log alone, so
   same-key repeats count once through any restart, crash or rebalance. It is read back
   from Kafka (consumer/restore.py) when a partition's counting resumes somewhere new;
2. with `--dedup-store`, the claim store shared by all replicas (consumer/claims.py):
   repeats under other keys, on other partitions and replicas, count once. Without it,
   best effort: a repeat on another partition counts once only if both copies meet in
   the log windows of this worker (the first still in its partition's window).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from consumer.claims import ClaimStore, PartitionClaims, StoreRefused, StoreUnavailable
from consumer.logwindow import LogWindows, Range
from consumer.metrics import ConsumerMetrics
from consumer.pipeline import DecodedBatch, Partition, in_log
from consumer.restore import LogReader
from consumer.settings import StoreSettings

log = logging.getLogger(__name__)

STORE_RETRY = 1.0
"""Seconds between pings of an unreachable claim store."""

Batch = dict[TopicPartition, list[ConsumerRecord]]
Decode = Callable[[Batch], DecodedBatch]


STORE_YIELDS = 10
"""Event-loop turns a claim task needs to put its request on the wire."""


async def _let_it_go_out() -> None:
    for _ in range(STORE_YIELDS):
        await asyncio.sleep(0)


def _claim(
    tp: Partition, ids: list[str], offsets: Sequence[int], repeats: list[int]
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


@dataclass(slots=True)
class Verdict:
    """A batch decoded and judged by its log windows; its claims perhaps still out."""

    batch: Batch
    generation: int
    """The ledger's generation when the batch was fetched: a rebalance since voids it."""
    decoded: DecodedBatch
    repeats: dict[Partition, list[int]]
    asked: list[tuple[Partition, list[int], "asyncio.Task[list[bool]]"]]
    """Per partition: the positions it claimed, and the store's answers to come."""

    @property
    def ready(self) -> bool:
        """Nothing to wait for (no claim store, or nothing to claim)."""
        return not self.asked

    def starts(self) -> dict[TopicPartition, int]:
        return {tp: records[0].offset for tp, records in self.batch.items()}


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

    async def prepare(self, batch: Batch) -> None:
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

    async def start(self, batch: Batch, generation: int) -> "Verdict":
        """Decode `batch` and judge it by its log windows (read back first where a
        partition is new here), a partition at a time; each partition's claims go out to
        the store while the next one decodes. The claims' answers are not waited for: the
        worker fetches and starts the next batch meanwhile, so its CPU and the store's
        overlap, then `settle`s this one."""
        await self.prepare(batch)
        verdict = Verdict(batch, generation, DecodedBatch({}, []), {}, [])
        for tp, records in batch.items():
            part = self._decode({tp: records})
            verdict.decoded.partitions.update(part.partitions)
            verdict.decoded.rejected.extend(part.rejected)
            c = in_log(part, self.windows)[tp]
            verdict.repeats[tp] = c.repeats if self.store is not None else c.without_store()
            if self.store is not None and (claim := _claim(tp, c.ids, c.offsets, c.repeats)):
                keep, claims = claim
                verdict.asked.append((tp, keep, asyncio.create_task(self._claim(claims))))
                await _let_it_go_out()
        return verdict

    async def _claim(self, claims: PartitionClaims) -> list[bool]:
        assert self.store is not None
        started = time.perf_counter()
        (answers,) = await self.store.claim([claims])
        self._metrics.store_seconds.observe(time.perf_counter() - started)
        return answers

    async def settle(self, verdict: "Verdict") -> tuple[DecodedBatch, dict[Partition, list[int]]]:
        """The batch's events and, per partition, the positions (in its events) that the
        log window and the claim store call repeats. Raises StoreUnavailable with the
        batch forgotten again (nothing of it counts)."""
        repeats = verdict.repeats
        try:
            for tp, keep, task in verdict.asked:
                answers = await task
                if all(answers):  # the usual answer, checked in C: no repeat here
                    continue
                found = [i for i, ok in zip(keep, answers, strict=True) if not ok]
                if found:
                    repeats[tp] = sorted([*repeats[tp], *found])
        except StoreUnavailable:
            await self.abandon(verdict)
            self._metrics.store_errors.inc()
            raise
        verdict.asked.clear()
        return verdict.decoded, repeats

    async def abandon(self, verdict: "Verdict") -> None:
        """The batch will not be counted: its claims are called off (those already made
        stay, at its own positions: its next reader counts them) and its records leave
        the log windows."""
        tasks = [task for _, _, task in verdict.asked]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        verdict.asked.clear()
        for tp, records in verdict.batch.items():
            self.windows.rewind(tp, records[0].offset)

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
