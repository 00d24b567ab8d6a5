"""The log window decides each record from the partition's log alone: whatever the batch
boundaries, restarts, hand-overs and withdrawals, every record gets the decision a single
reader of the whole partition gives it."""

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.aggregate import Buckets
from consumer.claims import MemoryClaims, PartitionClaims
from consumer.logwindow import LogWindows, PartitionWindow
from consumer.metrics import ConsumerMetrics
from consumer.pipeline import decode_batch, in_log
from consumer.repeats import Repeats
from consumer.synthetic import SessionFactory, encode

TP = ("t", 0)


@dataclass(frozen=True)
class Rec:
    offset: int
    session_id: str | None
    """None: a record that is no event (invalid, tombstone)."""


def reference(log: list[Rec], size: int) -> dict[int, bool]:
    """Repeat or not, for each event: its id at an offset in [o - size, o)."""
    last: dict[str, list[int]] = {}
    out = {}
    for r in log:
        if r.session_id is None:
            continue
        seen = last.setdefault(r.session_id, [])
        out[r.offset] = any(r.offset - size <= o < r.offset for o in seen)
        seen.append(r.offset)
    return out


def read_back(log: list[Rec], start: int, end: int) -> tuple[list[int], list[str]]:
    events = [r for r in log if start <= r.offset < end and r.session_id is not None]
    return [r.offset for r in events], [r.session_id for r in events if r.session_id]


def resume(windows: LogWindows, log: list[Rec], first: int, tp: tuple[str, int] = TP) -> int:
    """What a worker does when counting resumes at `first`; returns records read back."""
    read = 0
    for start, end in windows.prepare(tp, first):
        offsets, ids = read_back(log, start, end)
        windows.fill(tp, start, end, offsets, ids)
        read += len(offsets)
    return read


def feed(
    windows: LogWindows,
    batch: list[Rec],
    decided: dict[int, bool],
    want: dict[int, bool] | None = None,
    tp: tuple[str, int] = TP,
) -> None:
    events = [r for r in batch if r.session_id is not None]
    offsets = [r.offset for r in events]
    ids = [r.session_id for r in events if r.session_id]
    repeats = set(windows.observe(tp, offsets, ids, batch[0].offset, batch[-1].offset + 1)[0])
    for i, offset in enumerate(offsets):
        decided[offset] = i in repeats
        if want is not None:  # every decision, not only the last one of each record
            assert decided[offset] == want[offset], f"offset {offset}"


def _log(steps: list[tuple[int, str | None]]) -> list[Rec]:
    offset, out = 0, []
    for gap, session_id in steps:
        offset += gap  # gaps: transaction markers, aborted or compacted records
        out.append(Rec(offset, session_id))
    return out


logs = st.lists(
    st.tuples(st.integers(1, 3), st.one_of(st.none(), st.sampled_from("abcdefghij"))),
    min_size=1,
    max_size=120,
).map(_log)


@settings(max_examples=500, deadline=None)
@given(
    log=logs,
    size=st.integers(1, 30),
    plan=st.lists(st.tuples(st.integers(1, 25), st.sampled_from("nnnbbrwj")), max_size=40),
)
def test_every_record_decided_as_one_reader_of_the_whole_log_decides_it(
    log: list[Rec], size: int, plan: list[tuple[int, str]]
) -> None:
    """n: next batch; b: back to an earlier record (withdrawn counts, same worker);
    r: a new worker (restart or another replica) resumes there; w: same worker resumes
    where it was (a partition that comes straight back); j: the partition comes back
    after another worker counted the next records."""
    want = reference(log, size)
    windows, at = LogWindows(size), 0
    decided: dict[int, bool] = {}
    resume(windows, log, log[0].offset)
    for step, what in plan:
        if what == "b" and at:
            at = max(0, at - step)
            resume(windows, log, log[at].offset)
        elif what == "r":
            at = max(0, at - step)
            windows = LogWindows(size)
            resume(windows, log, log[at].offset)
        elif what == "w" and at < len(log):
            assert resume(windows, log, log[at].offset) == 0
        elif what == "j" and at + step < len(log):
            at += step
            resume(windows, log, log[at].offset)
        if at < len(log):
            batch = log[at : at + step]
            feed(windows, batch, decided, want)
            at += len(batch)
    while at < len(log):
        feed(windows, log[at : at + 7], decided, want)
        at += 7
    assert decided.keys() <= want.keys()


def test_a_partition_that_comes_straight_back_reads_nothing() -> None:
    log = [Rec(o, f"s{o % 50}") for o in range(200)]
    windows = LogWindows(100)
    assert windows.prepare(TP, 0) == []
    feed(windows, log[:120], {})
    assert windows.prepare(TP, 120) == []


def test_a_new_reader_reads_back_exactly_the_window_before_its_first_record() -> None:
    windows = LogWindows(100)
    assert windows.prepare(TP, 1000) == [(900, 1000)]
    assert windows.prepare(("t", 1), 30) == [(0, 30)]


