"""Repeats of a session within a partition, decided from the partition's log alone. Pure.

A record at offset `o` whose session id also sits at an offset in `[o - size, o)` of
the same partition is a repeat. That depends on nothing but the log, so any worker,
after any restart, crash or rebalance, decides every record exactly as a single worker
reading the partition from the start would: it only has to hold the ids of the
`size` offsets before the first record it counts. On assignment the worker reads those
back from Kafka (consumer/restore.py) and counts nothing of them; a partition that comes
straight back to the same worker with nothing withdrawn needs no read at all.

Memory: at most `size` ids per assigned partition, plus one batch (the window drops
whole batches once they are all older than the window). About 190 bytes per id with
its string (a 36-character id), so ~3.8 MB per partition at the default 20,000.
"""

import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

Range = tuple[int, int]
"""Offsets [start, end) of one partition to read back."""


@dataclass(slots=True)
class _Chunk:
    first: int
    """Offset of the first record the chunk covers (not necessarily an event's)."""
    last: int
    """Offset of the last record it covers."""
    offsets: list[int]
    """The same int objects as the window's values: a list costs 8 bytes an offset."""
    ids: list[str]


class PartitionWindow:
    """The ids of one partition's events at offsets [lo, hi), newest occurrence per id."""

    __slots__ = ("_checked", "_chunks", "_where", "hi", "lo", "size")

    def __init__(self, size: int, lo: int) -> None:
        self.size = size
        self.lo = lo
        """Every record at an offset in [lo, hi) has been seen."""
        self.hi = lo
        self._where: dict[str, int] = {}
        self._chunks: deque[_Chunk] = deque()
        self._checked = 0
        """The oldest chunks whose ids may have been seen again since: on eviction, each
        id is checked before it goes. Chunks taken in with no id known before need no
        check, which spares the usual eviction a dict lookup per id."""

    def __len__(self) -> int:
        return len(self._where)

    def observe(
        self, offsets: Sequence[int], ids: Sequence[str], first: int, end: int
    ) -> list[int]:
        """Take in the events of the records [first, end) (in offset order); returns the
        positions in `ids` that repeat an id of the window (or of an earlier one here).
        The window keeps the lists it is given (lists: the caller's, not copied)."""
        where = self._where
        repeats: list[int] = []
        clean = where.keys().isdisjoint(ids)
        if clean:
            before = len(where)
            where.update(zip(ids, offsets, strict=True))
            if len(where) - before != len(ids):  # a repeat inside this batch: decide again
                for session_id in ids:
                    where.pop(session_id, None)
                clean = False
        if not clean:
            repeats = self._one_by_one(offsets, ids)
        self._chunks.append(_Chunk(first, end - 1, _as_list(offsets), _as_list(ids)))
        if not clean:
            self._checked = len(self._chunks)
        self.hi = max(self.hi, end)
        self._evict()
        return repeats

    def _one_by_one(self, offsets: Sequence[int], ids: Sequence[str]) -> list[int]:
        where, size, repeats = self._where, self.size, []
        for position, (offset, session_id) in enumerate(zip(offsets, ids, strict=True)):
            before = where.get(session_id)
            if before is not None and offset - size <= before < offset:
                repeats.append(position)
            where[session_id] = offset
        return repeats

    def _evict(self) -> None:
        chunks, where, floor = self._chunks, self._where, self.hi - self.size
        while chunks and chunks[0].last < floor:
            old = chunks.popleft()
            if self._checked:
                self._checked -= 1
                _forget(where, old)
            else:  # each of its ids still points here: drop them in C
                deque(map(where.__delitem__, old.ids), maxlen=0)
            self.lo = old.last + 1

    def truncate(self, end: int) -> None:
        """Forget what lies at `end` and after (records whose counts were withdrawn)."""
        if end >= self.hi:
            return
        chunks = self._chunks
        while chunks and chunks[-1].first >= end:
            chunks.pop()
        if chunks and chunks[-1].last >= end:
            c = chunks.pop()
            keep = bisect.bisect_left(c.offsets, end)
            chunks.append(_Chunk(c.first, end - 1, c.offsets[:keep], c.ids[:keep]))
        self.hi = max(end, self.lo)
        self._rebuild()

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
        at = bisect.bisect_left([c.first for c in chunks], start)
        chunks[at:at] = _pieces(start, end, offsets, ids)
        self._chunks = deque(chunks)
        self.lo, self.hi = min(self.lo, start), max(self.hi, end)
        self._rebuild()
        self._evict()

    def _rebuild(self) -> None:
        where: dict[str, int] = {}
        for c in self._chunks:  # oldest first: a later occurrence overwrites
            where.update(zip(c.ids, c.offsets, strict=True))
        self._where = where
        self._checked = len(self._chunks)


