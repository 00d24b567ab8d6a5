"""BENCHMARKS.md: the prose around the numbers of the latest run."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Results

# `make bench`'s defaults, which the Reproduce section quotes.
EVENTS, ROUNDS, SERIES = 500_000, 3, 10_000
STORE = "project + store"
"""bench/report.py's name for the project with `--dedup-store`."""

AB = """
Against the code before this dedup (7fb233c: one worker-wide window of the last 100,000
ids, no log windows, no store), the default mode in one run of `python -m bench.ab`
(500,000 events, Tansu, 8 alternating rounds, medians, on an otherwise idle machine; CPU
is the worker's user and system time over the timed span, less moved than the wall time
by other work on the machine):

| arm | events/s | x before | CPU µs/event | x before | peak RSS | RSS once read |
|---|---:|---:|---:|---:|---:|---:|
| before (7fb233c) | 189,544 | 1.00 | 5.27 | 1.00 | 112 MB | 105 MB |
| after, defaults | 185,221 | 0.98 | 5.38 | 1.02 | 124 MB | 118 MB |
| after, `--dedup-window 0` | 190,302 | 1.00 | 5.24 | 0.99 | 95 MB | 90 MB |

The default mode read **2.3% fewer events/s** than before (limit: 5%): **met**, with
2% more CPU per event and ~28 MB more RSS once the corpus is read (the log windows'
ids). Two runs before, with a dict of ids per partition plus a worker-wide window of
counted ids, it read 17% fewer; what closed it, each measured in an A/B of its own:
one dict of ids for all partitions of a worker, which finds a copy on another
partition in the same lookup (the worker-wide window is gone); that dict kept in
CPython's general layout, whose entries hold each key's hash, so a lookup that meets
another id does not read that id's string, cold in memory (+9.7% events/s on its
own); and a batch of consecutive events handing its offsets on as a range, so no int
is built or held per id. The rounds move by up to 30% with other work on the
machine: compare the medians of one run only."""


RECONCILE = """
## Reconcile

`python -m bench.reconcile` (Tansu, 1,000,000 realistic events on 6 partitions, one run):
`session-metrics reconcile` offline over every partition, as a process (start-up
included), read **77,883 records/s** (12.84 s) with a peak RSS of 119.9 MB; `session-metrics
run` in a fresh group over the same topic in the same run counted 107,101 records/s (first
to last counted record) at 134.8 MB. Reconcile runs at 0.73x `run` (target: within 2x):
it reads through the same decode, dedup and aggregation, with a group-less consumer and
no fetch overlap.
"""


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
  project / naive = {rates["project"] / rates["naive"]:.1f}.{_store_ratio(rates)}

Per round (events/s): {per_round}.
"""
        )
    return "".join(sections)


def _store_ratio(rates: dict[str, float]) -> str:
    if STORE not in rates:
        return ""
    return f"\n- {STORE} / project = {rates[STORE] / rates['project']:.2f}."


def store_contender(r: "Results") -> str:
    """The store contender's bullet in the list of contenders, when the run had one."""
    if STORE not in r.contenders:
        return ""
    redis = r.machine.get("redis", "redis-server").split(" (")[0]
    return f"""
- **{STORE}**: the same with `--dedup-store`, on a Redis that the benchmark starts on a
  free loopback port ({redis}, no persistence) and empties before each of its rounds:
  one claim round trip per batch (`consumer/redisclaims.py`)."""


def _store_cpu(r: "Results") -> str:
    """Where the store's extra time per event goes, when the run measured CPU time."""
    project, store = r.contenders["project"], r.contenders[STORE]
    if "cpu_us_per_event" not in store:
        return ""
    wall = 1e6 / store["events_per_second"] - 1e6 / project["events_per_second"]
    cpu = store["cpu_us_per_event"] - project["cpu_us_per_event"]
    own = "none" if abs(cpu) < 0.05 else f"{cpu:.1f} µs"
    return f"""
Per event that is {wall:.1f} µs more wall time, of which {own} is the worker's own
CPU ({project["cpu_us_per_event"]:.2f} -> {store["cpu_us_per_event"]:.2f} µs); the rest is
waiting for Redis, whose script takes ~3 µs per claim (`consumer/redisclaims.py`)."""


