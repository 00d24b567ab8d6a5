"""`python -m bench`: ceiling vs naive vs session-metrics on one topic, then report.

One run: for each broker asked for (Tansu, Apache Kafka, or both in turn), start it,
produce the same seeded corpus, then time each contender as a fresh process with a
fresh consumer group, in alternating order over several rounds, and two workers in
one group; on the first broker also the scrape time at 10k series and a profile of
the project. See BENCHMARKS.md.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench import brokers, corpus, profile, report, scrape
from bench.narrative import EVENTS, ROUNDS, SERIES
from bench.observe import MESSAGES, Contender, Process, Timed, project, python, timed_run
from consumer.broker import create_topics, free_port

TOPIC, PARTITIONS = "bench-sessions", 6
RESULTS = Path(__file__).resolve().parent / "results"
"""Every run's raw output (git-ignored); --write-page also publishes it (report.PAGE_DATA)."""


def contenders(bootstrap: str) -> dict[str, Contender]:
    common = ["--bootstrap", bootstrap, "--topic", TOPIC]
    return {
        "ceiling": Contender(
            "ceiling", python("-m", "bench.ceiling", *common), "--port", "bench_records"
        ),
        "naive": Contender("naive", python("-m", "bench.naive", *common), "--port", MESSAGES),
        "project": project(bootstrap, TOPIC),
    }


def with_group(c: Contender, group: str) -> Contender:
    flag = "--group-id" if c.name == "project" else "--group"
    return Contender(c.name, [*c.argv, flag, group], c.port_flag, c.metric)


async def one(c: Contender, tag: str, logs: Path, events: int, workers: int = 1) -> Timed:
    grouped = with_group(c, f"bench-{tag}")
    processes = [Process(grouped, free_port(), logs, f"{tag}-{i}") for i in range(workers)]
    name = c.name if workers == 1 else f"{c.name} x{workers}"
    return await timed_run(processes, events, within=600, name=name)


async def rounds(bootstrap: str, logs: Path, events: int, count: int) -> dict[str, list[Timed]]:
    cs = contenders(bootstrap)
    order = list(cs)
    runs: dict[str, list[Timed]] = {name: [] for name in [*order, "project x2"]}
    for r in range(count):
        # Alternate the order so no contender always runs first (cold caches) or last.
        for name in order if r % 2 == 0 else order[::-1]:
            timed = await one(cs[name], f"{name}-{r}", logs, events)
            runs[name].append(timed)
            print(f"  round {r + 1}: {name:<8} {timed.rate:>10,.0f} events/s", flush=True)
        two = await one(cs["project"], f"two-{r}", logs, events, workers=2)
        runs["project x2"].append(two)
        print(f"  round {r + 1}: 2 workers {two.rate:>9,.0f} events/s", flush=True)
    return runs


def medians(runs: dict[str, list[Timed]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "events_per_second": statistics.median(t.rate for t in timed),
            "peak_rss_mb": max(max(t.peak_rss_mb) for t in timed),
            "rounds": len(timed),
        }
        for name, timed in runs.items()
    }


async def on_broker(
    kind: str, args: argparse.Namespace, logs: Path, first: bool
) -> tuple[dict[str, list[Timed]], dict[str, float], dict[str, float]]:
    """The rounds on one broker; the scrape and the profile only on the first."""
    print(f"broker: {brokers.describe(kind)}", flush=True)
    scraped: dict[str, float] = {}
    profiled: dict[str, float] = {}
    with brokers.running(kind, logs) as bootstrap:
        await create_topics(bootstrap, {TOPIC: PARTITIONS, scrape.TOPIC: PARTITIONS})
        started = time.monotonic()
        await corpus.realistic(bootstrap, TOPIC, args.events)
        print(f"produced {args.events:,} events in {time.monotonic() - started:.1f}s", flush=True)
        runs = await rounds(bootstrap, logs, args.events, args.rounds)
        if first:
            scraped = await scrape.measure(bootstrap, logs, args.series)
            profiled = await profile.profile(bootstrap, TOPIC, logs, args.events)
    return runs, scraped, profiled


async def bench(args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    print(f"logs: {logs}", flush=True)
    kinds = brokers.BROKERS if args.broker == "both" else (args.broker,)
    runs, scraped, profiled = await on_broker(kinds[0], args, logs, first=True)
    others = {}
    for kind in kinds[1:]:
        more, _, _ = await on_broker(kind, args, logs, first=False)
        others[kind] = report.BrokerRuns(
            broker=brokers.describe(kind),
            contenders=medians(more),
            runs={name: [t.rate for t in timed] for name, timed in more.items()},
        )
    results = report.Results(
        events=args.events,
        partitions=PARTITIONS,
        rounds=args.rounds,
        contenders=medians(runs),
        runs={name: [t.rate for t in timed] for name, timed in runs.items()},
        scrape=scraped,
        profile=profiled,
        machine={**report.machine(), "broker": brokers.describe(kinds[0])},
        others=others,
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
