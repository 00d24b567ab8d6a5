"""What Prometheus pays for the business series: `python -m bench.series`.

One run on Tansu: 10,000 (workspace, project) pairs (2,000 workspaces x 5 projects, two
sessions each), read by one worker and by three, each shape under three settings:
classic histograms (the default), `--native-histograms` (a Prometheus with native
histograms on, which asks for protobuf), and `--histogram-labels workspace_id`. For each,
a fresh Prometheus 2.42 (Debian's) scrapes the workers every 5 s; after four scrapes we
read its head series, the samples and duration of the last scrape of each worker (its
`scrape_samples_scraped` and `scrape_duration_seconds`), its RSS (VmRSS), and each
worker's body size in the format that Prometheus asked for, plus the first scrape after
the events arrived (nothing cached yet), timed by curl.

With three workers the events are keyed by session id, so every replica sees every pair:
the worst case, and the usual one when producers key by session (see docs/metrics.md).
Results go to bench/results/series.json (git-ignored) and are printed as a table.
"""

import argparse
import asyncio
import json
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from bench import brokers, report
from bench.narrative import SERIES_DATA
from bench.observe import Process, project, watch
from bench.run import RESULTS
from consumer.broker import create_topics, free_port
from consumer.synthetic import SessionFactory, encode
from tests.promserver import prometheus_server

PAIRS, PER_PAIR, PARTITIONS, INTERVAL = 10_000, 2, 6, 5
PROTOBUF = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
)
MODES: dict[str, tuple[list[str], list[str]]] = {
    # name: (worker flags, Prometheus flags)
    "classic": ([], []),
    "native": (["--native-histograms", "true"], ["--enable-feature=native-histograms"]),
    "per workspace": (["--histogram-labels", "workspace_id"], []),
}


KEYS = ("session id", "workspace", "null")
"""How the producer keys the events: what decides how many replicas see a pair."""


def _key(key: str, event: Any) -> bytes | None:
    if key == "session id":
        return str(event.id).encode()
    if key == "workspace":
        return str(event.workspace_id).encode()
    return None


async def produce(bootstrap: str, topic: str, key: str = "session id") -> None:
    """PER_PAIR sessions of each pair, keyed by `key` (KEYS)."""
    factory = SessionFactory(7)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        futures = []
        for _ in range(PER_PAIR):
            for i in range(PAIRS):
                event = msgspec.structs.replace(
                    factory.event(),
                    id=str(uuid.uuid4()),
                    workspace_id=f"ws-{i // 5:05d}",
                    project_id=f"proj-{i % 5}",
                )
                futures.append(await producer.send(topic, encode(event), key=_key(key, event)))
        for f in futures:
            await f
    finally:
        await producer.stop()


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def _values(base: str, promql: str) -> list[float]:
    return [float(row["value"][1]) for row in _query(base, promql)]


