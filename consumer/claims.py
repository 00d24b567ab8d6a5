"""Claims on session ids shared by every replica: the rule, and a store-free reference. Pure.

A claim records the log position that owns a session id: (topic, partition, offset).
A record counts when nobody claimed its id, or when the claim is its own position;
any other position means a repeat. So a record read again after a crash or a
hand-over (same position) counts again, as its first reading's counts were never
published or were withdrawn, while a copy of the session anywhere else in the log
(another partition, another replica, another key) does not count.

That is the difference from a plain "set if absent" (Redpanda Connect's dedupe): there
a claim made by a pipeline that then fails keeps its id taken, and the record is lost
when it is read again.

Claims expire `ttl` seconds after they are made: repeats further apart count again.
consumer/redisclaims.py keeps them in Redis, one round trip per batch.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The claim store did not answer: the batch must not be counted (nor committed)."""


class StoreRefused(StoreUnavailable):
    """The store answered and refused us (a wrong password, a certificate it rejects):
    waiting cannot help, so the worker stops at start-up with one line."""


@dataclass(frozen=True, slots=True)
class PartitionClaims:
    """The ids one partition's records of a batch claim, each at its own offset."""

    topic: str
    partition: int
    offsets: Sequence[int]
    ids: Sequence[str]


def position(topic: str, partition: int, offset: int) -> str:
    """A claim's value: the owning record's position."""
    return f"{topic}:{partition}:{offset}"


class ClaimStore(Protocol):
    async def claim(self, batch: Sequence[PartitionClaims]) -> list[list[bool]]:
        """For each partition's ids in turn (in order), whether each record counts;
        claims the ids nobody holds. Raises StoreUnavailable when the store is out of reach."""
        ...

    async def ping(self) -> None:
        """Returns once the store answers; raises StoreUnavailable when it does not."""
        ...

    async def close(self) -> None: ...


class MemoryClaims:
    """The rule in memory, for one process: what the Redis script does, as a reference
    for tests (and for anything that wants the rule without a store)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._claims: dict[str, tuple[str, float]] = {}

    async def claim(self, batch: Sequence[PartitionClaims]) -> list[list[bool]]:
        return [self.claim_now(p) for p in batch]

    def claim_now(self, p: PartitionClaims) -> list[bool]:
        now = self._clock()
        out = []
        for offset, session_id in zip(p.offsets, p.ids, strict=True):
            mine = position(p.topic, p.partition, offset)
            held = self._claims.get(session_id)
            if held is None or held[1] <= now:
                self._claims[session_id] = (mine, now + self.ttl)
                out.append(True)
            else:
                out.append(held[0] == mine)
        return out

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        now = self._clock()
        return sum(1 for _, expires in self._claims.values() if expires > now)