def test_withdrawn_records_are_forgotten_and_only_the_missing_part_is_read() -> None:
    log = [Rec(o, f"s{o}") for o in range(300)]
    windows = LogWindows(100)
    feed(windows, log[:150], {})
    feed(windows, log[150:300], {})
    # counting resumes at 250: the window must hold [150, 250), it holds [>=150, 300)
    missing = windows.prepare(TP, 250)
    assert all(start >= 0 and end <= 250 for start, end in missing)
    decided: dict[int, bool] = {}
    feed(windows, [Rec(250, "s200"), Rec(251, "s260")], decided)
    assert decided == {250: True, 251: False}  # s260 sat in the withdrawn part


def test_memory_holds_the_window_and_at_most_one_batch_more() -> None:
    window = PartitionWindow(1000, 0)
    for start in range(0, 100_000, 500):
        offsets = list(range(start, start + 500))
        window.observe(offsets, [f"s{o}" for o in offsets], start, start + 500)
    assert 1000 <= len(window) <= 1500


def test_a_zero_window_decides_nothing_and_holds_nothing() -> None:
    windows = LogWindows(0)
    assert windows.prepare(TP, 10) == []
    assert windows.observe(TP, [10, 11], ["a", "a"], 10, 12) == ([], [])
    assert len(windows) == 0


def test_a_partition_back_after_another_worker_counted_reads_only_what_that_worker_did() -> None:
    log = [Rec(o, f"s{o % 70}") for o in range(300)]
    windows = LogWindows(100)
    feed(windows, log[:100], {})
    # another worker counted [100, 150); the partition comes back at 150
    assert windows.prepare(TP, 150) == [(100, 150)]
    assert resume(LogWindows(100), log, 150) == 100  # a new reader needs all of it


@settings(max_examples=300, deadline=None)
@given(
    partition_logs=st.lists(logs, min_size=2, max_size=3),
    size=st.integers(1, 30),
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 25), st.sampled_from("nnnnbwjd")),
        max_size=60,
    ),
)
def test_partitions_sharing_a_worker_never_change_each_others_decisions(
    partition_logs: list[list[Rec]], size: int, plan: list[tuple[int, int, str]]
) -> None:
    """The partitions of one worker share one dict of ids, and their logs share ids (the
    same sessions under other keys): each partition's records are still decided from its
    own log alone. d: the partition leaves the worker, and is resumed when it comes back."""
    tps = [("t", p) for p in range(len(partition_logs))]
    wants = [reference(log, size) for log in partition_logs]
    windows, at = LogWindows(size), [0] * len(tps)
    decided: list[dict[int, bool]] = [{} for _ in tps]
    away: set[int] = set()
    for p, log in enumerate(partition_logs):
        resume(windows, log, log[0].offset, tps[p])
    for which, step, what in plan:
        p = which % len(tps)
        log = partition_logs[p]
        if what == "d":
            windows.keep_only([tp for q, tp in enumerate(tps) if q != p and q not in away])
            away.add(p)
            continue
        if p in away and at[p] < len(log):
            away.discard(p)
            resume(windows, log, log[at[p]].offset, tps[p])
        if what == "b" and at[p]:
            at[p] = max(0, at[p] - step)
            resume(windows, log, log[at[p]].offset, tps[p])
        elif what == "w" and at[p] < len(log):
            assert resume(windows, log, log[at[p]].offset, tps[p]) == 0
        elif what == "j" and at[p] + step < len(log):
            at[p] += step
            resume(windows, log, log[at[p]].offset, tps[p])
        if at[p] < len(log):
            batch = log[at[p] : at[p] + step]
            feed(windows, batch, decided[p], wants[p], tps[p])
            at[p] += len(batch)


def observe(windows: LogWindows, tp: tuple[str, int], first: int, ids: list[str]) -> list[int]:
    """Records [first, first + len(ids)), one event each; the positions found elsewhere."""
    offsets = list(range(first, first + len(ids)))
    repeats, elsewhere = windows.observe(tp, offsets, ids, first, first + len(ids))
    assert not set(repeats) & set(elsewhere)
    return elsewhere


def test_an_id_in_another_partitions_window_is_found_elsewhere() -> None:
    windows = LogWindows(10)
    assert observe(windows, ("t", 0), 0, ["x", "a"]) == []
    assert observe(windows, ("t", 1), 0, ["b", "x"]) == [1]
    # Partition 1 holds "x" now; partition 0 still decides from its own log.
    assert windows.observe(("t", 0), [2], ["x"], 2, 3) == ([0], [])
    assert observe(windows, ("t", 2), 0, ["x"]) == [0]


def test_an_id_no_longer_in_any_window_is_not_found_elsewhere() -> None:
    windows = LogWindows(10)
    observe(windows, ("t", 0), 0, ["x"])
    observe(windows, ("t", 0), 1, [f"s{o}" for o in range(1, 21)])  # "x" fell out
    assert observe(windows, ("t", 1), 0, ["x"]) == []


def test_a_partition_that_left_the_worker_takes_its_ids_along() -> None:
    windows = LogWindows(10)
    observe(windows, ("t", 0), 0, ["x", "y"])
    observe(windows, ("t", 1), 0, ["y"])
    windows.keep_only([("t", 1), ("t", 2)])
    assert observe(windows, ("t", 2), 0, ["x", "y"]) == [1]


