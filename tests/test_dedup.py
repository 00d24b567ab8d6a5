"""consumer/dedup.py: a bounded FIFO window that says whether a session id was seen recently."""

import gc
import sys

from consumer.dedup import DedupWindow


def test_first_add_of_an_id_is_new() -> None:
    window = DedupWindow(10)

    assert window.add("s-1") is True
    assert len(window) == 1


def test_repeated_id_is_a_duplicate() -> None:
    window = DedupWindow(10)
    window.add("s-1")

    assert window.add("s-1") is False
    assert window.add("s-1") is False
    assert len(window) == 1


def test_distinct_ids_are_all_new() -> None:
    window = DedupWindow(10)

    assert [window.add(f"s-{i}") for i in range(5)] == [True] * 5
    assert len(window) == 5


def test_oldest_id_is_evicted_after_size_distinct_ids() -> None:
    window = DedupWindow(3)
    for session_id in ("a", "b", "c", "d"):
        window.add(session_id)

    # "a" fell out; "b", "c" and "d" are still remembered.
    assert window.add("b") is False
    assert window.add("c") is False
    assert window.add("d") is False
    assert window.add("a") is True
    # Re-adding "a" evicted the next oldest, "b".
    assert window.add("b") is True
    assert window.add("d") is False


def test_a_duplicate_does_not_refresh_its_place_in_the_window() -> None:
    window = DedupWindow(2)
    window.add("a")
    window.add("b")
    assert window.add("a") is False

    window.add("c")

    # First in, first out: "a" was the oldest even though it was seen again.
    assert window.add("a") is True


def test_size_zero_disables_deduplication() -> None:
    window = DedupWindow(0)

    assert window.add("s-1") is True
    assert window.add("s-1") is True
    assert len(window) == 0


def test_memory_is_bounded_by_size() -> None:
    window = DedupWindow(100)

    for i in range(10_000):
        window.add(f"s-{i % 250}")
        assert len(window) <= 100

    assert len(window) == 100
    # Exactly the last 100 distinct ids (150..249) are remembered.
    assert window.add("s-149") is True
    assert all(window.add(f"s-{i}") is False for i in range(151, 250))


def deep_size(root: object) -> int:
    """Bytes of `root` and of everything it references (types excluded): what it keeps alive."""
    seen, stack, total = set(), [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def test_window_memory_stays_at_its_capacity_after_a_million_distinct_ids() -> None:
    size, total = 100_000, 1_000_000
    window = DedupWindow(size)
    for i in range(size):
        window.add(f"{i:036d}")  # as long as a UUID, like real session ids
    at_capacity = deep_size(window)

    high = 0
    for i in range(size, total):
        window.add(f"{i:036d}")
        if i % 200_000 == 0:
            high = max(high, deep_size(window))
    after = deep_size(window)

    assert len(window) == size
    # Nine hundred thousand more ids than it can hold, and no more memory for them (a dict
    # keeps the slots of evicted ids until its next resize: up to ~1.2x, then back).
    assert after < 1.25 * at_capacity
    assert high < 1.25 * at_capacity
    assert at_capacity / size < 300  # bytes per remembered id, the id itself included
    # What it holds is the newest ids, not arbitrary survivors.
    assert window.add(f"{total - 1:036d}") is False
    assert window.add(f"{total - size - 1:036d}") is True


def test_with_owners_only_an_id_counted_by_another_owner_is_a_duplicate() -> None:
    """Repeats within one partition are its log window's to decide: the worker-wide
    window must not call them duplicates, or totals would depend on who read what."""
    window = DedupWindow(10)
    assert window.admit(["a", "b"], ("t", 0))[0] == []
    assert window.admit(["a", "c"], ("t", 0))[0] == []  # "a" again on its own partition
    assert window.admit(["c", "a", "d", "d"], ("t", 1))[0] == [0, 1]
    assert window.admit(["x", "x"], ("t", 2))[0] == []  # twice in one partition's batch
