"""The Worker owns the consumer lifecycle: start, loop, drain, commit, stop.

Each batch flows one way: records -> decode -> (dead-letter) -> dedup ->
aggregate -> metrics -> commit. Offsets are committed only for records whose
metrics are applied (at least once); everything from dedup to the metric
update is synchronous, so a batch is applied whole or not at all.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumer.aggregate import Buckets, aggregate, newest_event_time
from consumer.deadletter import DeadLetter, Rejected, check_topic
from consumer.decode import Decoded, Invalid, decode_many
from consumer.dedup import DedupWindow
from consumer.envelope import envelope_of
from consumer.fetch import Fetcher
from consumer.logs import RateLimit
from consumer.metrics import OUTCOMES, ConsumerMetrics, PartitionLag
from consumer.rebalance import CommitOnRevoke
from consumer.security import client_kwargs, raise_if_refused
from consumer.settings import Settings

log = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0
"""Seconds between broker reachability checks (for /readyz) and position look-ups."""
FETCH_YIELDS = 3
"""Event-loop turns aiokafka's fetch task needs to put its next request on the wire."""
DLQ_MAX_REQUEST_BYTES = 64 * 1024 * 1024
CLOSE_TIMEOUT = 2.0
"""Seconds for each step after the drain: the final commit, stopping each Kafka client."""


@dataclass(slots=True)
class Progress:
    """Where this worker is in one partition."""

    position: int | None = None
    """Next offset to process (last processed + 1)."""
    last_timestamp: float | None = None
    """Kafka timestamp (s) of the last processed record."""
    committed: int | None = None
    """Last offset committed by this worker."""
    fetch_position: int | None = None
    """The consumer's position when last probed (PROBE_INTERVAL): for lag only, never committed."""


