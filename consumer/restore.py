"""Read ranges of partitions back from Kafka, without the group: for the log windows.

A consumer of its own, with no group id: it assigns itself the partitions, never
commits and never takes part in a rebalance, so reading back never disturbs the
group. It reads with the worker's isolation level, so it sees the records the worker
counts (under read_committed, never an aborted one).
"""

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from consumer.logwindow import Range

log = logging.getLogger(__name__)

READ_TIMEOUT = 120.0
"""The longest one read-back may take: a partition whose range cannot be read by then
(deleted by retention meanwhile, a broker gone) is given up on, and logged."""

Extract = Callable[[TopicPartition, list[ConsumerRecord]], tuple[list[int], list[str]]]
"""Records of one partition -> the offsets and session ids of its events."""
Events = tuple[list[int], list[str]]


class LogReader:
    def __init__(self, isolation_level: str, max_fetch_bytes: int, **kafka: Any) -> None:
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a range older than retention starts at the log's
            isolation_level=isolation_level,
            max_partition_fetch_bytes=max_fetch_bytes,
            **kafka,
        )
        self._started = False

    async def start(self) -> None:
        await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._consumer.stop()
            self._started = False

    async def read(
        self, ranges: Mapping[TopicPartition, Sequence[Range]], extract: Extract
    ) -> tuple[dict[tuple[TopicPartition, Range], Events], int]:
        """The events of every range (by `extract`, in offset order) and the number of
        records read. Ranges of one partition are read one after the other."""
        out: dict[tuple[TopicPartition, Range], Events] = {}
        total = 0
        pending = {tp: list(rs) for tp, rs in ranges.items() if rs}
        while pending:
            now = {tp: rs.pop(0) for tp, rs in pending.items()}
            total += await self._read_once(now, extract, out)
            pending = {tp: rs for tp, rs in pending.items() if rs}
        return out, total

    async def _read_once(
        self,
        ranges: dict[TopicPartition, Range],
        extract: Extract,
        out: dict[tuple[TopicPartition, Range], Events],
    ) -> int:
        for tp, r in ranges.items():
            out[(tp, r)] = ([], [])
        c = self._consumer
        c.assign(list(ranges))
        for tp, (start, _) in ranges.items():
            c.seek(tp, start)
        open_, total = set(ranges), 0
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while open_:
                    got = await c.getmany(*open_, timeout_ms=200, max_records=10_000)
                    total += _take(got, ranges, extract, out, open_)
                    for tp in list(open_):
                        # Transaction markers and aborted records are never returned: the
                        # position tells when the range is read through.
                        if await c.position(tp) >= ranges[tp][1]:
                            open_.discard(tp)
                    if open_:
                        c.pause(*[tp for tp in ranges if tp not in open_])
        except (TimeoutError, KafkaError) as exc:
            log.error(
                "cannot read the dedup window back: repeats just before it may count again",
                extra={
                    "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in open_),
                    "error": repr(exc),
                },
            )
        finally:
            c.assign([])
        return total


def _take(
    got: dict[TopicPartition, list[ConsumerRecord]],
    ranges: dict[TopicPartition, Range],
    extract: Extract,
    out: dict[tuple[TopicPartition, Range], Events],
    open_: set[TopicPartition],
) -> int:
    """Keep the events of the records inside each range; a record past its end closes it."""
    total = 0
    for tp, records in got.items():
        end = ranges[tp][1]
        inside = [r for r in records if r.offset < end]
        if inside:
            offsets, ids = extract(tp, inside)
            have = out[(tp, ranges[tp])]
            have[0].extend(offsets)
            have[1].extend(ids)
            total += len(inside)
        if len(inside) < len(records):
            open_.discard(tp)
    return total