def _store_elsewhere(r: "Results") -> str:
    """The store's ratio on the run's other brokers, which share the cores differently."""
    out = []
    for name, other in r.others.items():
        c = other.contenders
        if STORE in c and "project" in c:
            ratio = c[STORE]["events_per_second"] / c["project"]["events_per_second"]
            out.append(f"{ratio:.2f}x on {name}")
    if not out:
        return ""
    return f"""
In the same run: {", ".join(out)} (a broker that takes more of the two cores leaves
Redis less of them)."""


def dedup_cost(r: "Results") -> str:
    """What the dedup of `--dedup-window` and `--dedup-store` costs: the store's ratio, the
    claims in Redis, the state's memory, and the A/B against the code before it."""
    parts = ["\n## What the dedup costs\n"]
    ratio = r.contenders.get(STORE, {}).get("events_per_second", 0.0) / r.rate("project")
    if STORE in r.contenders and r.store:
        st = r.store
        parts.append(
            f"""
With `--dedup-store` the project read {ratio:.2f}x the events/s of the default mode
in this run (target >= 0.8: {"met" if ratio >= 0.8 else "NOT met"}). A batch's claims
are out while the worker fetches and decodes the next batch, so the worker and Redis
work side by side, but Redis runs on the same two cores as the broker and the
worker.{_store_cpu(r)}{_store_elsewhere(r)}
A round left {st["claims"]:,.0f} claims in Redis, {st["used_mb"]:.0f} MB, about
{st["claim_bytes"]:.0f} bytes each (a field per session id in a hash per quarter of
`--dedup-store-ttl`, an hour by default).
"""
        )
    mem = r.dedup_memory
    if mem:
        per = mem["total_mb"] / mem["partitions"]
        parts.append(
            f"""
Memory of the dedup state at the defaults (`--dedup-window {mem["window"]:,.0f}` records
per partition, this benchmark's {mem["partitions"]:.0f} partitions on one worker, no store),
counted with tracemalloc (`python -m bench.dedupmem`): {mem["total_mb"]:.1f} MB for the
{mem["ids_in_log_windows"]:,.0f} ids the log windows hold (~{per:.1f} MB per assigned
partition, the ids' strings included). It grows with the partitions a worker holds, and
is the same with `--dedup-store`.
"""
        )
    parts.append(AB)
    if mem and "log_windows_us" in mem:
        parts.append(
            f"""

In-process (`python -m bench.dedupmem`, the batches above) the log windows take
{mem["log_windows_us"]:.2f} µs per event (per id: one probe and one insert in the
worker's dict of ids, one deletion when its batch leaves; repeats are found there
whichever partition holds the first copy), where the window before took
{mem["before_us"]:.2f} µs per event and held {mem["before_mb"]:.1f} MB for its
{mem["before_window"]:,.0f} ids. These are wall times on a shared machine: they move
from run to run, and the ratio between them less."""
        )
    parts.append("\n")
    return "".join(parts)


SERIES_DATA = Path(__file__).resolve().parent.parent / "docs" / "bench" / "series.json"
"""`python -m bench.series --write-page`'s rows (bench/series.py)."""


