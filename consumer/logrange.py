"""Which offsets `reconcile` reads, and reading them: Kafka I/O only, without the group.

The range of each partition is [start, end): by default from the start of the
partition to the group's committed offset (exactly what the group has accounted
for), else from Kafka's offsets for `--from`/`--to` times, else per-partition
offsets. Reading assigns the partitions to a consumer with no group id: it never
joins the group, never commits and never takes part in a rebalance, so the running
workers do not notice it. The committed offsets come from the group coordinator
(OffsetFetch, as `kafka-consumer-groups --describe` asks), by a consumer that has a
group id but never subscribes, so never joins either.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = logging.getLogger(__name__)

FETCH_RECORDS = 10_000
STALL_SECONDS = 60.0
"""A partition whose position has not moved for this long while short of its end is
given up on: the totals would be short, so reconcile stops with one line."""


class RangeError(Exception):
    """The range cannot be read as asked; str() is the one line shown to the user."""


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    """First offset counted."""
    end: int | None
    """Offset after the last one counted; None: the partition's end when read."""
    warm_from: int
    """First offset read for the log window only (start - window, or the log's start)."""


@dataclass(slots=True)
class Plan:
    spans: dict[TopicPartition, Span]
    gone: dict[TopicPartition, int] = field(default_factory=dict)
    """Partitions whose range starts before the log's start (deleted by retention): the
    offset counting really starts at."""


async def committed_offsets(
    kafka: Mapping[str, Any], group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    reader = AIOKafkaConsumer(group_id=group_id, enable_auto_commit=False, **kafka)
    try:
        await reader.start()
        return {tp: await reader.committed(tp) for tp in partitions}
    finally:
        await reader.stop()


async def partitions_of(kafka: Mapping[str, Any], topics: tuple[str, ...]) -> list[TopicPartition]:
    """Every partition of `topics`, from one full metadata request (a consumer's own
    metadata covers only the topics it has been given, so it may not know them yet)."""
    client = AIOKafkaClient(**kafka)
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
    finally:
        await client.close()
    missing = [t for t in topics if t not in cluster.topics()]
    if missing:
        raise RangeError(f"topic {missing[0]!r} does not exist (check --topic)")
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(cluster.partitions_for_topic(topic) or ())
    ]


async def plan(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    window: int,
    *,
    committed: Mapping[TopicPartition, int | None] | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    offsets: Mapping[TopicPartition, tuple[int, int | None]] | None = None,
) -> Plan:
    """Each partition's span. Exactly one way of choosing: `offsets`, times, or `committed`."""
    first = await consumer.beginning_offsets(partitions)
    starts: dict[TopicPartition, int] = {tp: 0 for tp in partitions}
    ends: dict[TopicPartition, int | None] = {tp: None for tp in partitions}
    if offsets is not None:
        for tp in partitions:
            starts[tp], ends[tp] = offsets.get(tp, (0, 0))
    elif committed is not None:
        ends = {tp: committed.get(tp) or 0 for tp in partitions}
    if to_ms is not None:
        ends = {
            tp: at if at is not None else ends[tp]
            for tp, at in (await _at(consumer, partitions, to_ms)).items()
        }
    if from_ms is not None:
        for tp, at in (await _at(consumer, partitions, from_ms)).items():
            # No record at or after --from: nothing of the partition is in the range.
            starts[tp], ends[tp] = (at, ends[tp]) if at is not None else (0, 0)
    return _spans(partitions, first, starts, ends, window)


def _spans(
    partitions: list[TopicPartition],
    first: Mapping[TopicPartition, int],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int | None],
    window: int,
) -> Plan:
    out = Plan({})
    for tp in partitions:
        start, end = starts[tp], ends[tp]
        if start < first[tp]:
            if end is None or start < end:
                out.gone[tp] = first[tp]
            start = first[tp]
        if end is not None and end < start:
            end = start
        out.spans[tp] = Span(start, end, max(first[tp], start - window))
    return out


