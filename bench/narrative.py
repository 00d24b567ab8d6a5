"""BENCHMARKS.md: the prose around the numbers of the latest run."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Results

# `make bench`'s defaults, which the Reproduce section quotes.
EVENTS, ROUNDS, SERIES = 500_000, 3, 10_000


def on_other_brokers(r: "Results", tables: dict[str, list[str]]) -> str:
    """One section per further broker of the run: its table and project's ratios."""
    sections = []
    for kind, other in r.others.items():
        rates = {name: c["events_per_second"] for name, c in other.contenders.items()}
        per_round = ", ".join(
            f"{name} {' / '.join(f'{v:,.0f}' for v in values)}"
            for name, values in other.runs.items()
        )
        sections.append(
            f"""
## The same rounds on {other.broker.split(" (")[0]}

The same corpus ({r.events:,} events, {r.partitions} partitions), produced the same way,
in the same run, on {other.broker}.

{chr(10).join(tables[kind])}

- project / ceiling = {rates["project"] / rates["ceiling"]:.2f},
  project / naive = {rates["project"] / rates["naive"]:.1f}.

Per round (events/s): {per_round}.
"""
        )
    return "".join(sections)


def render(
    r: "Results", table: list[str], verdicts: list[str], tables: dict[str, list[str]]
) -> str:
    to_ceiling, to_naive = r.ratios()
    ceiling_us = 1e6 / r.rate("ceiling")
    project_us = 1e6 / r.rate("project")
    m, s = r.machine, r.scrape
    two = r.contenders.get("project x2", {}).get("events_per_second", 0.0)
    rounds = ", ".join(
        f"{name} {' / '.join(f'{v:,.0f}' for v in rates)}" for name, rates in r.runs.items()
    )
    profile = "\n".join(
        f"| {area} | {share:.0f}% |"
        for area, share in r.profile.items()
        if not area.startswith("idle")
    )
    idle = r.profile.get("idle, share of all time", 0.0)
    libs = ", ".join(m[name] for name in ("aiokafka", "msgspec", "prometheus-client"))
    return f"""# Benchmarks

The latest run of `make bench` (`python -m bench`): {r.events:,} events
(~480 bytes, 50 workspaces x 5 projects, 10% without a project) on one topic of
{r.partitions} partitions of {m["broker"].split(" (")[0]}, read by three contenders, each
a fresh process with a fresh consumer group, {r.rounds} rounds in alternating
order, medians:

- **ceiling**: a raw aiokafka `getmany` loop that only counts records (`bench/ceiling.py`);
- **naive**: `json.loads` plus per-event prometheus-client updates of the same
  8 counters and 3 histograms, on the same `getmany` batches (`bench/naive.py`);
- **project**: `session-metrics run` with its defaults.

Each is timed from outside, through its own `/metrics` polled every 0.1 s for
its record counter: from the first observation above zero to the last one short
of the total, so start-up, group join and the tail are excluded.

![events per second](docs/bench/throughput.png)

{chr(10).join(table)}

`project x2` is two `session-metrics run` processes in one group, and its
x ceiling compares them with the ceiling of **one** process: not like with like
(two ceiling processes would read faster too). It shows the group splitting the
work, nothing more.

{chr(10).join(verdicts)}

Per round (events/s): {rounds}.

Compare figures within one run only: this machine's speed differs from run to run
(naive, whose code has not changed, read about 32k events/s in an earlier run).

Two workers in one group (no target): {two:,.0f} events/s together,
{two / r.rate("project"):.2f}x one worker. They share this machine's two cores
with the broker, so this shows the group splitting the work, not a scaling limit.
{on_other_brokers(r, tables)}
## Scrape time at {s["series"]:,.0f} series

One worker holding {s["series"]:,.0f} (workspace, project) series
({s["samples"]:,.0f} samples, {s["body_mb"]:.0f} MB of text, the default
`--max-series`), scraped with curl (a C client, as Prometheus' is Go), without
and with gzip as Prometheus asks for it: the first scrape after the
events arrived takes {s["first_scrape_ms"]:.0f} ms, later ones
{s["scrape_ms"]:.0f} ms (median of 10; {s["scrape_gzip_ms"]:.0f} ms with gzip).
Each series' lines are rendered once when the series changes and kept, so a
scrape pays for the series changed since the last one and otherwise joins bytes;
the first scrape pays for all of them. Before this the same scrape, through
prometheus-client's exposition, took about 5 s and ~370 MB of peak memory.

## Where the time goes

The ceiling takes {ceiling_us:.2f} µs of wall time per record, part of it waiting
for the broker's next fetch; the project takes {project_us:.2f} µs per event and is
CPU-bound. It hides part of its own work in those waits: right after `getmany`
it lets aiokafka send the next fetch, so the broker prepares it while the batch
is decoded and aggregated. A profile of the project (pyinstrument, sampling,
same corpus; busy time only, start-up excluded; {idle:.0f}% of its wall time was
idle, mostly the group join and the tail):

| area | share of busy time |
|---|---:|
{profile}

Measured separately, in-process with timers around each step (300k events):
the worker spends about 4.5 µs of CPU per event; decode (msgspec) ~1.05 µs,
aggregation ~0.75 µs, dedup ~0.2 µs, the rest of the batch step ~0.15 µs, and
the remainder is aiokafka's fetch, parse and record building.

What stands between the project and 0.80 x ceiling: 0.80 would be
{ceiling_us / 0.8:.2f} µs per event here, about {project_us - ceiling_us / 0.8:.2f} µs
less than now. Decode and aggregation are ~1.8 µs together and at their floor
in CPython: msgspec decodes and validates this body into 13 objects (3 structs,
2 lists, 2 datetimes, the strings), and aggregation is a dict lookup, nine sums
and three bucket bisections per event in Python. What would close it: the
aggregation loop in a C or Rust extension (~0.6 µs), fewer objects per event
(not materialising `tags` and `contactIds`, which would drop their validation),
or a cheaper per-record path in aiokafka, which would lift the ceiling too.

What made the difference, measured as we went:

- garbage collection tuned for batches (`consumer/service.py`): a batch and
  aiokafka's prefetched records keep tens of thousands of objects alive, and the
  default gen0 threshold rescanned them many times per batch; freezing start-up
  objects and raising the threshold took an in-process run from 129k to ~180k
  events/s (refcounting frees everything; a full collection after 300k events
  found 14 unreachable objects);
- the next fetch overlapping the batch (`consumer/worker.py`): a few event-loop
  turns after `getmany`, and batches of up to 20000 records so one fetch's worth
  is drained at once (~180k -> ~205k events/s in-process);
- per batch instead of per record: one decode loop, dedup with set operations
  on the batch's ids, aggregation into per-series totals, and one update per
  series (naive's per-event prometheus-client updates are why it is
  {to_naive:.0f}x slower);
- `/metrics` rendered from cached per-series bytes (above), and a `name[]`
  filter so watching one counter does not render the business series.
- committing offsets after each served scrape instead of after each batch
  (exact counts in Prometheus through stops and crashes, docs/guarantees.md):
  measured against the code before it in one run (300k events, Tansu, 4
  alternating rounds), 102,213 events/s before and 101,978 after (medians), peak
  RSS 109-110 MB before and 105-109 MB after: no change beyond noise. A batch's
  counts now wait per partition until the next scrape, and there is one commit
  per scrape instead of one per batch.

## The machine

| | |
|---|---|
| CPU | {m["cpu"]} ({m["cores"]} cores) |
| memory | {m["memory"]} |
| OS | {m["os"]} |
| Python | {m["python"]} |
| aiokafka, msgspec, prometheus-client | {libs} |
| broker | {m["broker"]} |

## Reproduce

```sh
make bench                       # both brokers: {EVENTS // 1000}k events, {ROUNDS} rounds
make bench ARGS="--broker kafka" # one broker only: tansu or kafka
make bench ARGS="--rounds 4"     # more rounds; --events, --series as well
make bench ARGS="--write-page"   # the same, and publish it: rewrite this page
```

Every run writes `bench/results/latest.json` (every number, per round) and
`bench/results/throughput.png`, which git ignores, so a plain `make bench` leaves
the clone clean. Only `--write-page` rewrites this file and the
[JSON](docs/bench/latest.json) and chart it shows, in `docs/bench/`
(`--report-only` re-renders the page from that JSON). Numbers move by ±10%
between runs on a shared machine; compare contenders within one run, not across runs.
Project/ceiling in this run: {to_ceiling:.2f}.
"""
