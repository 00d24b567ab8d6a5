"""consumer/scrapers.py: who is a scraper, when it stops being one, what it was served."""

import asyncio

from consumer.scrapers import MAX_CLIENTS, MAX_INTERVAL, Scrapers, caught_up


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_becomes_a_scraper_at_its_second_scrape() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    s.served("prom-a", 1)
    assert s.active() == []  # a one-off GET (a person's curl) holds nothing back
    clock.now += 15
    s.served("prom-a", 2)
    assert s.active() == ["prom-a"]


def test_two_scrapes_further_apart_than_the_longest_interval_are_no_scraper() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    s.served("curl", 1)
    clock.now += MAX_INTERVAL + 1
    s.served("curl", 2)
    assert s.active() == []


def test_a_scraper_leaves_after_grace_intervals_without_a_scrape() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    s.served("prom-a", 1)
    clock.now += 10
    s.served("prom-a", 1)
    clock.now += 30  # exactly three of its 10 s intervals
    assert s.active() == ["prom-a"]
    clock.now += 0.1
    assert s.active() == []


def test_behind_names_active_scrapers_not_yet_served_the_publication() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    for who in ("a", "b"):
        s.served(who, 1)
    clock.now += 5
    s.served("a", 2)
    s.served("b", 1)
    s.served("curl", 2)
    assert s.behind(2) == ["b"]
    assert s.behind(1) == []


def test_the_table_stays_bounded_under_a_flood_of_one_off_clients() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    for i in range(5 * MAX_CLIENTS):
        s.served(f"10.0.{i // 256}.{i % 256}", 1)
    assert len(s._clients) <= MAX_CLIENTS


async def test_caught_up_returns_once_the_last_scraper_is_served() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    for who in ("a", "b"):
        s.served(who, 1)
    clock.now += 1
    for who in ("a", "b"):
        s.served(who, 1)
    s.served("a", 2)

    async def b_scrapes() -> None:
        await asyncio.sleep(0.2)
        s.served("b", 2)

    task = asyncio.create_task(b_scrapes())
    assert await caught_up(s, 2, 5.0, asyncio.Event()) == []
    await task


async def test_caught_up_gives_up_at_the_timeout_and_names_who_is_behind() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    s.served("b", 0)
    clock.now += 100
    s.served("b", 0)
    assert await caught_up(s, 1, 0.3, asyncio.Event()) == ["b"]


async def test_a_second_stop_signal_ends_the_wait() -> None:
    clock = Clock()
    s = Scrapers(3, clock)
    s.served("b", 0)
    clock.now += 100
    s.served("b", 0)
    hurry = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, hurry.set)
    assert await asyncio.wait_for(caught_up(s, 1, 30.0, hurry), 5) == ["b"]