async def _at(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ms: int
) -> dict[TopicPartition, int | None]:
    """The first offset at or after `ms` (Kafka's offsets for times); None where none is.
    A broker whose answer names a record older than asked (Tansu answers offset 0 with
    timestamp -1) cannot be trusted with times: RangeError, rather than a wrong range."""
    found = await consumer.offsets_for_times({tp: ms for tp in partitions})
    out: dict[TopicPartition, int | None] = {}
    for tp in partitions:
        hit = found.get(tp)
        if hit is not None and hit.timestamp < ms:
            raise RangeError(
                f"{tp.topic}/{tp.partition}: the broker answered the offset for time {ms} with "
                f"offset {hit.offset} of time {hit.timestamp}: it cannot find records by time; "
                "give --offsets instead"
            )
        out[tp] = None if hit is None else hit.offset
    return out


Feed = Callable[[dict[TopicPartition, list[ConsumerRecord]]], None]
Progress = Callable[[int, int, int], None]
"""(records read, partitions done, partitions in all)."""


@dataclass(slots=True)
class Read:
    records: int = 0
    first_timestamp_ms: int | None = None
    """Kafka timestamp of the oldest record counted: how far back Prometheus must look."""


async def read(
    consumer: AIOKafkaConsumer,
    spans: Mapping[TopicPartition, Span],
    warm: Feed,
    add: Feed,
    progress: Progress | None = None,
    *,
    read_committed: bool = True,
) -> Read:
    """Every span, in offset order per partition: records before `start` to `warm`, the
    range's to `add`. Partitions are read side by side, as a worker reads them."""
    todo = {tp: s for tp, s in spans.items() if s.end is None or s.start < s.end}
    consumer.assign(list(todo))
    for tp, s in todo.items():
        consumer.seek(tp, s.warm_from)
    done, result = len(spans) - len(todo), Read()
    moved = time.monotonic()
    while todo:
        got = await consumer.getmany(*todo, timeout_ms=200, max_records=FETCH_RECORDS)
        warmed, counted = _split(got, todo, result)
        if warmed:
            warm(warmed)
        if counted:
            add(counted)
        if got:
            moved = time.monotonic()
        done += await _close_read_through(consumer, todo, read_committed)
        if progress is not None:
            progress(result.records, done, len(spans))
        if todo and time.monotonic() - moved > STALL_SECONDS:
            tp = next(iter(todo))
            raise RangeError(
                f"{tp.topic}/{tp.partition}: no record for {STALL_SECONDS:.0f} s at offset "
                f"{await consumer.position(tp)}, short of the range's end {todo[tp].end}"
            )
    return result


async def _close_read_through(
    consumer: AIOKafkaConsumer, todo: dict[TopicPartition, Span], read_committed: bool
) -> int:
    closed = 0
    for tp in list(todo):
        end = todo[tp].end
        if end is None:
            # The end as the fetch answers give it (Tansu's ListOffsets "latest" is not the
            # true end); under read_committed an open transaction stops the read there.
            end = consumer.last_stable_offset(tp) if read_committed else consumer.highwater(tp)
        # Transaction markers are never returned as records: the position says when a
        # span is read through.
        if end is not None and await consumer.position(tp) >= end:
            del todo[tp]
            closed += 1
            consumer.pause(tp)
    return closed


def _split(
    got: dict[TopicPartition, list[ConsumerRecord]],
    todo: Mapping[TopicPartition, Span],
    result: Read,
) -> tuple[dict[TopicPartition, list[ConsumerRecord]], dict[TopicPartition, list[ConsumerRecord]]]:
    warmed, counted = {}, {}
    for tp, fetched in got.items():
        s = todo.get(tp)
        if s is None:
            continue
        records = fetched if s.end is None else [r for r in fetched if r.offset < s.end]
        if not records:
            continue
        before = [r for r in records if r.offset < s.start] if records[0].offset < s.start else []
        inside = records[len(before) :]
        if before:
            warmed[tp] = before
        if inside:
            counted[tp] = inside
            result.records += len(inside)
            stamp = inside[0].timestamp
            if result.first_timestamp_ms is None or stamp < result.first_timestamp_ms:
                result.first_timestamp_ms = stamp
    return warmed, counted
