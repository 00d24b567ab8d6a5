"""Memory and CPU of the dedup state at the defaults, measured in-process.

`python -m bench.dedupmem [--window N] [--partitions N] [--events N]`; `make bench` runs
it too and shows the figures on BENCHMARKS.md.

The state a worker keeps is one log window per assigned partition, all in one dict of ids
(consumer/logwindow.py, `--dedup-window` records each), fed here as consumer/repeats.py and
consumer/pipeline.py feed it: batches of `--max-batch-records` (20,000) records spread
over the partitions, each partition's events observed by its window, which also tells
which of them sit in another partition's window. Ids are 36-character UUIDs, as the
corpus's; a partition is drawn at random per event (the corpus's keys spread 50
workspaces over the partitions). Measured after far more events than the windows hold, so
they are full and evicting. For comparison, the same for the dedup before the log windows
(7fb233c): one worker-wide window of 100,000 ids, re-stated here as `_WindowBefore`.

Memory is what tracemalloc counts (what Python asks the allocator for, not the pages the
process keeps: bench/ab.py's RSS of a worker with `--dedup-window 0` beside one with the
default is the check from outside); CPU is timed around the calls alone, in a second pass
without tracemalloc.
"""

import argparse
import gc
import random
import time
import tracemalloc
import uuid
from collections import deque
from collections.abc import Callable, Sequence, Sized

from consumer.logwindow import LogWindows

WINDOW, PARTITIONS, BATCH = 20_000, 6, 20_000
"""The defaults: --dedup-window, the benchmark's partitions on one worker, --max-batch-records."""
BEFORE_WINDOW = 100_000
"""--dedup-window's default before the log windows: ids in the one worker-wide window."""


class _WindowBefore:
    """7fb233c's consumer/dedup.py, its usual path: a FIFO of the last `size` distinct ids,
    checked and added a batch at a time in C, evicted a batch at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: dict[str, None] = {}
        self._batches: deque[list[str]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, _tp: object, _offsets: Sequence[int], ids: list[str], *_: int) -> None:
        seen = self._seen
        if seen.keys().isdisjoint(ids):
            seen.update(dict.fromkeys(ids))
        else:
            for session_id in ids:
                seen.setdefault(session_id)
        self._batches.append(list(ids))
        while len(seen) - len(self._batches[0]) >= self.size:
            deque(map(seen.__delitem__, self._batches.popleft()), maxlen=0)


State = LogWindows | _WindowBefore


def measure(
    window: int = WINDOW, partitions: int = PARTITIONS, events: int = 200_000
) -> dict[str, float]:
    """MB held, ids held and µs per event of the log windows, and of the window before
    the log windows."""
    logs = _held(lambda: LogWindows(window), partitions, events)
    old = _held(lambda: _WindowBefore(BEFORE_WINDOW), partitions, events)
    logs_s = _feed(LogWindows(window), partitions, events)
    old_s = _feed(_WindowBefore(BEFORE_WINDOW), partitions, events)
    result = {
        "window": window,
        "partitions": partitions,
        "total_mb": logs["mb"],
        "ids_in_log_windows": logs["ids"],
        "log_windows_us": logs_s / events * 1e6,
        "before_window": BEFORE_WINDOW,
        "before_mb": old["mb"],
        "before_us": old_s / events * 1e6,
    }
    print(
        f"  dedup state at --dedup-window {window:,} on {partitions} partitions: "
        f"{result['total_mb']:.1f} MB ({logs['ids']:,.0f} ids), "
        f"{result['log_windows_us']:.2f} µs per event; "
        f"before (one window of {BEFORE_WINDOW:,} ids): {result['before_mb']:.1f} MB, "
        f"{result['before_us']:.2f} µs per event",
        flush=True,
    )
    return result


def _held(make: Callable[[], State], partitions: int, events: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = make()
        _feed(state, partitions, events)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"mb": held / 2**20, "ids": float(len(state) if isinstance(state, Sized) else 0)}


def _feed(state: State, partitions: int, events: int) -> float:
    """Feed `events` ids in batches; seconds spent in the dedup state."""
    rng = random.Random(3)
    next_offset = [0] * partitions
    spent = 0.0
    for _ in range(0, events, BATCH):
        batch: dict[int, tuple[list[int], list[str]]] = {}
        for _ in range(BATCH):
            p = rng.randrange(partitions)
            offsets, ids = batch.setdefault(p, ([], []))
            offsets.append(next_offset[p])
            ids.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            next_offset[p] += 1
        for p, (offsets, ids) in batch.items():
            started = time.perf_counter()
            # Consecutive offsets, all events: in_log hands the window a range, as here.
            first, end = offsets[0], offsets[-1] + 1
            state.observe(("t", p), range(first, end), ids, first, end)
            spent += time.perf_counter() - started
        del batch
    return spent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.dedupmem", description=__doc__)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--partitions", type=int, default=PARTITIONS)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    measure(args.window, args.partitions, args.events)
