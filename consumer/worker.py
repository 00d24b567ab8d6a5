"""The Worker: I/O only. Fetches batches, dead-letters, commits what the ledger allows.

Each batch flows one way: records -> decode -> dedup (consumer/repeats.py) ->
(dead-letter) -> aggregate (consumer/pipeline.py) -> pending counts per partition
(consumer/ledger.py). A served scrape of /metrics publishes them and makes their
offsets committable; a committer task commits them off the scrape's path. With
`--commit-after batch` each batch is published and committed at once instead.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from consumer.aggregate import Buckets
from consumer.claims import StoreUnavailable
from consumer.deadletter import DeadLetter, check_topic
from consumer.envelope import envelope_of
from consumer.fetch import Fetcher
from consumer.ledger import Fold, Ledger
from consumer.logs import RateLimit
from consumer.metrics import (
    HISTOGRAM_LABELS,
    OUTCOMES,
    ConsumerMetrics,
    PartitionLag,
    ScrapeState,
)
from consumer.offsets import Committer
from consumer.pipeline import BatchResult, DecodedBatch, Rejected, count, decode_batch
from consumer.rebalance import HandOver
from consumer.repeats import Repeats, Verdict, open_store
from consumer.restore import LogReader
from consumer.scrapers import Scrapers, caught_up
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

Batch = dict[TopicPartition, list[ConsumerRecord]]


class Worker:
    """Consumes `settings.topic` into `metrics` until `stop()`.

    Keyword-only: `settings` (the frozen Settings) and optionally `metrics`
    (tests pass their own to read values back).
    """

    def __init__(self, *, settings: Settings, metrics: ConsumerMetrics | None = None) -> None:
        self.settings = settings
        self.group_id = settings.group_id
        buckets = Buckets(
            settings.duration_buckets,
            settings.tokens_buckets,
            settings.cost_buckets,
            native=settings.native_histograms,
        )
        self.buckets = buckets
        histogram_labels = HISTOGRAM_LABELS[settings.histogram_labels]
        self.metrics = metrics or ConsumerMetrics(
            buckets, settings.max_series, histogram_labels=histogram_labels
        )
        self.repeats = Repeats(
            settings.dedup_window,
            self._decode,
            self.metrics,
            open_store(settings.store, settings.group_id),
        )
        self.scrapers = Scrapers(settings.scraper_grace_intervals)
        self.ledger = Ledger(self.metrics.business.apply, on_settled=self._scrapes_settled)
        self.metrics.register_lag(self.partition_lag)
        self.fetcher = Fetcher(settings.auto_offset_reset, self._processed_position)
        self.metrics.register_unreadable(self.fetcher.unreadable)
        self.metrics.register_scrape_state(self.scrape_state)
        self.batch_lock = asyncio.Lock()
        self.connected = False
        self.heartbeat = time.monotonic()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        """A second stop signal: do not wait for scrapers."""
        self._commit_wanted = asyncio.Event()
        self._invalid_logs = RateLimit()
        self._newest_event = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._committer: Committer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reader: LogReader | None = None
        self._dead_letter: DeadLetter | None = None
        self._in_flight: Verdict | None = None
        """A judged batch whose claims are still out (with a claim store): counted once
        the next batch is started, or when no next batch comes."""

    # --- state read by the HTTP server -------------------------------------

    @property
    def ready(self) -> bool:
        assigned = bool(self._consumer and self._consumer.assignment())
        return self.connected and assigned and not self.repeats.store_down

    def healthy(self) -> bool:
        """False only when the consume loop has stopped iterating for `stall_timeout`.

        Before the loop starts (still waiting for Kafka) the process is healthy:
        restarting it would not bring the broker back.
        """
        if self._consumer is None:
            return True
        return time.monotonic() - self.heartbeat < self.settings.stall_timeout

    def fold(self) -> Fold:
        """A full scrape begins: publish every pending count (the HTTP server calls this)."""
        fold = self.ledger.fold()
        self.metrics.mark_published()
        return fold

    def served(self, fold: Fold, who: str) -> None:
        """`who`'s scrape response is written: its positions may be committed now."""
        self.ledger.served(fold)
        self.scrapers.served(who, fold.publication)
        self.metrics.scrapers.set(len(self.scrapers.active()))
        self._commit_wanted.set()

    def abandoned(self, fold: Fold) -> None:
        """That scrape's response never got out whole."""
        self.ledger.abandoned(fold)

    def _processed_position(self, tp: TopicPartition) -> int | None:
        """Where processing of `tp` stands (None: nothing processed since its assignment).
        A batch in flight counts as processed: it is counted, or else sought back to."""
        if self._in_flight is not None and (records := self._in_flight.batch.get(tp)):
            return int(records[-1].offset) + 1
        return self.ledger.state(tp).processed if tp in self.ledger else None

    def _scrapes_settled(self) -> None:
        if self._committer is not None:
            self._committer.scrapes_settled()

    def scrape_state(self) -> ScrapeState:
        return ScrapeState(self.ledger.pending_records(), self.ledger.seconds_since_served())

    def partition_lag(self) -> Iterable[PartitionLag]:
        consumer = self._consumer
        if consumer is None:
            return []
        now, out = time.time(), []
        for tp, state in self.ledger.states():
            end = self._end_offset(consumer, tp)
            # The fetch position can be past the last processed record: a transaction's
            # commit marker, or aborted records under read_committed, are never processed.
            known = [p for p in (state.processed, state.fetch_position) if p is not None]
            if end is None or not known:
                continue
            behind = max(0, end - max(known))
            seconds = None
            if behind == 0:
                seconds = 0.0
            elif state.last_timestamp is not None:
                seconds = max(0.0, now - state.last_timestamp)
            out.append(PartitionLag(tp[0], tp[1], behind, seconds))
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
        """Ask the loop to finish its batch, commit and close (signal handlers call this);
        asked again, stop waiting for scrapers to fetch the final totals."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def final_scrapes(self) -> None:
        """Out of the group, with nothing more to publish: keep serving the final totals
        until every active scraper has fetched them (consumer/scrapers.py)."""
        publication, timeout = self.ledger.publication, self.settings.handover_timeout
        behind = self.scrapers.behind(publication)
        if not behind or not timeout:
            return
        log.info("waiting for scrapers to fetch the final totals", extra={"scrapers": behind})
        started = time.monotonic()
        left = await caught_up(self.scrapers, publication, timeout, self._hurry)
        log.info(
            "final totals served" if not left else "scrapers did not fetch the final totals",
            extra={"seconds": round(time.monotonic() - started, 3), "behind": left},
        )

    async def run(self) -> None:
        """Connect (retrying), consume until stop(), drain within the timeout, commit, close.

        What no served scrape has shown is not committed: it dies with the process
        and the partitions' next owners count it again.
        """
        if not await self._start():
            await self._close()  # stopped before Kafka answered: still log what it counted
            return
        assert self._committer is not None
        tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._probe(), name="probe"),
            asyncio.create_task(self._commit_when_served(), name="commit"),
        ]
        try:
            stopped = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({tasks[0], stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if tasks[0].done():
                tasks[0].result()  # the loop only ends on its own by raising
            await self._drain(tasks[0])
            for task in tasks[1:]:  # a commit hung in the committer must not hold the last one
                task.cancel()
            await _ended(tasks[1:])
            # From here scrapes show what is published and publish nothing more: what
            # they show is what the final commit covers.
            self.ledger.freeze()
            await self._committer.after_scrapes_in_flight()
            await self._bounded(self._committer.commit_served(published=True), "final commit")
        finally:
            for task in tasks:
                task.cancel()
            await _ended(tasks)
            await self._close()

    async def _drain(self, loop_task: "asyncio.Task[None]") -> None:
        try:
            await asyncio.wait_for(asyncio.shield(loop_task), self.settings.drain_timeout)
        except TimeoutError:
            # The cut-off batch was never recorded in the ledger, so nothing of it
            # can be committed.
            loop_task.cancel()
            await _ended([loop_task])
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
            self._committer = Committer(consumer, self.ledger, self.metrics)
            await self._start_reader(kwargs)
            if s.dlq_topic:
                # Before subscribing: a consumer not yet joining its group stops at once.
                await self._start_dead_letter(s.dlq_topic, kwargs)
            self.heartbeat = time.monotonic()
            listener = HandOver(
                self.ledger,
                self._committer,
                self.batch_lock,
                self.metrics,
                s.group_id,
                on_assigned=self.repeats.assigned,
            )
            consumer.subscribe(list(s.topic), listener=listener)
            self.connected = True
            log.info(
                "consumer started",
                extra={"topics": list(s.topic), "group_id": s.group_id, "dlq_topic": s.dlq_topic},
            )
            return True
        return False

    async def _start_reader(self, kwargs: dict[str, Any]) -> None:
        """The log windows' reader, and a first word with the claim store (a store that
        refuses us stops the worker here, window or not)."""
        s = self.settings
        try:
            if s.dedup_window:
                self._reader = LogReader(
                    s.isolation_level, max(1048576, s.max_message_bytes), **kwargs
                )
                await self._reader.start()
                self.repeats.reader = self._reader
            await self.repeats.check_store()
        except BaseException:
            await self._close()
            raise

    def _decode(self, batch: Batch) -> DecodedBatch:
        s = self.settings
        return decode_batch(
            batch, s.max_message_bytes, strict_keys=s.reject_duplicate_keys, envelope=envelope_of(s)
        )

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
        pending = self.ledger.pending_records()
        for client in (self._consumer, self._producer):
            if client is not None:
                await self._bounded(_stop_client(client), f"{type(client).__name__} stop")
        if self._reader is not None:
            await self._bounded(self._reader.stop(), "log reader stop")
        await self._bounded(self.repeats.close(), "dedup store close")
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
            | {
                "cost": self.metrics.business.grand_total()[1],
                "records_left_to_next_owner": pending,
            },
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
            if self.repeats.store_down:
                await self.repeats.hold_until_store_answers(consumer)
            batch = await self.fetcher.getmany(
                consumer, timeout_ms=500, max_records=self.settings.max_batch_records
            )
            if not batch:
                await self._settle_in_flight()  # nothing came to overlap with
                continue
            # aiokafka returned these for the assignment of this moment; a revoke from
            # here to the lock withdraws their partitions (and resets the positions).
            generation = self.ledger.generation
            await self._let_fetch_go_out()
            async with self.batch_lock:
                if self.ledger.generation != generation:
                    self._drop(batch)
                else:
                    await self._process(batch, generation)
        await self._settle_in_flight()

    async def _let_fetch_go_out(self) -> None:
        # getmany() drained the fetch buffer, which wakes aiokafka's fetch task;
        # let it send the next fetch before this batch takes the CPU for tens of
        # ms, so the broker prepares it meanwhile (measured: ~180k -> ~205k/s).
        for _ in range(FETCH_YIELDS):
            await asyncio.sleep(0)

    def _drop(self, batch: Batch) -> None:
        """A rebalance came between fetch and processing: counting the batch would count
        partitions another worker now reads from their committed offsets."""
        self.metrics.batches_dropped.inc()
        log.info(
            "batch fetched before a rebalance dropped",
            extra={"records": sum(map(len, batch.values()))},
        )

    async def _process(self, batch: Batch, generation: int) -> None:
        """Start judging `batch`, then count the batch before it, whose claims were out
        while this one was fetched and decoded; this one is counted now if it waits for
        nothing (no claim store), else after the next."""
        started = time.perf_counter()
        verdict = await self.repeats.start(batch, generation)
        earlier, self._in_flight = self._in_flight, None
        if earlier is not None and not await self._count(earlier, then=verdict):
            return
        if verdict.ready:
            await self._count(verdict)
        else:
            self._in_flight = verdict
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _settle_in_flight(self) -> None:
        async with self.batch_lock:
            earlier, self._in_flight = self._in_flight, None
            if earlier is not None:
                await self._count(earlier)

    async def _count(self, verdict: Verdict, then: Verdict | None = None) -> bool:
        """Count a judged batch into the ledger; False if the claim store failed it (and
        `then`, the batch after it, with it: neither counts, both are read again)."""
        batch = verdict.batch
        if verdict.generation != self.ledger.generation:
            await self.repeats.abandon(verdict)
            self._drop(batch)
            return True
        try:
            decoded, repeats = await self.repeats.settle(verdict)
        except StoreUnavailable as exc:
            if then is not None:
                await self.repeats.abandon(then)
            self._hold([verdict] if then is None else [verdict, then], exc)
            return False
        dead = await self._send_dead_letters(decoded.rejected)
        # From here on nothing awaits: the batch lands in the ledger whole.
        result = count(decoded, self.buckets, self.metrics.business.admit, repeats)
        for tp, counted in result.partitions.items():
            self.ledger.record(tp, batch[tp][0].offset, counted)
        self._count_outcomes(result, decoded.rejected, dead)
        self.metrics.batch_records.observe(sum(map(len, batch.values())))
        self.metrics.dedup_ids.set(len(self.repeats.windows))
        if self.settings.commit_after == "batch":
            # Published and committed before the next fetch, as if scraped at once.
            self.ledger.served(self.fold())
            assert self._committer is not None
            await self._committer.commit_served()
        return True

    def _hold(self, verdicts: list[Verdict], error: StoreUnavailable) -> None:
        """The claim store did not answer: nothing of these batches is counted; their
        partitions go back to their first records, and every partition waits for the store."""
        assert self._consumer is not None
        starts: dict[TopicPartition, int] = {}
        for verdict in verdicts:  # in fetch order: the first start of each partition
            starts = verdict.starts() | starts
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)
        self.repeats.lost_store(error)

    async def _send_dead_letters(self, rejected: list[Rejected]) -> tuple[int, int]:
        if not rejected or self._dead_letter is None:
            return 0, 0
        return await self._dead_letter.send_all(rejected)

    def _count_outcomes(
        self, result: BatchResult, rejected: list[Rejected], dead: tuple[int, int]
    ) -> None:
        """Operational counters: what this process did, including counts it may later
        withdraw (a rate, not a total to reconcile; the llm_* series are the totals)."""
        m = self.metrics
        newest = result.newest_event
        if newest is not None and newest > self._newest_event:
            self._newest_event = newest
            m.newest_event.set(newest)
        m.messages.labels("counted").inc(result.total("counted"))
        m.messages.labels("duplicate").inc(result.total("duplicates"))
        m.messages.labels("tombstone").inc(result.total("tombstones"))
        m.messages.labels("skipped").inc(result.total("skipped"))
        for kind, n in result.kinds.items():
            m.value_format.labels(kind.value).inc(n)
        m.messages.labels("invalid").inc(len(rejected))
        m.dead_lettered.inc(dead[0])
        m.dead_letter_failures.inc(dead[1])
        for r in rejected:
            m.invalid.labels(r.invalid.reason.value).inc()
        self._log_invalid(rejected)
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

    # --- background tasks --------------------------------------------------------------

    async def _commit_when_served(self) -> None:
        """Commit after each served scrape, off the scrape's path; a failed commit is
        asked again by the next one."""
        assert self._committer is not None
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._committer.commit_served()

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
            self._publish_if_unscraped()
            await asyncio.sleep(PROBE_INTERVAL)

    def _publish_if_unscraped(self) -> None:
        """--max-unscraped-seconds: nobody scraped for that long; publish and commit
        anyway, so offsets (and the group's lag) do not wait for a scrape forever."""
        limit = self.settings.max_unscraped_seconds
        if not limit or self.ledger.seconds_since_served() < limit:
            return
        pending = self.ledger.pending_records()
        if pending:
            log.warning(
                "no scrape served in time: committing unscraped records",
                extra={"max_unscraped_seconds": limit, "records": pending},
            )
            self.ledger.served(self.fold())
            self._commit_wanted.set()

    async def _learn_positions(self, consumer: AIOKafkaConsumer) -> None:
        # A partition with nothing to read yet has no processed record, and a transactional
        # one ends in a commit marker no record covers; the fetch position still tells the
        # lag (0 once caught up).
        for tp, state in self.ledger.states():
            if tp in consumer.assignment():
                with contextlib.suppress(KafkaError, AssertionError, TimeoutError):
                    state.fetch_position = await asyncio.wait_for(consumer.position(tp), 1.0)


async def _ended(tasks: list["asyncio.Task[None]"]) -> None:
    """Wait for cancelled tasks to end, at most CLOSE_TIMEOUT: a stop must never hang on
    a task that does not give way (it is left behind, and dies with the process)."""
    _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the run's outcome was decided elsewhere
    if pending:
        log.warning(
            "task did not stop in time",
            extra={"tasks": sorted(t.get_name() for t in pending), "timeout": CLOSE_TIMEOUT},
        )


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