def _as_list(values: Sequence[Any]) -> list[Any]:
    return values if type(values) is list else list(values)


def _forget(where: dict[str, int], old: _Chunk) -> None:
    """Drop an evicted chunk's ids from `where`, except those seen again since."""
    ids = old.ids
    if len(ids) > 1:
        try:
            # Often still true, in C: none of its ids came again, all still point here.
            if list(itemgetter(*ids)(where)) == old.offsets:
                deque(map(where.__delitem__, ids), maxlen=0)
                return
        except KeyError:  # cannot happen while every kept id is in `where`; be safe
            pass
    for offset, session_id in zip(old.offsets, ids, strict=True):
        if where.get(session_id) == offset:
            del where[session_id]


PIECE = 2048
"""Events per chunk of a read-back range: evicted piece by piece, not all at the end."""


def _pieces(start: int, end: int, offsets: Sequence[int], ids: Sequence[str]) -> list[_Chunk]:
    out = []
    for i in range(0, max(len(ids), 1), PIECE):
        first = start if i == 0 else offsets[i]
        stop = end if i + PIECE >= len(ids) else offsets[i + PIECE]
        out.append(_Chunk(first, stop - 1, list(offsets[i : i + PIECE]), list(ids[i : i + PIECE])))
    return out


class LogWindows:
    """One PartitionWindow per partition; kept across a revoke, so a partition that comes
    straight back resumes its window instead of reading it again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._windows: dict[tuple[str, int], PartitionWindow] = {}

    def __len__(self) -> int:
        """Ids held over all partitions."""
        return sum(len(w) for w in self._windows.values())

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._windows)

    def keep_only(self, partitions: Sequence[tuple[str, int]] | set[tuple[str, int]]) -> None:
        """A new assignment: windows of partitions not in it are dropped (memory bound)."""
        for tp in [tp for tp in self._windows if tp not in partitions]:
            del self._windows[tp]

    def prepare(self, tp: tuple[str, int], first: int) -> list[Range]:
        """Counting of `tp` resumes at `first`: the ranges to read back first (none when
        the window already ends there). Records at `first` and after are forgotten."""
        if not self.size:
            return []
        w = self._windows.get(tp)
        if w is None or first < w.lo or w.hi <= first - self.size:
            # Nothing of use held: an empty window at `first` asks for all of it.
            w = self._windows[tp] = PartitionWindow(self.size, first)
        w.truncate(first)
        return w.missing(first)

    def fill(
        self, tp: tuple[str, int], start: int, end: int, offsets: Sequence[int], ids: Sequence[str]
    ) -> None:
        self._windows[tp].fill(start, end, offsets, ids)

    def observe(
        self, tp: tuple[str, int], offsets: Sequence[int], ids: Sequence[str], first: int, end: int
    ) -> list[int]:
        if not self.size:
            return []
        w = self._windows.get(tp)
        if w is None:  # not prepared (tests of the pure pipeline): counting from `first`
            w = self._windows[tp] = PartitionWindow(self.size, first)
        return w.observe(offsets, ids, first, end)

    def rewind(self, tp: tuple[str, int], offset: int) -> None:
        """A batch was not counted after all (the claim store failed): forget it."""
        w = self._windows.get(tp)
        if w is not None:
            w.truncate(offset)