def _own(base: str, name: str) -> float:
    """A sample of Prometheus's own /metrics (it does not scrape itself here)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} not in Prometheus's /metrics")


async def _curl(url: str, accept: str) -> tuple[float, int]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-H", f"Accept: {accept}",
        "-w", "%{time_total} %{size_download}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    seconds, size = out.decode().split()
    return float(seconds), int(size)


async def one(
    bootstrap: str, topic: str, logs: Path, mode: str, workers: int, *, key: str = "session id"
) -> dict[str, Any]:
    flags, prometheus_flags = MODES[mode]
    group = f"series-{mode.replace(' ', '-')}-{workers}-{uuid.uuid4().hex[:6]}"
    processes = [
        Process(
            project(bootstrap, topic, "--group-id", group, "--max-series", "20000", *flags),
            free_port(),
            logs,
            f"{group}-{i}",
        )
        for i in range(workers)
    ]
    accept = PROTOBUF if mode == "native" else "text/plain;version=0.0.4"
    for p in processes:
        await p.start()
    try:
        await watch(processes, PAIRS * PER_PAIR, within=600)
        first = [await _curl(p.url, accept) for p in processes]
        targets = ", ".join(f"'{p.url.split('/')[2]}'" for p in processes)
        config = (
            f"global: {{scrape_interval: {INTERVAL}s, scrape_timeout: {INTERVAL}s,"
            f" external_labels: {{run: '{group}'}}}}\n"
            "scrape_configs:\n"
            "  - job_name: workers\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )
        workdir = logs / f"prometheus-{group}"
        workdir.mkdir()
        with prometheus_server(config, workdir, prometheus_flags) as base:
            await asyncio.sleep(INTERVAL * 4 + 1)
            quiet = [(await _curl(processes[0].url, accept))[0] for _ in range(5)]
            row = {
                "mode": mode,
                "workers": workers,
                "keys": key,
                "quiet_scrape_seconds": sorted(quiet)[2],
                "head_series": _own(base, "prometheus_tsdb_head_series"),
                "samples_per_scrape": sum(_values(base, 'scrape_samples_scraped{job="workers"}')),
                "scrape_seconds_max": max(_values(base, 'scrape_duration_seconds{job="workers"}')),
                "prometheus_rss_mb": _own(base, "process_resident_memory_bytes") / 2**20,
                "body_mb": sum(size for _, size in [await _curl(p.url, accept) for p in processes])
                / 1e6,
                "first_scrape_seconds_max": max(seconds for seconds, _ in first),
            }
    finally:
        for p in processes:
            await p.stop()
    print(
        f"  {mode:<14} x{workers}: {row['head_series']:>9,.0f} head series, "
        f"{row['samples_per_scrape']:>9,.0f} samples/scrape, "
        f"Prometheus {row['prometheus_rss_mb']:>6,.0f} MB, "
        f"scrape {row['scrape_seconds_max']:.2f} s, "
        f"body {row['body_mb']:.1f} MB, first scrape {row['first_scrape_seconds_max']:.2f} s, "
        f"quiet scrape {row['quiet_scrape_seconds']:.2f} s, keys by {key}",
        flush=True,
    )
    return row


async def main(modes: list[str], workers: list[int]) -> list[dict[str, Any]]:
    logs = Path(tempfile.mkdtemp(prefix="bench-series-"))
    print(f"logs: {logs}", flush=True)
    rows = []
    with brokers.running("tansu", logs) as bootstrap:
        topics = {key: f"bench-series-{key.replace(' ', '-')}" for key in KEYS}
        await create_topics(bootstrap, dict.fromkeys(topics.values(), PARTITIONS))
        started = time.monotonic()
        for key, topic in topics.items():
            await produce(bootstrap, topic, key)
        print(
            f"produced {PAIRS * PER_PAIR:,} events per key choice in "
            f"{time.monotonic() - started:.1f}s"
        )
        for n in workers:
            for mode in modes:
                rows.append(await one(bootstrap, topics["session id"], logs, mode, n))
        if max(workers) > 1:  # what the key choice does, classic histograms
            for key in KEYS[1:]:
                rows.append(
                    await one(bootstrap, topics[key], logs, "classic", max(workers), key=key)
                )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "series.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def publish(rows: list[dict[str, Any]]) -> None:
    """Into the page's data, then BENCHMARKS.md rendered again from the last `make bench`."""
    SERIES_DATA.write_text(json.dumps(rows, indent=2) + "\n")
    page_of_last_run = report.load(report.PAGE_DATA / "latest.json")
    report.PAGE.write_text(report.page_text(page_of_last_run))
    print(f"wrote {SERIES_DATA}, {report.PAGE}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.series", description=__doc__)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--workers", default="1,3")
    parser.add_argument(
        "--write-page",
        action="store_true",
        help="also publish: docs/bench/series.json and BENCHMARKS.md",
    )
    args = parser.parse_args()
    rows = asyncio.run(main(args.modes.split(","), [int(n) for n in args.workers.split(",")]))
    if args.write_page:
        publish(rows)
