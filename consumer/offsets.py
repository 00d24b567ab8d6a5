"""Commit the offsets the ledger allows: one commit at a time, failures counted and retried.

A commit that fails is not retried on its own: the next scrape (or the next
revoke, or the stop) asks again, and the ledger still holds the position.
"""

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumer.ledger import Ledger
from consumer.metrics import ConsumerMetrics
from consumer.pipeline import Partition

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 2.0
"""Seconds a hand-over or a stop waits for scrapes that are writing their answer."""


class Committer:
    def __init__(self, consumer: AIOKafkaConsumer, ledger: Ledger, metrics: ConsumerMetrics):
        self._consumer = consumer
        self._ledger = ledger
        self._metrics = metrics
        # Two commits in flight could land out of order and move an offset back.
        self._lock = asyncio.Lock()
        self._settled = asyncio.Event()

    def scrapes_settled(self) -> None:
        """The ledger's `on_settled`: no scrape is writing its answer any more."""
        self._settled.set()

    async def after_scrapes_in_flight(self) -> None:
        """Until no scrape is between publishing counts and finishing its answer.

        Deciding what to commit before such a scrape is done would leave counts it is
        about to show uncommitted, and the next owner would count them again. The
        caller has frozen the ledger, so no new scrape starts publishing meanwhile.
        """
        self._settled.clear()
        if not self._ledger.folds_in_flight:
            return
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self._settled.wait()
        except TimeoutError:
            log.warning(
                "scrape still writing its answer: committing without it",
                extra={"scrapes": self._ledger.folds_in_flight, "timeout": SETTLE_TIMEOUT},
            )

    async def commit_served(
        self, partitions: set[TopicPartition] | None = None, *, published: bool = False
    ) -> None:
        """Commit the served positions (of `partitions`, default all) not yet committed;
        `published`: the published ones (a stop: see Ledger.committable)."""
        async with self._lock:
            await self._commit(self._ledger.committable(partitions, published=published))

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        async with self._lock:
            await self._commit(offsets)

    async def _commit(self, offsets: Mapping[Partition, int]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(*tp): OffsetAndMetadata(o, "") for tp, o in offsets.items()}
            )
        except KafkaError as exc:
            self._metrics.commit_failures.inc()
            log.error("commit failed", extra={"error": repr(exc), "partitions": len(offsets)})
            return
        self._metrics.commits.inc()
        self._ledger.committed(dict(offsets))
