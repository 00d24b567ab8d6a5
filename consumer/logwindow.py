"""Repeats of a session, decided from the logs a worker holds. Pure.

Within a partition: a record at offset `o` whose session id also sits at an offset in
`[o - size, o)` of the same partition is a repeat. That depends on nothing but the log, so
any worker, after any restart, crash or rebalance, decides every record exactly as a
single worker reading the partition from the start would: it only has to hold the ids of
the `size` offsets before the first record it counts. On assignment the worker reads
those back from Kafka (consumer/restore.py) and counts nothing of them; a partition that
comes straight back to the same worker with nothing withdrawn needs no read at all.

Across partitions (best effort, for a worker without `--dedup-store`): a record whose id
sits in another partition's window on this worker is a repeat too ("elsewhere"). Whether
both copies meet on one worker depends on the assignment and the timing, so this verdict
is not a function of one log; the claim store makes it one for the whole cluster.

One dict serves every partition of the worker: each id held in a window maps to the chunk
(one batch of one partition) of its newest occurrence on this worker. Where another
partition has since taken an id over, the partition's own newest offset of it moves to
its `displaced` dict, so its verdicts still see exactly its own log. An id that occurs
once (the usual case) costs one dict entry, and a batch with no id known before is
checked and taken in with two loops in C; eviction drops a whole batch's ids in C too.

Memory: at most `size` ids per assigned partition, plus one batch (the window drops
whole batches once they are all older than the window). About 180 bytes per id with its
string (a 36-character id), so ~3.6 MB per partition at the default 20,000.
"""

import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

Range = tuple[int, int]
"""Offsets [start, end) of one partition to read back."""

_LAYOUT = object()
"""A key that is not a str, held in the worker's dict from its creation on: CPython then
keeps the dict in its general layout, whose entries store each key's hash. A lookup that
meets another id then compares hashes in the table, instead of reading the other id's
string, which sits cold in memory in a window of 100,000s of ids (~25% faster, measured)."""


@dataclass(slots=True, eq=False)
class _Chunk:
    owner: "PartitionWindow"
    first: int
    """Offset of the first record the chunk covers (not necessarily an event's)."""
    last: int
    """Offset of the last record it covers."""
    offsets: Sequence[int]
    """A range for a batch of consecutive events (no int held per id), else a list."""
    ids: list[str]
    checked: bool = False
    """Some of its ids may no longer map to it (seen again since, or taken in again): on
    eviction each id is checked before it goes. An unchecked chunk's ids all map to it."""
    _at: dict[str, int] | None = None

    def offset_of(self, session_id: str) -> int:
        """The newest offset of `session_id` in this chunk (built on first use: only
        repeats ask)."""
        if self._at is None:
            self._at = dict(zip(self.ids, self.offsets, strict=True))
        return self._at[session_id]


