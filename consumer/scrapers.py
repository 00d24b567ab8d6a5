"""Who scrapes this worker, and what each has been served. Pure, with a clock passed in.

Every published state has a number (the ledger's `publication`). A stopping worker
must not vanish before each Prometheus server that scrapes it has been served its last
published state: the server that scraped less recently would otherwise never see what
the other one saw, and its totals would fall short for good (an HA pair). So the worker
keeps serving its final totals, out of the consumer group already, until every *active
scraper* is caught up (consumer/service.py), at most `--handover-timeout`.

- A client is named by the `--scraper-param` query parameter, else the
  `--scraper-header` header, else its address (each Prometheus replica is its own pod).
- It becomes a scraper at its second full, served scrape within MAX_INTERVAL: a one-off
  `curl` never holds a stop back. Filtered (`name[]`), refused and cut-off requests are
  not served scrapes and do not count.
- It stops being one once it has not scraped for `grace_intervals` of its own interval
  (the gap between its last two scrapes), so a dead server holds a stop back for at
  most that long.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_INTERVAL = 600.0
"""Two scrapes further apart than this are no regular scraping."""
MAX_CLIENTS = 1000
"""Clients remembered at most: a flood of one-off clients cannot grow the table."""


@dataclass(slots=True)
class Client:
    last: float
    """When its last served scrape ended."""
    seen: int
    """Publication number its last served scrape showed."""
    interval: float | None = None
    """Gap between its last two served scrapes; None after only one."""

    def active(self, now: float, grace_intervals: float) -> bool:
        return self.interval is not None and now - self.last <= grace_intervals * self.interval


class Scrapers:
    def __init__(
        self, grace_intervals: float = 3.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_intervals = grace_intervals
        self._clock = clock
        self._clients: dict[str, Client] = {}
        self.changed = asyncio.Event()
        """Set at every served scrape, for whoever waits for scrapers to catch up."""

    def served(self, who: str, publication: int) -> None:
        """`who`'s full scrape, showing publication `publication`, was written out whole."""
        now = self._clock()
        c = self._clients.get(who)
        if c is None or now - c.last > MAX_INTERVAL:
            self._forget_stale(now)
            self._clients[who] = Client(now, publication)
        else:
            c.interval, c.last, c.seen = now - c.last, now, max(c.seen, publication)
        self.changed.set()

    def active(self) -> list[str]:
        now = self._clock()
        return sorted(w for w, c in self._clients.items() if c.active(now, self.grace_intervals))

    def behind(self, publication: int) -> list[str]:
        """Active scrapers not yet served publication `publication`."""
        now = self._clock()
        return sorted(
            w
            for w, c in self._clients.items()
            if c.active(now, self.grace_intervals) and c.seen < publication
        )

    def _forget_stale(self, now: float) -> None:
        clients = self._clients
        for w in [w for w, c in clients.items() if not c.active(now, self.grace_intervals)]:
            if now - clients[w].last > MAX_INTERVAL:
                del clients[w]
        while len(clients) >= MAX_CLIENTS:  # oldest first: dicts keep insertion order
            del clients[next(iter(clients))]


async def caught_up(
    scrapers: Scrapers, publication: int, within: float, hurry: asyncio.Event
) -> list[str]:
    """Wait until every active scraper has been served `publication`, at most `within`
    seconds or until `hurry` is set; returns the scrapers still behind then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (behind := scrapers.behind(publication)) and not hurry.is_set():
        left = deadline - loop.time()
        if left <= 0:
            break
        scrapers.changed.clear()
        waits = {
            asyncio.ensure_future(scrapers.changed.wait()),
            asyncio.ensure_future(hurry.wait()),
        }
        # Re-checked at least every second: a scraper can also leave the set by time alone.
        await asyncio.wait(waits, timeout=min(left, 1.0), return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    return behind
