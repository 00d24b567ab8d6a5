"""A/B of the default mode in one run: `session-metrics run` at an earlier commit against
this tree, on one Tansu and one corpus, in alternating rounds.

    python -m bench.ab [--before 7fb233c] [--tree /tmp/ab-before] [--events N] [--rounds N]

The earlier commit is checked out once as a detached git worktree at `--tree` (`git
worktree add`, which leaves this checkout as it is; remove it with `git worktree remove`)
and run with this venv through its own `python -m consumer`: the process starts in that
tree with it on PYTHONPATH, so it imports that tree's `consumer` (checked before the
rounds). Its dependencies must be this venv's (true of 7fb233c: only redis was added since).

Three arms, each a fresh process with a fresh consumer group, timed from outside exactly
as `make bench` times the project (bench/observe.py), in alternating order (forward, then
backward) over the rounds:
- before: the earlier commit with its defaults;
- after: this tree with its defaults;
- after, no dedup: this tree with `--dedup-window 0`, so the difference in RSS to "after"
  is what the dedup state takes, seen from outside (bench/dedupmem.py counts it inside).

Prints medians of events/s, of the CPU time per event over the same span (less moved by
other load on the machine than the wall time), of peak RSS (VmHWM) and of RSS once the
corpus is read (VmRSS), and writes every round to bench/results/ab.json (git-ignored).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import brokers, corpus
from bench.narrative import EVENTS
from bench.observe import ROOT, Contender, Process, Timed, project, timed_run
from bench.run import PARTITIONS, RESULTS, TOPIC, with_group
from consumer.broker import create_topics, free_port

BEFORE, AFTER, NO_DEDUP = "before", "after", "after, no dedup"


def worktree(commit: str, tree: Path) -> Path:
    """The earlier commit checked out at `tree` (made once, reused if it is there)."""
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True,
        )
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    wanted = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if head != wanted:
        raise SystemExit(f"{tree} is at {head[:10]}, not {commit}: remove it or pass --tree")
    return tree


def imports_from(c: Contender) -> Path:
    """Where `c`'s interpreter finds `consumer`, started as `c` is started."""
    out = subprocess.run(
        [c.argv[0], "-c", "import consumer; print(consumer.__file__)"],
        cwd=c.cwd,
        env={**os.environ, **c.env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out).resolve().parent.parent


async def ab(args: argparse.Namespace) -> dict[str, list[Timed]]:
    tree = worktree(args.before, Path(args.tree))
    logs = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    print(f"logs: {logs}", flush=True)
    with brokers.running("tansu", logs) as bootstrap:
        arms = {
            BEFORE: project(bootstrap, TOPIC, name=BEFORE, tree=tree),
            AFTER: project(bootstrap, TOPIC, name=AFTER),
            NO_DEDUP: project(bootstrap, TOPIC, "--dedup-window", "0", name=NO_DEDUP),
        }
        for name, c in arms.items():
            where = imports_from(c)
            expected = tree.resolve() if name == BEFORE else ROOT
            if where != expected:
                raise SystemExit(f"{name} would import consumer from {where}, not {expected}")
        await create_topics(bootstrap, {TOPIC: PARTITIONS})
        started = time.monotonic()
        await corpus.realistic(bootstrap, TOPIC, args.events)
        print(f"produced {args.events:,} events in {time.monotonic() - started:.1f}s", flush=True)
        runs: dict[str, list[Timed]] = {name: [] for name in arms}
        order = list(arms)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                slug = name.replace(", ", "-").replace(" ", "-")
                grouped = with_group(arms[name], f"ab-{slug}-{r}")
                process = Process(grouped, free_port(), logs, f"{slug}-{r}")
                timed = await timed_run([process], args.events, within=600, name=name)
                runs[name].append(timed)
                print(
                    f"  round {r + 1}: {name:<16} {timed.rate:>10,.0f} events/s, "
                    f"{timed.cpu_us_per_event:.2f} µs CPU/event, "
                    f"peak RSS {timed.peak_rss_mb[0]:.0f} MB, RSS {timed.rss_mb[0]:.0f} MB",
                    flush=True,
                )
    return runs


def summary(runs: dict[str, list[Timed]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "events_per_second": statistics.median(t.rate for t in timed),
            "peak_rss_mb": statistics.median(t.peak_rss_mb[0] for t in timed),
            "peak_rss_mb_max": max(t.peak_rss_mb[0] for t in timed),
            "rss_mb": statistics.median(t.rss_mb[0] for t in timed),
            "cpu_us_per_event": statistics.median(t.cpu_us_per_event for t in timed),
            "rounds": len(timed),
        }
        for name, timed in runs.items()
    }


def report(args: argparse.Namespace, runs: dict[str, list[Timed]]) -> None:
    s = summary(runs)
    before = s[BEFORE]
    rows = [
        "| arm | events/s (median) | x before | CPU µs/event (median) | x before "
        "| peak RSS (median, max) | RSS at end (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in s.items():
        rows.append(
            f"| {name} | {m['events_per_second']:,.0f} "
            f"| {m['events_per_second'] / before['events_per_second']:.3f} "
            f"| {m['cpu_us_per_event']:.2f} "
            f"| {m['cpu_us_per_event'] / before['cpu_us_per_event']:.3f} "
            f"| {m['peak_rss_mb']:.0f} MB, {m['peak_rss_mb_max']:.0f} MB | {m['rss_mb']:.0f} MB |"
        )
    change = s[AFTER]["events_per_second"] / before["events_per_second"] - 1
    cpu = s[AFTER]["cpu_us_per_event"] / before["cpu_us_per_event"] - 1
    dedup = s[AFTER]["rss_mb"] - s[NO_DEDUP]["rss_mb"]
    per_round = "\n".join(
        f"  {name}: " + " / ".join(f"{t.rate:,.0f}" for t in timed) for name, timed in runs.items()
    )
    print(
        f"\nA/B: {args.before} vs this tree, {args.events:,} events, Tansu, {args.rounds} rounds\n"
        + "\n".join(rows)
        + f"\n\nafter vs before: {change:+.1%} events/s (limit: -5%), {cpu:+.1%} CPU per event"
        + f"\nRSS at end, after minus after-no-dedup: {dedup:+.1f} MB\nper round (events/s):\n"
        + per_round,
        flush=True,
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ab.json"
    out.write_text(
        json.dumps(
            {
                "before": args.before,
                "events": args.events,
                "rounds": args.rounds,
                "medians": s,
                "runs": {
                    name: [
                        {"events_per_second": t.rate, "cpu_us_per_event": t.cpu_us_per_event,
                         "peak_rss_mb": t.peak_rss_mb[0], "rss_mb": t.rss_mb[0]}
                        for t in timed
                    ]
                    for name, timed in runs.items()
                },
            },
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    print(f"wrote {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", default="7fb233c", help="the commit to compare against")
    parser.add_argument(
        "--tree", default="/tmp/ab-before", help="where that commit is (or will be) checked out"
    )
    parser.add_argument("--events", type=int, default=EVENTS, help="events in the corpus")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, in alternating order")
    args = parser.parse_args()
    report(args, asyncio.run(ab(args)))


if __name__ == "__main__":
    main()
