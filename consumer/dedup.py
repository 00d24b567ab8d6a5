"""A bounded window of recently counted session ids, so each session is counted once.

Kafka delivers at least once (a redelivered batch after a crash, a producer
retry): the window turns that into "counted once" for any repeat that arrives
within the last `size` distinct ids. Memory is bounded by `size`.
"""

from collections import deque


class DedupWindow:
    """FIFO set of the last `size` ids: O(1) check-and-add, oldest id evicted first."""

    __slots__ = ("_order", "_seen", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, session_id: str) -> bool:
        """Remember `session_id`; False if it is already in the window (a duplicate)."""
        if self.size == 0:
            return True
        seen = self._seen
        if session_id in seen:
            return False
        seen.add(session_id)
        order = self._order
        order.append(session_id)
        if len(order) > self.size:
            seen.discard(order.popleft())
        return True
