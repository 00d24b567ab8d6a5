"""`python -m bench`: ceiling vs naive vs session-metrics on one topic, then report.

One run: for each broker asked for (Tansu, Apache Kafka, or both in turn), start it,
produce the same seeded corpus, then time each contender as a fresh process with a
fresh consumer group, in alternating order over several rounds, and two workers in
one group; on the first broker also the scrape time at 10k series and a profile of
the project. With Debian's redis-server on PATH, a Redis started for the run backs a
further contender, the project with `--dedup-store`. The dedup state's memory at the
defaults is measured in-process (bench/dedupmem.py). See BENCHMARKS.md.
"""

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import brokers, corpus, dedupmem, profile, redisstore, report, scrape
from bench.narrative import EVENTS, ROUNDS, SERIES
from bench.observe import MESSAGES, Contender, Process, Timed, project, python, timed_run
from consumer.broker import create_topics, free_port

TOPIC, PARTITIONS = "bench-sessions", 6
RESULTS = Path(__file__).resolve().parent / "results"
"""Every run's raw output (git-ignored); --write-page also publishes it (report.PAGE_DATA)."""
STORE = report.STORE
"""The project with `--dedup-store` on the run's Redis."""


def contenders(bootstrap: str, store: str | None = None) -> dict[str, Contender]:
    common = ["--bootstrap", bootstrap, "--topic", TOPIC]
    out = {
        "ceiling": Contender(
            "ceiling", python("-m", "bench.ceiling", *common), "--port", "bench_records"
        ),
        "naive": Contender("naive", python("-m", "bench.naive", *common), "--port", MESSAGES),
        "project": project(bootstrap, TOPIC),
    }
    if store is not None:
        out[STORE] = project(bootstrap, TOPIC, "--dedup-store", store, name=STORE)
    return out


def with_group(c: Contender, group: str) -> Contender:
    # session-metrics takes --metrics-port and --group-id; bench/contender.py --port, --group.
    flag = "--group-id" if c.port_flag == "--metrics-port" else "--group"
    return Contender(c.name, [*c.argv, flag, group], c.port_flag, c.metric, c.cwd, c.env)


async def one(c: Contender, tag: str, logs: Path, events: int, workers: int = 1) -> Timed:
    tag = tag.replace(" + ", "-").replace(" ", "-")  # group ids and log file names
    grouped = with_group(c, f"bench-{tag}")
    processes = [Process(grouped, free_port(), logs, f"{tag}-{i}") for i in range(workers)]
    name = c.name if workers == 1 else f"{c.name} x{workers}"
    return await timed_run(processes, events, within=600, name=name)


async def rounds(
    bootstrap: str, logs: Path, events: int, count: int, redis: redisstore.RedisStore | None
) -> tuple[dict[str, list[Timed]], dict[str, float]]:
    """Each contender's rounds; and what the store contender's last round left in Redis."""
    cs = contenders(bootstrap, redis.url if redis else None)
    order = list(cs)
    runs: dict[str, list[Timed]] = {name: [] for name in [*order, "project x2"]}
    held: dict[str, float] = {}
    for r in range(count):
        # Alternate the order so no contender always runs first (cold caches) or last.
        for name in order if r % 2 == 0 else order[::-1]:
            if name == STORE and redis is not None:
                redis.flush()
                empty = redis.held()["used_mb"]
            timed = await one(cs[name], f"{name}-{r}", logs, events)
            runs[name].append(timed)
            if name == STORE and redis is not None:
                held = redis.held()
                held["claim_bytes"] = (held["used_mb"] - empty) * 2**20 / max(held["claims"], 1)
            print(f"  round {r + 1}: {name:<15} {timed.rate:>10,.0f} events/s", flush=True)
        two = await one(cs["project"], f"two-{r}", logs, events, workers=2)
        runs["project x2"].append(two)
        print(f"  round {r + 1}: {'2 workers':<15} {two.rate:>10,.0f} events/s", flush=True)
    return runs, held