class PartitionWindow:
    """The ids of one partition's events at offsets [lo, hi), in the worker's dict."""

    __slots__ = ("_chunks", "_where", "displaced", "hi", "lo", "size")

    def __init__(self, size: int, lo: int, where: "dict[object, _Chunk] | None" = None) -> None:
        self.size = size
        self.lo = lo
        """Every record at an offset in [lo, hi) has been seen."""
        self.hi = lo
        self._where = where if where is not None else _worker_dict()
        self._chunks: deque[_Chunk] = deque()
        self.displaced: dict[str, int] = {}
        """This partition's newest offset of each id whose entry in the worker's dict
        another partition has taken over since."""

    def __len__(self) -> int:
        return sum(len(c.ids) for c in self._chunks)

    def observe(
        self, offsets: Sequence[int], ids: Sequence[str], first: int, end: int
    ) -> tuple[list[int], list[int]]:
        """Take in the events of the records [first, end) (in offset order); returns the
        positions in `ids` that repeat an id of this window (or an earlier one here), and
        those, among the others, whose id sits in another partition's window. The window
        keeps the lists it is given (lists: the caller's, not copied)."""
        where = self._where
        chunk = _Chunk(self, first, end - 1, _held(offsets), _as_list(ids))
        repeats: list[int] = []
        elsewhere: list[int] = []
        if where.keys().isdisjoint(ids):
            before = len(where)
            where.update(zip(ids, repeat(chunk)))
            if len(where) - before != len(ids):  # a repeat inside this batch: decide again
                for session_id in ids:  # none of them was there before: undo exactly
                    where.pop(session_id, None)
                repeats, elsewhere = self._one_by_one(chunk)
        else:
            repeats, elsewhere = self._one_by_one(chunk)
        self._chunks.append(chunk)
        self.hi = max(self.hi, end)
        self._evict()
        return repeats, elsewhere

    def _one_by_one(self, chunk: _Chunk) -> tuple[list[int], list[int]]:
        where, size, mine = self._where, self.size, self.displaced
        repeats, elsewhere, here = [], [], dict[str, int]()
        chunk.checked = True  # its ids may repeat among themselves
        for position, (offset, session_id) in enumerate(zip(chunk.offsets, chunk.ids, strict=True)):
            before, other = here.get(session_id), False
            if before is None:
                held = where.get(session_id)
                if held is None:
                    before = mine.pop(session_id, None)
                elif held.owner is self:
                    before = held.offset_of(session_id)
                    held.checked = True
                else:  # another partition's: it keeps its own offset aside
                    other = True
                    held.owner.displaced[session_id] = held.offset_of(session_id)
                    held.checked = True
                    before = mine.pop(session_id, None)
            if before is not None and offset - size <= before < offset:
                repeats.append(position)
            elif other:
                elsewhere.append(position)
            here[session_id] = offset
            where[session_id] = chunk
        return repeats, elsewhere

    def _evict(self) -> None:
        chunks, floor = self._chunks, self.hi - self.size
        while chunks and chunks[0].last < floor:
            old = chunks.popleft()
            self._unlink(old)
            self.lo = old.last + 1

    def _unlink(self, old: _Chunk) -> None:
        """Drop a chunk's ids from the worker's dict and from `displaced`, those it still
        holds the newest occurrence of (all of them, for an unchecked chunk: in C)."""
        where = self._where
        if not old.checked:
            deque(map(where.__delitem__, old.ids), maxlen=0)
            return
        held = map(where.get, old.ids)
        for session_id in [s for s, c in zip(old.ids, held, strict=True) if c is old]:
            where.pop(session_id, None)  # an id twice in the chunk is listed twice
        mine = self.displaced
        if mine:
            for offset, session_id in zip(old.offsets, old.ids, strict=True):
                if mine.get(session_id) == offset:
                    del mine[session_id]

    def drop(self) -> None:
        """Forget every id of this window (the partition left the worker)."""
        for c in self._chunks:
            self._unlink(c)
        self._chunks.clear()
        self.displaced.clear()

    def truncate(self, end: int) -> None:
        """Forget what lies at `end` and after (records whose counts were withdrawn)."""
        if end >= self.hi:
            return
        chunks = list(self._chunks)
        self.drop()
        kept = [c for c in chunks if c.first < end]
        if kept and kept[-1].last >= end:
            c = kept.pop()
            at = bisect.bisect_left(c.offsets, end)
            kept.append(_Chunk(self, c.first, end - 1, c.offsets[:at], c.ids[:at]))
        self.hi = max(end, self.lo)
        self._take_in(kept)

    def missing(self, first: int) -> list[Range]:
        """What must be read so the window covers the `size` offsets before `first`."""
        want = max(0, first - self.size)
        out = []
        if self.lo > want:
            out.append((want, self.lo))
        if self.hi < first:
            out.append((self.hi, first))
        return out

    def fill(self, start: int, end: int, offsets: Sequence[int], ids: Sequence[str]) -> None:
        """Add the events read back from [start, end), a range `missing` asked for."""
        chunks = list(self._chunks)
        self.drop()
        at = bisect.bisect_left([c.first for c in chunks], start)
        chunks[at:at] = _pieces(self, start, end, offsets, ids)
        self.lo, self.hi = min(self.lo, start), max(self.hi, end)
        self._take_in(chunks)
        self._evict()

    def _take_in(self, chunks: list[_Chunk]) -> None:
        """Hold `chunks` (oldest first, none of their ids in the worker's dict yet)."""
        where, mine = self._where, self.displaced
        for c in chunks:
            c.checked = True
            for session_id in c.ids:  # oldest first: a later occurrence overwrites
                held = where.get(session_id)
                if held is not None and held.owner is not self:
                    held.owner.displaced[session_id] = held.offset_of(session_id)
                    held.checked = True
                mine.pop(session_id, None)
                where[session_id] = c
            self._chunks.append(c)