def series_cost() -> str:
    """What Prometheus pays for the business series, from the last `bench.series` run."""
    if not SERIES_DATA.exists():
        return ""
    rows = json.loads(SERIES_DATA.read_text())
    table = "\n".join(
        f"| {row['mode']} | {row['workers']} | {row.get('keys', 'session id')} "
        f"| {row['head_series']:,.0f} "
        f"| {row['samples_per_scrape']:,.0f} | {row['prometheus_rss_mb']:,.0f} MB "
        f"| {row['scrape_seconds_max']:.2f} s | {row['body_mb']:.1f} MB "
        f"| {row['first_scrape_seconds_max']:.2f} s "
        f"| {row.get('quiet_scrape_seconds', float('nan')):.2f} s |"
        for row in rows
    )
    native = next((r for r in rows if r["mode"] == "native" and r["workers"] == 1), None)
    verdict = ""
    if native is not None:

        def mark(ok: bool) -> str:
            return "met" if ok else "NOT met"

        verdict = f"""
Targets at 10,000 pairs and one worker, native histograms: head series
{native["head_series"]:,.0f} (<= 120,000: {mark(native["head_series"] <= 120_000)}),
Prometheus RSS {native["prometheus_rss_mb"]:,.0f} MB (<= 550 MB:
{mark(native["prometheus_rss_mb"] <= 550)}), protobuf body {native["body_mb"]:.1f} MB
(<= 15 MB: {mark(native["body_mb"] <= 15)}). For scale, a Go exporter on client_golang
with the same 8 counters and 3 histograms (bucket factor 1.1), on the same Prometheus,
gave 540,005 series and 1,475 MB with classic histograms and 110,005 series and
483-504 MB with native ones (measured when the work was asked for).
"""
    return f"""
## What Prometheus pays for the series

`python -m bench.series`: 10,000 (workspace, project) pairs (2,000 workspaces x 5
projects, two sessions each, keyed by session id) on Tansu, read by one worker and by
three; a fresh Prometheus 2.42 (Debian's) scrapes the workers every 5 s, read after four
scrapes. *classic*: the defaults; *native*: `--native-histograms` and a Prometheus with
`--enable-feature=native-histograms` (it asks for protobuf, and keeps only the native
histogram of a series that has one); *per workspace*: `--histogram-labels workspace_id`.
Scrape: the slowest worker's last `scrape_duration_seconds`; body: all workers', in the
format Prometheus asked for; first scrape: the slowest worker's first GET after the events
arrived, with nothing rendered yet (curl).

| histograms | workers | keys | head series | samples | Prom. RSS | scrape | body | 1st | quiet |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|
{table}
{verdict}
With three workers and events keyed by session id, each pair's two sessions landed on
one or two of the workers, and every worker that counted a session of a pair exports the
pair's series. The key a producer chooses decides this (the last rows: the same three
workers, classic histograms): keyed by workspace, each pair is on one replica only,
whatever the replica count, and the cluster exports what one worker would; null keys
spread like session ids. A pair with many sessions keyed by session id is exported by
every replica. *keys*: the producer's; *1st*: the first scrape after the events arrived;
*quiet*: a scrape with nothing new since the last one (curl, median of five).

Schema 3 puts each native histogram in a few dozen buckets here; a coarser schema (2:
factor 1.19) halves the buckets and widens the quantile error to 19%, a finer one (4:
factor 1.044) doubles them. At 100,000 pairs expect ten times the figures of a row: with
classic histograms ~5.4 million series and ~15 GB of Prometheus memory per replica that
sees every pair; use `--native-histograms` (about 1.1 million series, ~4.5 GB), or
`--histogram-labels workspace_id` if distributions per workspace are enough, and raise
`--max-series` (10,000 by default) only then.
"""


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
    redis = f"\n| claim store | {m['redis']} |" if "redis" in m else ""
    one_broker = (
        ""
        if r.others
        else f"\nThis run was on {m['broker'].split(' (')[0]} only; a plain `make bench` runs "
        "the same rounds on Apache Kafka too."
    )
    return f"""# Benchmarks

The latest run of `make bench` (`python -m bench`): {r.events:,} events
(~480 bytes, 50 workspaces x 5 projects, 10% without a project) on one topic of
{r.partitions} partitions of {m["broker"].split(" (")[0]}, read by these contenders, each
a fresh process with a fresh consumer group, {r.rounds} rounds in alternating
order, medians:

- **ceiling**: a raw aiokafka `getmany` loop that only counts records (`bench/ceiling.py`);
- **naive**: `json.loads` plus per-event prometheus-client updates of the same
  8 counters and 3 histograms, on the same `getmany` batches (`bench/naive.py`);
- **project**: `session-metrics run` with its defaults.{store_contender(r)}

Each is timed from outside, through its own `/metrics` polled every 0.1 s for
its record counter: from the first observation above zero to the last one short
of the total, so start-up, group join and the tail are excluded.{one_broker}

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
{dedup_cost(r)}{series_cost()}{RECONCILE}{on_other_brokers(r, tables)}
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
aggregation ~0.75 µs, dedup ~0.2 µs (measured when it was one worker-wide window;
the log windows' own figure is above), the rest of the batch step ~0.15 µs, and
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
| broker | {m["broker"]} |{redis}

## Reproduce

```sh
make bench                       # both brokers: {EVENTS // 1000}k events, {ROUNDS} rounds
make bench ARGS="--broker kafka" # one broker only: tansu or kafka
make bench ARGS="--rounds 4"     # more rounds; --events, --series as well
make bench ARGS="--no-store"     # without the project + store contender (and its Redis)
.venv/bin/python -m bench.ab     # A/B of the default mode against 7fb233c (--before)
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