def test_an_id_taken_over_by_another_partition_still_leaves_with_its_own_window() -> None:
    """Partition 0's "x" moved aside when partition 1 took it; once partition 0 has moved
    past it and partition 1 has left, nothing holds "x" (no id outlives its windows)."""
    windows = LogWindows(5)
    observe(windows, ("t", 0), 0, ["x"])
    observe(windows, ("t", 1), 0, ["x"])
    observe(windows, ("t", 0), 1, [f"s{o}" for o in range(1, 12)])
    windows.keep_only([("t", 0), ("t", 2)])
    assert observe(windows, ("t", 2), 0, ["x"]) == []
    assert len(windows) <= 5 + 11


def test_ids_moved_aside_leave_with_the_records_they_stand_for() -> None:
    """An offset kept aside (another partition took the id over) goes when its record
    leaves the window: memory stays bounded by the windows."""
    windows = LogWindows(10)
    for start in range(0, 1000, 5):
        ids = [f"s{o}" for o in range(start, start + 5)]
        observe(windows, ("t", 0), start, ids)
        observe(windows, ("t", 1), start, ids)  # takes each id over from partition 0
    for tp in windows:
        w = windows._windows[tp]
        assert all(w.lo <= offset < w.hi for offset in w.displaced.values())
        assert len(w.displaced) <= 15


def test_a_batch_that_left_holds_no_id_seen_again_since() -> None:
    """An id came in a batch without repeats, then again: when the first batch leaves the
    window, the newer copy stays."""
    windows = LogWindows(4)
    assert windows.observe(TP, [0], ["a"], 0, 1) == ([], [])
    assert windows.observe(TP, [1, 2], ["b", "a"], 1, 3) == ([1], [])
    assert windows.observe(TP, [3, 4, 5], ["c", "d", "e"], 3, 6) == ([], [])  # [0] left
    assert windows.observe(TP, [6], ["a"], 6, 7) == ([0], [])  # "a" at 2 is in [2, 6)


def test_a_partition_taken_in_again_keeps_the_other_partitions_ids() -> None:
    """Partition 0 rewinds (its window is taken in again) after partition 1 took "x"
    over: partition 1 still finds its own "x"."""
    p, q = ("t", 0), ("t", 1)
    windows = LogWindows(10)
    windows.observe(p, [0, 1], ["x", "z"], 0, 2)
    windows.observe(q, [0], ["x"], 0, 1)
    windows.rewind(p, 1)
    assert windows.observe(q, [1], ["x"], 1, 2) == ([0], [])


# --- what the worker makes of the windows' verdicts (consumer/repeats.py) ----------------


@dataclass(frozen=True)
class KafkaRec:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


async def judged(store: MemoryClaims | None) -> dict[tuple[str, int], list[int]]:
    """A batch of two partitions: "s1", "s2" on partition 0, then "s2" on partition 1."""
    first, second = SessionFactory(3).events(2)
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    batch = {
        p0: [KafkaRec("t", 0, 0, encode(first)), KafkaRec("t", 0, 1, encode(second))],
        p1: [KafkaRec("t", 1, 0, encode(second))],
    }
    if store is not None:  # partition 1's copy claimed it before (an earlier life)
        await store.claim([PartitionClaims("t", 1, [0], [second.id])])
    buckets = Buckets((1.0,), (1.0,), (1.0,))
    repeats = Repeats(
        100, lambda b: decode_batch(b, 1 << 20), ConsumerMetrics(buckets, 10), store=store
    )
    _, verdicts = await repeats.settle(await repeats.start(batch, 0))
    return {(tp[0], tp[1]): v for tp, v in verdicts.items()}


async def test_without_a_store_a_copy_in_another_partitions_window_is_a_repeat() -> None:
    assert await judged(None) == {("t", 0): [], ("t", 1): [0]}


async def test_with_a_store_the_store_alone_decides_across_partitions() -> None:
    """The claim is partition 1's own position, so its copy counts there (and the one on
    partition 0 is the repeat), although partition 0's window holds the id."""
    assert await judged(MemoryClaims(3600)) == {("t", 0): [1], ("t", 1): []}


def test_a_batch_with_skipped_offsets_is_judged_at_its_records_own_offsets() -> None:
    """Offsets a batch skips (transaction markers) are no events: a repeat 4 records
    back by offset is outside a window of 3, however few records lie between."""
    first, second = SessionFactory(4).events(2)
    tp = TopicPartition("t", 0)
    windows = LogWindows(3)
    gapped = [(0, first), (1, second), (4, first)]
    batch = {tp: [KafkaRec("t", 0, o, encode(e)) for o, e in gapped]}
    (c,) = in_log(decode_batch(batch, 1 << 20), windows).values()
    assert list(c.offsets) == [0, 1, 4]
    assert c.repeats == []
    batch = {tp: [KafkaRec("t", 0, o, encode(second)) for o in (5, 6)]}
    (c,) = in_log(decode_batch(batch, 1 << 20), windows).values()
    assert list(c.offsets) == [5, 6]
    assert c.repeats == [1]
