"""Commit what was processed before partitions move to another worker.

aiokafka awaits `on_partitions_revoked` before the group rebalances, so this is
the last moment to commit this worker's progress on the partitions it loses.
It waits for the batch in flight (the batch lock is held only while a batch is
processed, never around `getmany()`, which would deadlock the rebalance).
"""

import logging
from typing import TYPE_CHECKING

from aiokafka import ConsumerRebalanceListener, TopicPartition

if TYPE_CHECKING:
    from consumer.worker import Worker

log = logging.getLogger(__name__)


class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, worker: "Worker") -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        async with self._worker.batch_lock:
            await self._worker.commit_processed(revoked)
            self._worker.forget(revoked)
        log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.on_assigned(assigned)
        if assigned:
            log.info("partitions assigned", extra={"partitions": _names(assigned)})
        else:
            # More workers than partitions: this one idles (and is not ready).
            log.warning("no partitions assigned", extra={"group_id": self._worker.group_id})


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