class Worker:
    """Consumes `settings.topic` into `metrics` until `stop()`.

    Keyword-only: `settings` (the frozen Settings) and optionally `metrics`
    (tests pass their own to read values back).
    """

    def __init__(self, *, settings: Settings, metrics: ConsumerMetrics | None = None) -> None:
        self.settings = settings
        self.group_id = settings.group_id
        buckets = Buckets(settings.duration_buckets, settings.tokens_buckets, settings.cost_buckets)
        self.buckets = buckets
        self.metrics = metrics or ConsumerMetrics(buckets, settings.max_series)
        self.metrics.register_lag(self.partition_lag)
        self.fetcher = Fetcher(settings.auto_offset_reset)
        self.metrics.register_unreadable(self.fetcher.unreadable)
        self.dedup = DedupWindow(settings.dedup_window)
        self.batch_lock = asyncio.Lock()
        self.connected = False
        self.heartbeat = time.monotonic()
        self._progress: dict[TopicPartition, Progress] = {}
        self._stopping = asyncio.Event()
        self._invalid_logs = RateLimit()
        self._newest_event = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letter: DeadLetter | None = None

    # --- state read by the HTTP server -------------------------------------

    @property
    def ready(self) -> bool:
        return self.connected and bool(self._consumer and self._consumer.assignment())

    def healthy(self) -> bool:
        """False only when the consume loop has stopped iterating for `stall_timeout`.

        Before the loop starts (still waiting for Kafka) the process is healthy:
        restarting it would not bring the broker back.
        """
        if self._consumer is None:
            return True
        return time.monotonic() - self.heartbeat < self.settings.stall_timeout

    def partition_lag(self) -> Iterable[PartitionLag]:
        consumer = self._consumer
        if consumer is None:
            return []
        now, out = time.time(), []
        for tp in consumer.assignment():
            progress, highwater = self._progress.get(tp), self._end_offset(consumer, tp)
            if progress is None or highwater is None:
                continue
            # The consumer's position can be ahead of the last record processed: past
            # a transaction's commit marker, a control record no batch ever shows.
            known = [p for p in (progress.position, progress.fetch_position) if p is not None]
            if not known:
                continue
            position = max(known)
            behind = max(0, highwater - position)
            seconds = None
            if behind == 0:
                seconds = 0.0
            elif progress.last_timestamp is not None:
                seconds = max(0.0, now - progress.last_timestamp)
            out.append(PartitionLag(tp.topic, tp.partition, behind, seconds))
        return out

    def _end_offset(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        """Where reading this partition ends: under read_committed the last stable offset
        (records of open transactions cannot be read yet), else the highwater."""
        if self.settings.isolation_level == "read_committed":
            stable: int | None = consumer.last_stable_offset(tp)
            if stable is not None and stable >= 0:
                return stable
        end: int | None = consumer.highwater(tp)
        return end

    # --- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and close (signal handlers call this)."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect (retrying), consume until stop(), drain within the timeout, commit, close."""
        if not await self._start():
            return
        assert self._consumer is not None
        loop_task = asyncio.create_task(self._consume(), name="consume")
        probe_task = asyncio.create_task(self._probe(), name="probe")
        try:
            stopped = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({loop_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if loop_task.done():
                loop_task.result()  # the loop only ends on its own by raising
            await self._drain(loop_task)
            await self._bounded(self.commit_processed(self._consumer.assignment()), "final commit")
        finally:
            probe_task.cancel()
            loop_task.cancel()
            await asyncio.gather(probe_task, loop_task, return_exceptions=True)
            await self._close()

    async def _drain(self, loop_task: "asyncio.Task[None]") -> None:
        try:
            await asyncio.wait_for(asyncio.shield(loop_task), self.settings.drain_timeout)
        except TimeoutError:
            # The cut-off batch's offsets were never recorded as processed,
            # so the final commit below cannot commit it.
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            log.warning(
                "drain timeout: in-flight batch abandoned, it will be redelivered",
                extra={"drain_timeout": self.settings.drain_timeout},
            )

    async def _start(self) -> bool:
        s = self.settings
        kwargs = client_kwargs(s.kafka)
        delay = 0.5
        while not self._stopping.is_set():
            # A refused certificate or password raises BrokerRefused: retrying cannot help.
            await raise_if_refused(s.kafka)
            consumer = AIOKafkaConsumer(
                group_id=s.group_id,
                enable_auto_commit=False,
                auto_offset_reset=s.auto_offset_reset,
                isolation_level=s.isolation_level,
                session_timeout_ms=s.session_timeout_ms,
                heartbeat_interval_ms=s.heartbeat_interval_ms,
                max_partition_fetch_bytes=max(1048576, s.max_message_bytes),
                **kwargs,
            )
            try:
                await consumer.start()
            except KafkaConnectionError as exc:
                await consumer.stop()
                log.warning(
                    "cannot reach Kafka, retrying",
                    extra={
                        "bootstrap_servers": s.kafka.bootstrap_servers,
                        "error": str(exc),
                        "retry_in": delay,
                    },
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            self._consumer = consumer
            if s.dlq_topic:
                # Before subscribing: a consumer not yet joining its group stops at once.
                await self._start_dead_letter(s.dlq_topic, kwargs)
            self.heartbeat = time.monotonic()
            consumer.subscribe(list(s.topic), listener=CommitOnRevoke(self))
            self.connected = True
            log.info(
                "consumer started",
                extra={"topics": list(s.topic), "group_id": s.group_id, "dlq_topic": s.dlq_topic},
            )
            return True
        return False

    async def _start_dead_letter(self, topic: str, kwargs: dict[str, Any]) -> None:
        self._producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=False,
            # An oversized record (too_large) must still fit in its dead-letter copy;
            # the dead-letter topic's own limit has the last word (then it is a
            # counted dead-letter failure).
            max_request_size=DLQ_MAX_REQUEST_BYTES,
            **kwargs,
        )
        try:
            await self._producer.start()
            await check_topic(self._producer, topic)
        except BaseException:
            await self._close()  # the consumer is started: stop it, not leak it
            raise
        self._dead_letter = DeadLetter(self._producer, topic)

    async def _close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                await self._bounded(_stop_client(client), f"{type(client).__name__} stop")
        self.connected = False
        # What this process counted, for operators reading why totals moved (and for
        # tests that stop real processes): its counters vanish with it.
        count = self.metrics.operational.get_sample_value
        log.info(
            "consumer stopped",
            extra={
                outcome: int(count("session_consumer_messages_total", {"outcome": outcome}) or 0)
                for outcome in OUTCOMES
            }
            | {"cost": self.metrics.business.grand_total()[1]},
        )

    async def _bounded(self, step: Awaitable[None], what: str) -> None:
        """Give a shutdown step CLOSE_TIMEOUT: an unanswering broker would hold it for
        aiokafka's 40 s request timeout (the producer's stop waits for its in-flight
        dead-letter sends). Whatever was not committed is redelivered, never lost."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await step
        except TimeoutError:
            log.warning("shutdown step timed out", extra={"step": what, "timeout": CLOSE_TIMEOUT})

    # --- the loop --------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            batch = await self.fetcher.getmany(
                consumer, timeout_ms=500, max_records=self.settings.max_batch_records
            )
            if batch:
                # getmany() drained the fetch buffer, which wakes aiokafka's fetch task;
                # let it send the next fetch before this batch takes the CPU for tens of
                # ms, so the broker prepares it meanwhile (measured: ~180k -> ~205k/s).
                for _ in range(FETCH_YIELDS):
                    await asyncio.sleep(0)
                async with self.batch_lock:
                    await self._process(batch)

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        started = time.perf_counter()
        records = list(chain.from_iterable(batch.values()))
        decoded = decode_many(
            [r.value for r in records],
            [r.headers for r in records],
            self.settings.max_message_bytes,
            strict_keys=self.settings.reject_duplicate_keys,
            envelope=envelope_of(self.settings),
        )
        rejected = _rejected(batch, decoded.invalid) if decoded.invalid else []
        dead = await self._send_dead_letters(rejected)
        # From here to the end of _apply nothing awaits: the batch lands whole.
        self._apply(batch, decoded, rejected, dead)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_records.observe(sum(map(len, batch.values())))
        # All assigned partitions, so a commit that failed earlier is retried now.
        await self.commit_processed(self._assignment())

    async def _send_dead_letters(self, rejected: list[Rejected]) -> tuple[int, int]:
        if not rejected or self._dead_letter is None:
            return 0, 0
        return await self._dead_letter.send_all(rejected)

    def _apply(
        self,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        decoded: Decoded,
        rejected: list[Rejected],
        dead: tuple[int, int],
    ) -> None:
        m, events = self.metrics, decoded.events
        duplicates = self.dedup.add_all([e.id for e in events])
        if duplicates:
            skip = set(duplicates)
            events = [e for i, e in enumerate(events) if i not in skip]
        m.business.apply(aggregate(events, self.buckets))
        newest = newest_event_time(events)
        if newest is not None and newest > self._newest_event:
            self._newest_event = newest
            m.newest_event.set(newest)
        m.messages.labels("counted").inc(len(events))
        m.messages.labels("duplicate").inc(len(duplicates))
        m.messages.labels("tombstone").inc(decoded.tombstones)
        m.messages.labels("skipped").inc(decoded.skipped)
        for kind, n in decoded.kinds.items():
            m.value_format.labels(kind.value).inc(n)
        m.messages.labels("invalid").inc(len(rejected))
        m.dead_lettered.inc(dead[0])
        m.dead_letter_failures.inc(dead[1])
        for r in rejected:
            m.invalid.labels(r.invalid.reason.value).inc()
        self._log_invalid(rejected)
        for tp, partition_records in batch.items():
            progress = self._progress.setdefault(tp, Progress())
            last = partition_records[-1]
            progress.position = last.offset + 1
            progress.last_timestamp = last.timestamp / 1000.0
        m.mark_processed()

    def _log_invalid(self, rejected: list[Rejected]) -> None:
        for r in rejected:
            if self._invalid_logs.allow():
                log.warning(
                    "invalid message",
                    extra={
                        "topic": r.topic,
                        "partition": r.partition,
                        "offset": r.offset,
                        "reason": r.invalid.reason.value,
                        "detail": r.invalid.detail[:200],
                        "suppressed_since_last": self._invalid_logs.take_suppressed(),
                    },
                )

    # --- offsets -----------------------------------------------------------------

    async def commit_processed(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit the processed position of `partitions` where it moved since the last commit."""
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {}
        for tp in partitions:
            p = self._progress.get(tp)
            if p is not None and p.position is not None and p.position != p.committed:
                offsets[tp] = OffsetAndMetadata(p.position, "")
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            self.metrics.commit_failures.inc()
            log.error("commit failed", extra={"error": repr(exc), "partitions": len(offsets)})
            return
        self.metrics.commits.inc()
        for tp, meta in offsets.items():
            self._progress[tp].committed = meta.offset

    def _assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        self.metrics.assigned_partitions.set(len(assigned))

    def forget(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self._progress.pop(tp, None)
        self.metrics.assigned_partitions.set(0)

    # --- background probe ------------------------------------------------------------

    async def _probe(self) -> None:
        """Keep `connected` true to the broker and learn positions of idle partitions."""
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await asyncio.wait_for(consumer.topics(), PROBE_INTERVAL)
                self.connected = True
                await self._learn_positions(consumer)
            except (KafkaError, TimeoutError) as exc:
                if self.connected:
                    log.warning("lost contact with Kafka", extra={"error": repr(exc)})
                self.connected = False
            await asyncio.sleep(PROBE_INTERVAL)

    async def _learn_positions(self, consumer: AIOKafkaConsumer) -> None:
        # A partition with nothing to read yet has no processed record; its
        # fetch position still tells the lag (0 once caught up). So does one whose
        # last record is followed by a transaction marker, which is never returned.
        for tp in consumer.assignment():
            progress = self._progress.setdefault(tp, Progress())
            with contextlib.suppress(KafkaError, AssertionError, TimeoutError):
                progress.fetch_position = await asyncio.wait_for(consumer.position(tp), 1.0)


def _rejected(
    batch: dict[TopicPartition, list[ConsumerRecord]], invalid: list[tuple[int, Invalid]]
) -> list[Rejected]:
    """The records behind `invalid`, whose positions count across the batch's partitions."""
    records = list(chain.from_iterable(batch.values()))
    out = []
    for position, why in invalid:
        rec = records[position]
        out.append(
            Rejected(
                rec.topic, rec.partition, rec.offset, rec.key, rec.value, tuple(rec.headers), why
            )
        )
    return out


async def _stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop an aiokafka client; never let its internals abort the rest of the shutdown."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        # With the broker gone, aiokafka's fetcher.close() re-raises the
        # CancelledError of its own retry task. Swallow only that one: if this
        # task itself is being cancelled, propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("kafka client stopped uncleanly", extra={"client": type(client).__name__})
    except KafkaError as exc:
        log.warning(
            "kafka client stopped uncleanly",
            extra={"client": type(client).__name__, "error": repr(exc)},
        )
