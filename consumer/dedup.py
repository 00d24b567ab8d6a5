"""A bounded window of recently counted session ids, so each session is counted once.

Kafka delivers at least once (a redelivered batch after a crash, a producer
retry): the window turns that into "counted once" for any repeat that arrives
within the last `size` distinct ids. Memory is bounded by `size` plus one batch.

Counts that are withdrawn (a partition handed over before a scrape showed them)
must be counted again when their records come back, so the ids a batch added
can be forgotten again: `admit` hands out the list it remembered them in.
"""

from collections import deque
from collections.abc import Hashable
from itertools import repeat

_ABSENT = object()


class DedupWindow:
    """FIFO set of at least the last `size` distinct ids, evicted a batch at a time.

    Ids are remembered in the batches they arrived in: a batch without
    repeats (the common case) is checked and added with set operations in C,
    and the oldest batch is dropped whole once the rest still covers `size`.
    """

    __slots__ = ("_batches", "_seen", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: dict[str, Hashable] = {}
        """Each remembered id, with the owner (partition) that counted it."""
        self._batches: deque[list[str]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, session_id: str) -> bool:
        """Remember `session_id`; False if it is already in the window (a duplicate)."""
        return not self.add_all([session_id])

    def add_all(self, ids: list[str]) -> list[int]:
        """Remember `ids` in order; positions of those already seen (here or earlier in `ids`)."""
        return self.admit(ids)[0]

    def admit(self, ids: list[str], owner: Hashable = None) -> tuple[list[int], list[str]]:
        """`add_all`, plus the list the new ids are remembered in, for `forget`.

        With an `owner` (the partition the ids come from), only an id counted by another
        owner is a duplicate: repeats within one partition are its log window's to
        decide (consumer/logwindow.py), from the log alone, so this window must not
        judge them differently from one run to the next."""
        if self.size == 0:
            return [], []
        seen = self._seen
        if seen.keys().isdisjoint(ids):
            before = len(seen)
            seen.update(zip(ids, repeat(owner)))
            if len(seen) - before == len(ids):
                return [], self._remember(list(ids))
            # A repeat inside `ids` itself: none of them was seen before, so undo exactly.
            for session_id in ids:
                seen.pop(session_id, None)
        duplicates, kept = [], []
        for position, session_id in enumerate(ids):
            have = seen.get(session_id, _ABSENT)
            if have is _ABSENT:
                seen[session_id] = owner
                kept.append(session_id)
            elif owner is None or have != owner:
                duplicates.append(position)
        return duplicates, self._remember(kept)

    def forget(self, remembered: list[str]) -> None:
        """Forget the ids of one `admit` (still in the window or already evicted)."""
        seen = self._seen
        for session_id in remembered:
            seen.pop(session_id, None)
        # Emptied in place: the window's deque holds the same list, and every id the
        # window remembers must stay in exactly one of its lists.
        remembered.clear()

    def _remember(self, ids: list[str]) -> list[str]:
        if not ids:
            return ids
        batches, seen = self._batches, self._seen
        batches.append(ids)
        # Every remembered id is in exactly one batch, so len(seen) is their total.
        while len(seen) - len(batches[0]) >= self.size:
            evicted = batches.popleft()
            deque(map(seen.__delitem__, evicted), maxlen=0)  # each id is in one batch only
            evicted.clear()  # a later forget() of an evicted batch must not touch newer ids
        return ids
