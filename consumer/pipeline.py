"""One batch of Kafka records, grouped by partition, to per-partition counts. Pure.

records -> decode -> (the caller dead-letters the rejected) -> dedup (consumer/repeats.py:
the partitions' log windows, then the claim store) -> aggregate.
Counts stay per partition because each partition's counts can be withdrawn on
their own (consumer/ledger.py): a partition handed to another worker before a
scrape showed its counts is counted again by its next owner.
"""

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from consumer.aggregate import Buckets, SeriesKey, Totals, aggregate, newest_event_time
from consumer.decode import DEFAULT_ENVELOPE, Decoded, Invalid, decode_many
from consumer.envelope import Envelope, Kind
from consumer.logwindow import LogWindows

_OFFSET, _ID = attrgetter("offset"), attrgetter("id")

Partition = tuple[str, int]
"""(topic, partition); aiokafka's TopicPartition is one."""


class Record(Protocol):
    """What the pipeline reads of a Kafka record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid record, with everything its dead-letter copy carries."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    invalid: Invalid


@dataclass(slots=True)
class DecodedBatch:
    partitions: dict[Partition, tuple[Sequence[Record], Decoded]]
    rejected: list[Rejected]


@dataclass(slots=True)
class Counted:
    """What one batch adds to one partition."""

    totals: dict[SeriesKey, Totals]
    next_offset: int
    last_timestamp: float
    """Kafka timestamp (s) of the partition's last record in the batch."""
    counted: int
    duplicates: int
    tombstones: int
    skipped: int


@dataclass(slots=True)
class BatchResult:
    partitions: dict[Partition, Counted]
    newest_event: float | None
    """Newest updatedAt (else startedAt) of a counted event, as a Unix time."""
    kinds: Counter[Kind] = field(default_factory=Counter)
    """Records per envelope kind."""

    def total(self, field: str) -> int:
        return sum(getattr(c, field) for c in self.partitions.values())


def decode_batch(
    batch: Mapping[Partition, Sequence[Record]],
    max_bytes: int,
    *,
    strict_keys: bool = False,
    envelope: Envelope = DEFAULT_ENVELOPE,
) -> DecodedBatch:
    partitions, rejected = {}, []
    for tp, records in batch.items():
        decoded = decode_many(
            [r.value for r in records],
            [r.headers for r in records],
            max_bytes,
            strict_keys=strict_keys,
            envelope=envelope,
        )
        partitions[tp] = (records, decoded)
        rejected.extend(_rejected(records, decoded.invalid))
    return DecodedBatch(partitions, rejected)


@dataclass(slots=True)
class Candidates:
    """One partition's events of a batch, with the log window's verdict."""

    offsets: Sequence[int]
    """A range when every record of the batch is an event and no offset is skipped (the
    usual batch): nothing to build, and nothing held per id in the log window."""
    ids: list[str]
    repeats: list[int]
    """Positions (in `ids`) of repeats within the partition's log window."""
    elsewhere: list[int]
    """Positions of the others whose id sits in another partition's window on this
    worker: repeats too when no claim store decides across partitions."""

    def without_store(self) -> list[int]:
        """The positions a worker without a claim store skips, in order: both kinds."""
        if self.repeats and self.elsewhere:
            return sorted(self.repeats + self.elsewhere)
        return self.repeats or self.elsewhere


def in_log(decoded: DecodedBatch, windows: LogWindows) -> dict[Partition, Candidates]:
    """Each partition's events against its log window (consumer/logwindow.py)."""
    out = {}
    for tp, (records, d) in decoded.partitions.items():
        first, end = records[0].offset, records[-1].offset + 1
        offsets: Sequence[int]
        if len(d.positions) == len(records):  # every record an event: the usual batch
            offsets = range(first, end)
            if len(offsets) != len(records):  # offsets skipped: transaction markers
                offsets = list(map(_OFFSET, records))
        else:
            offsets = list(map(_OFFSET, map(records.__getitem__, d.positions)))
        ids = list(map(_ID, d.events))
        out[tp] = Candidates(offsets, ids, *windows.observe(tp, offsets, ids, first, end))
    return out


def count(
    decoded: DecodedBatch,
    buckets: Buckets,
    admit: Callable[[SeriesKey, int], SeriesKey],
    repeats: Mapping[Partition, Sequence[int]] | None = None,
) -> BatchResult:
    """Aggregate each partition's events but the `repeats` (positions in its events,
    already decided by the log windows and the claim store)."""
    out, newest, kinds = {}, None, Counter[Kind]()
    for tp, (records, d) in decoded.partitions.items():
        kinds.update(d.kinds)
        events = d.events
        skip = set(repeats.get(tp, ())) if repeats else set()
        if skip:
            events = [e for i, e in enumerate(events) if i not in skip]
        when = newest_event_time(events)
        if when is not None and (newest is None or when > newest):
            newest = when
        last = records[-1]
        out[tp] = Counted(
            totals=aggregate(events, buckets, admit),
            next_offset=last.offset + 1,
            last_timestamp=last.timestamp / 1000.0,
            counted=len(events),
            duplicates=len(skip),
            tombstones=d.tombstones,
            skipped=d.skipped,
        )
    return BatchResult(out, newest, kinds)


def _rejected(records: Sequence[Record], invalid: list[tuple[int, Invalid]]) -> list[Rejected]:
    out = []
    for position, why in invalid:
        r = records[position]
        out.append(Rejected(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers), why))
    return out
