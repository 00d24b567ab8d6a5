"""Per partition: what was processed, what a served scrape has shown, what is committed. Pure.

The rule it keeps: a partition's committed offset never passes what a served
scrape has shown. Counts since the last scrape are *pending*, kept per
partition; a scrape folds them into the published totals (`fold`) and, once
its response is written (`served`), the positions it covered may be
committed. A partition that leaves this worker takes its pending counts with
it (`withdraw`): Prometheus never saw them, and the next owner counts them
again from the committed offset, so every counter stays monotonic and exact
in Prometheus's view. A process that dies loses its pending counts the same way.

Memory: pending totals are at most (assigned partitions x series) Totals, and
usually far fewer, since a series' events mostly share a partition (keyed by
workspace); they are emptied at every scrape.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from consumer.aggregate import SeriesKey, Totals
from consumer.pipeline import Counted, Partition

Publish = Callable[[dict[SeriesKey, Totals]], None]


@dataclass(slots=True)
class PartitionState:
    start: int | None = None
    """Offset of the first record processed since the partition was assigned."""
    processed: int | None = None
    """Next offset to process (last processed + 1)."""
    last_timestamp: float | None = None
    """Kafka timestamp (s) of the last processed record."""
    served: int | None = None
    """Position covered by the last served scrape: what may be committed."""
    published: int | None = None
    """Position covered by the last fold, served or not (an answer cut off mid-way)."""
    committed: int | None = None
    fetch_position: int | None = None
    """The consumer's position as last looked up: for lag only, never committed. It can be
    past `processed`: no record is processed at a transaction marker or an aborted record."""
    pending: dict[SeriesKey, Totals] = field(default_factory=dict)

    @property
    def pending_records(self) -> int:
        if self.processed is None:
            return 0
        covered = self.served if self.served is not None else self.start
        return self.processed - (covered if covered is not None else self.processed)


@dataclass(frozen=True, slots=True, eq=False)
class Fold:
    """The positions one fold covered, per partition state (a state replaced by a
    revoke and a new assignment is another object, so a late `served` skips it)."""

    covered: tuple[tuple[Partition, PartitionState, int], ...]
    publication: int = 0
    """The number of the published state this scrape shows (consumer/scrapers.py)."""


class Ledger:
    """The offset book of one worker. `on_settled` is called whenever the last scrape in
    flight has ended."""

    def __init__(
        self,
        publish: Publish,
        clock: Callable[[], float] = time.monotonic,
        on_settled: Callable[[], None] = lambda: None,
    ) -> None:
        self._publish = publish
        self._clock = clock
        self._on_settled = on_settled
        self._states: dict[Partition, PartitionState] = {}
        self.generation = 0
        """Changes at every withdrawal: a batch fetched before one must not be counted."""
        self.last_served = clock()
        """When a scrape was last served (start-up until the first)."""
        self._in_flight: set[Fold] = set()
        self._frozen = False
        self.publication = 0
        """Goes up whenever a fold publishes counts: the published state's number."""

    def __contains__(self, tp: Partition) -> bool:
        return tp in self._states

    def states(self) -> Iterator[tuple[Partition, PartitionState]]:
        return iter(list(self._states.items()))

    def state(self, tp: Partition) -> PartitionState:
        """The partition's state, created when it is first seen since its assignment."""
        s = self._states.get(tp)
        if s is None:
            s = self._states[tp] = PartitionState()
        return s

    def assign(self, partitions: Iterable[Partition]) -> None:
        for tp in partitions:
            self.state(tp)

    def record(self, tp: Partition, first_offset: int, counted: Counted) -> None:
        """Add one batch's counts of `tp` (records from `first_offset` on) as pending."""
        s = self.state(tp)
        if s.start is None:
            s.start = first_offset
        s.processed = counted.next_offset
        s.last_timestamp = counted.last_timestamp
        if not s.pending:
            s.pending = counted.totals
            return
        pending = s.pending
        for key, totals in counted.totals.items():
            have = pending.get(key)
            if have is None:
                pending[key] = totals
            else:
                have.merge(totals)

    def fold(self) -> Fold:
        """Publish every pending count; the positions covered become committable once
        the response showing them is `served` (or never, if it is `abandoned`).

        While frozen (a hand-over or a stop is deciding what to commit) nothing is
        published: the scrape shows the published totals, which that commit covers.
        """
        if self._frozen:
            return Fold((), self.publication)
        covered, published = [], False
        for tp, s in self._states.items():
            if s.pending:
                self._publish(s.pending)
                s.pending = {}
                published = True
            if s.processed is not None:
                covered.append((tp, s, s.processed))
                s.published = s.processed
        self.publication += published
        fold = Fold(tuple(covered), self.publication)
        self._in_flight.add(fold)
        return fold

    def abandoned(self, fold: Fold) -> None:
        """The response never got out: what it published stays published (the next
        scrape shows it too), but it makes nothing committable."""
        self._end(fold)

    def _end(self, fold: Fold) -> None:
        self._in_flight.discard(fold)
        if not self._in_flight:
            self._on_settled()

    @property
    def folds_in_flight(self) -> int:
        """Responses whose counts are published but not yet written out."""
        return len(self._in_flight)

    def freeze(self) -> None:
        self._frozen = True

    def thaw(self) -> None:
        self._frozen = False

    def served(self, fold: Fold) -> None:
        self._end(fold)
        for tp, s, position in fold.covered:
            if self._states.get(tp) is s and (s.served is None or position > s.served):
                s.served = position
        self.last_served = self._clock()

    def committable(
        self, partitions: Iterable[Partition] | None = None, *, published: bool = False
    ) -> dict[Partition, int]:
        """Served positions not yet committed, of `partitions` (default: all).

        `published`: for a hand-over or a stop, the published ones instead. Counts an
        answer published but that was cut off are in this worker's totals: the next
        scrape (or the final wait at a stop) shows them, so the next owner must not
        count them again."""
        wanted = self._states.keys() if partitions is None else partitions
        out = {}
        for tp in wanted:
            s = self._states.get(tp)
            if s is None:
                continue
            position = s.published if published and s.published is not None else s.served
            if position is not None and position != s.committed:
                out[tp] = position
        return out

    def committed(self, offsets: dict[Partition, int]) -> None:
        for tp, offset in offsets.items():
            s = self._states.get(tp)
            if s is not None:
                s.committed = offset

    def withdraw(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """Drop the partitions and their pending counts (their records leave the log
        windows when counting resumes: consumer/logwindow.py); returns their published
        positions, which the caller commits."""
        offsets = self.committable(partitions, published=True)
        for tp in list(partitions):
            self._states.pop(tp, None)
        self.generation += 1
        return offsets

    def pending_records(self) -> int:
        """Records processed that no served scrape covers: recounted if the worker dies now."""
        return sum(s.pending_records for s in self._states.values())

    def seconds_since_served(self) -> float:
        return max(0.0, self._clock() - self.last_served)

    def pending_total(self) -> tuple[float, float]:
        """(sessions, cost) counted but not yet published."""
        sessions, cost = 0, 0.0
        for s in self._states.values():
            for t in s.pending.values():
                sessions += t.sessions
                cost += t.cost
        return float(sessions), cost
