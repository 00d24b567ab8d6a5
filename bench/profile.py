"""Where the project's time goes: one run under pyinstrument, summed by area."""

import pstats
from pathlib import Path

from bench.observe import Process, project, timed_run
from consumer.broker import free_port

# First match wins: (area, substring of the function's file path or name).
IDLE, STARTUP = "waiting for the broker (idle)", "start-up (imports)"
AREAS = (
    (IDLE, "epoll.poll"),
    (IDLE, "selectors.py"),
    (STARTUP, ":<module>"),
    ("decode (msgspec)", "Decoder.decode"),
    ("decode (msgspec)", "consumer/decode.py"),
    ("aggregate", "consumer/aggregate.py"),
    ("dedup", "consumer/logwindow.py"),
    ("dedup", "consumer/repeats.py"),
    ("dedup", "consumer/claims.py"),
    ("dedup", "consumer/redisclaims.py"),
    ("metrics and /metrics", "consumer/metrics.py"),
    ("metrics and /metrics", "consumer/exposition.py"),
    ("metrics and /metrics", "prometheus_client"),
    ("metrics and /metrics", "consumer/http.py"),
    ("metrics and /metrics", "aiohttp/web"),
    ("worker loop and commit", "consumer/worker.py"),
    ("aiokafka: fetch, parse, build records", "aiokafka"),
    ("socket I/O", "socket."),
    ("asyncio and other", ""),
)


async def profile(bootstrap: str, topic: str, logs: Path, events: int) -> dict[str, float]:
    """Share of busy time per area (idle time reported separately), in percent."""
    out = logs / "project.pstats"
    profiler = ("-m", "pyinstrument", "-r", "pstats", "-o", str(out))
    profiled = project(bootstrap, topic, "--group-id", "bench-profile", under=profiler)
    process = Process(profiled, free_port(), logs, "profile")
    await timed_run([process], events, within=600)
    shares = summarize(out)
    print("  profile: " + ", ".join(f"{k} {v:.0f}%" for k, v in shares.items()), flush=True)
    return shares


def summarize(path: Path) -> dict[str, float]:
    stats = pstats.Stats(str(path))
    totals: dict[str, float] = {}
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        self_time = row[2]
        where = f"{filename}:{function}"
        area = next(name for name, needle in AREAS if needle in where)
        totals[area] = totals.get(area, 0.0) + self_time
    idle = totals.pop(IDLE, 0.0)
    totals.pop(STARTUP, None)
    busy = sum(totals.values()) or 1.0
    shares = {k: 100 * v / busy for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    shares["idle, share of all time"] = 100 * idle / (busy + idle)
    return shares