def _worker_dict() -> "dict[object, _Chunk]":
    return {_LAYOUT: None}  # type: ignore[dict-item]  # never looked up: no id is it


def _as_list(values: Sequence[Any]) -> list[Any]:
    return values if type(values) is list else list(values)


def _held(offsets: Sequence[int]) -> Sequence[int]:
    return offsets if type(offsets) is range else _as_list(offsets)


PIECE = 2048
"""Events per chunk of a read-back range: evicted piece by piece, not all at the end."""


def _pieces(
    owner: PartitionWindow, start: int, end: int, offsets: Sequence[int], ids: Sequence[str]
) -> list[_Chunk]:
    out = []
    for i in range(0, max(len(ids), 1), PIECE):
        first = start if i == 0 else offsets[i]
        stop = end if i + PIECE >= len(ids) else offsets[i + PIECE]
        piece = _Chunk(
            owner, first, stop - 1, list(offsets[i : i + PIECE]), list(ids[i : i + PIECE])
        )
        out.append(piece)
    return out


class LogWindows:
    """One PartitionWindow per partition, all in one dict; kept across a revoke, so a
    partition that comes straight back resumes its window instead of reading it again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._where = _worker_dict()
        self._windows: dict[tuple[str, int], PartitionWindow] = {}

    def __len__(self) -> int:
        """Ids held over all partitions."""
        return sum(len(w) for w in self._windows.values())

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._windows)

    def keep_only(self, partitions: Sequence[tuple[str, int]] | set[tuple[str, int]]) -> None:
        """A new assignment: windows of partitions not in it are dropped (memory bound)."""
        for tp in [tp for tp in self._windows if tp not in partitions]:
            self._windows.pop(tp).drop()

    def prepare(self, tp: tuple[str, int], first: int) -> list[Range]:
        """Counting of `tp` resumes at `first`: the ranges to read back first (none when
        the window already ends there). Records at `first` and after are forgotten."""
        if not self.size:
            return []
        w = self._windows.get(tp)
        if w is None or first < w.lo or w.hi <= first - self.size:
            # Nothing of use held: an empty window at `first` asks for all of it.
            if w is not None:
                w.drop()
            w = self._windows[tp] = PartitionWindow(self.size, first, self._where)
        w.truncate(first)
        return w.missing(first)

    def fill(
        self, tp: tuple[str, int], start: int, end: int, offsets: Sequence[int], ids: Sequence[str]
    ) -> None:
        self._windows[tp].fill(start, end, offsets, ids)

    def observe(
        self, tp: tuple[str, int], offsets: Sequence[int], ids: Sequence[str], first: int, end: int
    ) -> tuple[list[int], list[int]]:
        """PartitionWindow.observe for `tp`: its repeats, and its ids in other windows."""
        if not self.size:
            return [], []
        w = self._windows.get(tp)
        if w is None:  # not prepared (tests of the pure pipeline): counting from `first`
            w = self._windows[tp] = PartitionWindow(self.size, first, self._where)
        return w.observe(offsets, ids, first, end)

    def rewind(self, tp: tuple[str, int], offset: int) -> None:
        """A batch was not counted after all (the claim store failed): forget it."""
        w = self._windows.get(tp)
        if w is not None:
            w.truncate(offset)