def medians(runs: dict[str, list[Timed]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "events_per_second": statistics.median(t.rate for t in timed),
            "peak_rss_mb": max(max(t.peak_rss_mb) for t in timed),
            "cpu_us_per_event": statistics.median(t.cpu_us_per_event for t in timed),
            "rounds": len(timed),
        }
        for name, timed in runs.items()
    }


@dataclass
class BrokerRun:
    """What one broker's part of the run measured."""

    runs: dict[str, list[Timed]]
    store: dict[str, float] = field(default_factory=dict)
    scrape: dict[str, float] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)


async def on_broker(
    kind: str,
    args: argparse.Namespace,
    logs: Path,
    first: bool,
    redis: redisstore.RedisStore | None,
) -> BrokerRun:
    """The rounds on one broker; the scrape and the profile only on the first."""
    print(f"broker: {brokers.describe(kind)}", flush=True)
    with brokers.running(kind, logs) as bootstrap:
        await create_topics(bootstrap, {TOPIC: PARTITIONS, scrape.TOPIC: PARTITIONS})
        started = time.monotonic()
        await corpus.realistic(bootstrap, TOPIC, args.events)
        print(f"produced {args.events:,} events in {time.monotonic() - started:.1f}s", flush=True)
        runs, held = await rounds(bootstrap, logs, args.events, args.rounds, redis)
        out = BrokerRun(runs, held)
        if first:
            out.scrape = await scrape.measure(bootstrap, logs, args.series)
            out.profile = await profile.profile(bootstrap, TOPIC, logs, args.events)
    return out


def running_store(
    args: argparse.Namespace, logs: Path
) -> contextlib.AbstractContextManager[redisstore.RedisStore | None]:
    """The run's Redis, or None (no store contender) when asked so or not installed."""
    if args.no_store:
        return contextlib.nullcontext()
    if not redisstore.available():
        print(
            "redis-server not on PATH (make install-redis): no project + store contender",
            flush=True,
        )
        return contextlib.nullcontext()
    return redisstore.RedisStore(logs / "redis")


async def bench(args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    print(f"logs: {logs}", flush=True)
    kinds = brokers.BROKERS if args.broker == "both" else (args.broker,)
    with running_store(args, logs) as redis:
        main_run = await on_broker(kinds[0], args, logs, True, redis)
        more = [await on_broker(kind, args, logs, False, redis) for kind in kinds[1:]]
    dedup_memory = dedupmem.measure()
    others = {}
    for kind, other in zip(kinds[1:], more, strict=True):
        others[kind] = report.BrokerRuns(
            broker=brokers.describe(kind),
            contenders=medians(other.runs),
            runs={name: [t.rate for t in timed] for name, timed in other.runs.items()},
        )
    machine = {**report.machine(), "broker": brokers.describe(kinds[0])}
    if main_run.store:
        machine["redis"] = redisstore.describe()
    results = report.Results(
        events=args.events,
        partitions=PARTITIONS,
        rounds=args.rounds,
        contenders=medians(main_run.runs),
        runs={name: [t.rate for t in timed] for name, timed in main_run.runs.items()},
        scrape=main_run.scrape,
        profile=main_run.profile,
        machine=machine,
        others=others,
        store=main_run.store,
        dedup_memory=dedup_memory,
    )
    # Only on request: a plain run must leave the clone clean (bench/results/ is ignored).
    report.write(results, RESULTS, page=args.write_page)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, default=EVENTS, help="events in the corpus")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds, in alternating order")
    parser.add_argument("--series", type=int, default=SERIES, help="series for the scrape test")
    parser.add_argument(
        "--write-page",
        action="store_true",
        help="also publish the run: rewrite BENCHMARKS.md and its data in docs/bench/",
    )
    parser.add_argument(
        "--broker",
        choices=[*brokers.BROKERS, "both"],
        default="both",
        help="the broker(s) to run on, on the same corpus; the scrape and profile use the first",
    )
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="leave out the project + store contender (and its Redis)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite BENCHMARKS.md and its chart from docs/bench/latest.json, run nothing",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.report_only:
        report.write(report.load(report.PAGE_DATA / "latest.json"), RESULTS, page=True)
        return
    asyncio.run(bench(args))
