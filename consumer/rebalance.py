"""Hand partitions over exactly: withdraw what no scrape has shown, commit what one has.

aiokafka awaits `on_partitions_revoked` before the group rebalances, so this is
the last moment to commit this worker's served positions of the partitions it
loses. Their pending counts are withdrawn (never published), so the next owner
counts those records again from the committed offset. It waits for the batch in
flight (the batch lock is held only while a batch is processed, never around
`getmany()`, which would deadlock the rebalance).
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka import ConsumerRebalanceListener, TopicPartition

from consumer.ledger import Ledger
from consumer.metrics import ConsumerMetrics
from consumer.offsets import Committer

log = logging.getLogger(__name__)


class HandOver(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(
        self,
        ledger: Ledger,
        committer: Committer,
        batch_lock: asyncio.Lock,
        metrics: ConsumerMetrics,
        group_id: str,
        *,
        on_assigned: Callable[[Iterable[TopicPartition]], None] = lambda tps: None,
    ) -> None:
        self._ledger = ledger
        self._committer = committer
        self._batch_lock = batch_lock
        self._metrics = metrics
        self._group_id = group_id
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        async with self._batch_lock:
            self._ledger.freeze()
            try:
                await self._committer.after_scrapes_in_flight()
                pending = sum(s.pending_records for tp, s in self._ledger.states() if tp in revoked)
                await self._committer.commit(self._ledger.withdraw(revoked))
            finally:
                self._ledger.thaw()
        self._metrics.assigned_partitions.set(0)
        log.info(
            "partitions revoked",
            extra={"partitions": _names(revoked), "records_handed_back": pending},
        )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._ledger.assign(assigned)
        self._on_assigned(assigned)  # their log windows are made ready at their first batch
        self._metrics.rebalances.inc()
        self._metrics.assigned_partitions.set(len(assigned))
        if assigned:
            log.info("partitions assigned", extra={"partitions": _names(assigned)})
        else:
            # More workers than partitions: this one idles (and is not ready).
            log.warning("no partitions assigned", extra={"group_id": self._group_id})


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
