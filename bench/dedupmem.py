"""Memory and CPU of the dedup state at the defaults, measured in-process.

`python -m bench.dedupmem [--window N] [--partitions N] [--events N]`; `make bench` runs
it too and shows the figures on BENCHMARKS.md.

The state a worker keeps without `--dedup-store` is one log window per assigned partition
(consumer/logwindow.py, `--dedup-window` records each) and the worker-wide window of
counted ids (consumer/dedup.py, `--dedup-window` ids), fed here as consumer/repeats.py and
consumer/pipeline.py feed them: batches of `--max-batch-records` (20,000) records spread
over the partitions, each partition's events observed by its log window and its ids
admitted to the worker's window. Both hold the same str objects, as in the worker. Ids are
36-character UUIDs, as the corpus's; a partition is drawn at random per event (the
corpus's keys spread 50 workspaces over the partitions). Measured after far more events
than the windows hold, so they are full and evicting. For comparison, the same for the
dedup before the log windows (7fb233c): the worker-wide window alone, 100,000 ids.

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
from collections.abc import Callable

from consumer.dedup import DedupWindow
from consumer.logwindow import LogWindows

WINDOW, PARTITIONS, BATCH = 20_000, 6, 20_000
"""The defaults: --dedup-window, the benchmark's partitions on one worker, --max-batch-records."""
BEFORE_WINDOW = 100_000
"""--dedup-window's default before the log windows: ids in the one worker-wide window."""


def measure(
    window: int = WINDOW, partitions: int = PARTITIONS, events: int = 200_000
) -> dict[str, float]:
    """MB held, ids held and µs per event of the log windows, the worker's window and the
    window before the log windows."""
    logs = _held(lambda: (LogWindows(window), None), partitions, events)
    both = _held(lambda: (LogWindows(window), DedupWindow(window)), partitions, events)
    old = _held(lambda: (None, DedupWindow(BEFORE_WINDOW)), partitions, events)
    logs_s, worker_s = _feed(LogWindows(window), DedupWindow(window), partitions, events)
    _, old_s = _feed(None, DedupWindow(BEFORE_WINDOW), partitions, events)
    result = {
        "window": window,
        "partitions": partitions,
        "log_windows_mb": logs["mb"],
        "worker_window_mb": both["mb"] - logs["mb"],
        "total_mb": both["mb"],
        "ids_in_log_windows": logs["log_ids"],
        "ids_in_worker_window": both["worker_ids"],
        "log_windows_us": logs_s / events * 1e6,
        "worker_window_us": worker_s / events * 1e6,
        "before_window": BEFORE_WINDOW,
        "before_mb": old["mb"],
        "before_us": old_s / events * 1e6,
    }
    print(
        f"  dedup state at --dedup-window {window:,} on {partitions} partitions: "
        f"{result['total_mb']:.1f} MB ({result['log_windows_mb']:.1f} MB log windows, "
        f"{logs['log_ids']:,.0f} ids; {result['worker_window_mb']:.1f} MB worker window), "
        f"{result['log_windows_us'] + result['worker_window_us']:.2f} µs per event; "
        f"before (one window of {BEFORE_WINDOW:,} ids): {result['before_mb']:.1f} MB, "
        f"{result['before_us']:.2f} µs per event",
        flush=True,
    )
    return result


Layers = tuple[LogWindows | None, DedupWindow | None]


def _held(make: Callable[[], Layers], partitions: int, events: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        windows, worker = make()
        _feed(windows, worker, partitions, events)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {
        "mb": held / 2**20,
        "log_ids": float(len(windows)) if windows is not None else 0.0,
        "worker_ids": float(len(worker)) if worker is not None else 0.0,
    }


def _feed(
    windows: LogWindows | None, worker: DedupWindow | None, partitions: int, events: int
) -> tuple[float, float]:
    """Feed `events` ids in batches; seconds spent in the log windows and in the worker's."""
    rng = random.Random(3)
    next_offset = [0] * partitions
    in_logs = in_worker = 0.0
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
            if windows is not None:
                windows.observe(("t", p), offsets, ids, offsets[0], offsets[-1] + 1)
            observed = time.perf_counter()
            if worker is not None:
                worker.admit(ids)
            in_logs += observed - started
            in_worker += time.perf_counter() - observed
        del batch
    return in_logs, in_worker


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.dedupmem", description=__doc__)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--partitions", type=int, default=PARTITIONS)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    measure(args.window, args.partitions, args.events)
