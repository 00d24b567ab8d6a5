"""consumer/synthetic.py: seeded events for the demo, `produce` and the tests."""

import time
from datetime import UTC, datetime, timedelta

from consumer.synthetic import SessionFactory


def test_events_are_stamped_when_they_are_made() -> None:
    before = time.time()
    events = list(SessionFactory(seed=1).events(100))
    after = time.time()

    for e in events:
        assert e.updated_at is not None
        assert e.started_at is not None
        assert before <= e.updated_at.timestamp() <= after
        assert e.updated_at - e.started_at == timedelta(milliseconds=e.duration)


def test_the_same_seed_gives_the_same_events_at_the_same_clock() -> None:
    noon = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    first = list(SessionFactory(seed=7, clock=lambda: noon).events(200))
    second = list(SessionFactory(seed=7, clock=lambda: noon).events(200))
    other = list(SessionFactory(seed=8, clock=lambda: noon).events(200))

    assert first == second
    assert {e.id for e in first}.isdisjoint(e.id for e in other)


def test_a_seed_keeps_the_ids_it_always_gave() -> None:
    # Corpora and benchmarks are named by seed; their ids must not move with the clock.
    ids = [e.id for e in SessionFactory(seed=3).events(3)]

    assert ids == [
        "78633074-b797-4386-bee2-947631162427",
        "93b05a04-cd08-4b71-ba66-76b3651c5253",
        "e779c470-3b7d-4e04-9591-86946856e45b",
    ]
