"""The log window decides each record from the partition's log alone: whatever the batch
boundaries, restarts, hand-overs and withdrawals, every record gets the decision a single
reader of the whole partition gives it."""

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.logwindow import LogWindows, PartitionWindow

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


def resume(windows: LogWindows, log: list[Rec], first: int) -> int:
    """What a worker does when counting resumes at `first`; returns records read back."""
    read = 0
    for start, end in windows.prepare(TP, first):
        offsets, ids = read_back(log, start, end)
        windows.fill(TP, start, end, offsets, ids)
        read += len(offsets)
    return read


def feed(
    windows: LogWindows,
    batch: list[Rec],
    decided: dict[int, bool],
    want: dict[int, bool] | None = None,
) -> None:
    events = [r for r in batch if r.session_id is not None]
    offsets = [r.offset for r in events]
    ids = [r.session_id for r in events if r.session_id]
    repeats = set(windows.observe(TP, offsets, ids, batch[0].offset, batch[-1].offset + 1))
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
    assert windows.observe(TP, [10, 11], ["a", "a"], 10, 12) == []
    assert len(windows) == 0


def test_a_partition_back_after_another_worker_counted_reads_only_what_that_worker_did() -> None:
    log = [Rec(o, f"s{o % 70}") for o in range(300)]
    windows = LogWindows(100)
    feed(windows, log[:100], {})
    # another worker counted [100, 150); the partition comes back at 150
    assert windows.prepare(TP, 150) == [(100, 150)]
    assert resume(LogWindows(100), log, 150) == 100  # a new reader needs all of it
