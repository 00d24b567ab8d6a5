"""Real `session-metrics run` processes for the fault tests, and the ways to observe them.

A process killed with SIGKILL cannot be asked what it counted, so each worker process runs
with prometheus-client's multiprocess mode on (PROMETHEUS_MULTIPROC_DIR, a directory of its
own): its ordinary counters (`session_consumer_*`) are then kept in memory-mapped files,
written as they are incremented, which outlive the process. `Worker.exact()` reads them
back after death: the exact number of records the process counted, batches it applied and
commits that succeeded. The business series come from a custom collector and are not in
those files; a scrape just before the kill gives them as lower bounds.

Rounds: CI runs few rounds of each repeated fault; SESSION_METRICS_FULL_FAULTS=1 runs the
full count (the figures in docs/guarantees.md).
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from consumer.broker import EmbeddedBroker, free_port
from consumer.synthetic import encode
from schemas import CreateSessionResponseBody
from tests.tcp_proxy import TcpProxy

FULL = os.environ.get("SESSION_METRICS_FULL_FAULTS", "") == "1"
"""The full run: every repeated fault as often as docs/guarantees.md reports it."""

CLI = [sys.executable, "-m", "consumer"]
# Short group timeouts: on Tansu a worker restarted after a kill is admitted in ~7.5 s with
# these (~2.5 s after a SIGTERM, which leaves the group), ~11.5 s with 6000/1000.
FAST_GROUP = ("--session-timeout-ms", "3000", "--heartbeat-interval-ms", "1000")
BATCH_COMMITS = ("--commit-after", "batch")
"""For the tests that judge one process by its own counters (multiprocess files, offsets it
committed): a process that commits after each batch has committed exactly what it counted.
The default mode, exact in Prometheus's view, is measured through a real Prometheus in
tests/test_exact_in_prometheus.py."""
SeriesKey = tuple[str, str]
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def rounds(ci: int, full: int) -> int:
    return full if FULL else ci


def report(test: str, **figures: Any) -> None:
    """One JSON line of measured figures; `pytest -s` shows them (docs/guarantees.md has them)."""
    print(json.dumps({"figures": test, "full": FULL, **figures}, default=str), flush=True)


@dataclass
class Scrape:
    """One /metrics answer (Prometheus text format), read line by line: fast enough to poll."""

    text: str
    at: float = field(default_factory=time.monotonic)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for line in self.text.splitlines():
            if line.startswith(name + "{"):
                labels, _, value = line[len(name) + 1 :].rpartition("} ")
                out.append((dict(_LABEL.findall(labels)), float(value)))
            elif line.startswith(name + " "):
                out.append(({}, float(line[len(name) + 1 :])))
        return out

    def value(self, name: str, **labels: str) -> float:
        found = [value for have, value in self.samples(name) if have == labels]
        return found[0] if found else 0.0

    def series(self, name: str) -> dict[SeriesKey, float]:
        """A business counter by (workspace_id, project_id)."""
        return {
            (labels["workspace_id"], labels["project_id"]): value
            for labels, value in self.samples(name)
        }

    @property
    def counted(self) -> int:
        return int(self.value("session_consumer_messages_total", outcome="counted"))


@dataclass(frozen=True)
class Exact:
    """What a process counted, read from its metric files after it ended."""

    counted: int
    duplicate: int
    invalid: int
    batches: int
    commits: int
    commit_failures: int


class Worker:
    """One `session-metrics run` process with its own port, log file and metric files."""

    def __init__(
        self, workdir: Path, name: str, args: Iterable[str], env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.env = env or {}
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.metrics_dir = workdir / f"{name}.metrics"
        self.args = [
            *args,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.port),
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.signalled_at: float | None = None
        self.last_scrape: Scrape | None = None

    async def start(self) -> "Worker":
        self.metrics_dir.mkdir()
        env = {**os.environ, **self.env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *CLI, "run", *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body) of GET `path`; None while nothing answers."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(self.url + path) as response,
            ):
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def scrape(self, *names: str) -> Scrape | None:
        """GET /metrics, all of it or only the families `names`."""
        query = "&".join(f"name[]={name}" for name in names)
        got = await self.get(f"/metrics?{query}" if names else "/metrics")
        if got is None or got[0] != 200:
            return None
        self.last_scrape = Scrape(got[1].decode())
        return self.last_scrape

    async def counted(self) -> int:
        scrape = await self.scrape()
        return scrape.counted if scrape is not None else 0

    async def ready(self) -> bool:
        got = await self.get("/readyz")
        return got is not None and got[0] == 200

    async def assigned(self) -> int:
        scrape = await self.scrape()
        return int(scrape.value("session_consumer_assigned_partitions")) if scrape else -1

    def scrape_then_kill(self, *names: str) -> Scrape:
        """GET /metrics (only the families `names`: a small answer, rendered in one go
        and written without waiting) and SIGKILL the moment it has arrived. A blocking
        socket on purpose: nothing else of the test runs in between. What the process
        counted after rendering it, in the fraction of a millisecond before the kill
        lands, is the `slack` the crash test measures."""
        query = "&".join(f"name[]={name}" for name in names)
        request = f"GET /metrics?{query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
        received = bytearray()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            while chunk := sock.recv(1 << 20):
                received += chunk
            self.kill()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200", head[:200]
        self.last_scrape = Scrape(body.decode())
        return self.last_scrape

    def kill(self) -> None:
        assert self.proc is not None
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.proc is not None
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, within: float = 30.0) -> tuple[int, float]:
        """(exit code, seconds from the last signal to the exit)."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), within)
        return code, time.monotonic() - (self.signalled_at or time.monotonic())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def exact(self) -> Exact:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.metrics_dir))  # type: ignore[no-untyped-call]

        def value(name: str, **labels: str) -> int:
            return int(registry.get_sample_value(name, labels) or 0)

        messages = "session_consumer_messages_total"
        return Exact(
            counted=value(messages, outcome="counted"),
            duplicate=value(messages, outcome="duplicate"),
            invalid=value(messages, outcome="invalid"),
            batches=value("session_consumer_batch_records_count"),
            commits=value("session_consumer_commits_total"),
            commit_failures=value("session_consumer_commit_failures_total"),
        )

    def log(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def logged(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log() if entry.get("msg") == msg]

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


class Workers:
    """Starts worker processes; on exit kills any still running (a failed test leaves none)."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.started: list[Worker] = []

    async def start(self, *extra: str) -> Worker:
        worker = Worker(self.workdir, f"w{len(self.started)}", [*self.args, *extra])
        self.started.append(worker)
        return await worker.start()

    async def close(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.kill()
                with contextlib.suppress(TimeoutError):
                    await worker.wait(10)


@contextlib.asynccontextmanager
async def workers(workdir: Path, *args: str) -> AsyncIterator[Workers]:
    group = Workers(workdir, *args)
    try:
        yield group
    finally:
        await group.close()


async def until(
    check: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.05
) -> float:
    """Await `check()` (an async callable) until true; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        if loop.time() - started > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(every)
    return loop.time() - started


class Stream:
    """Sends events in order at a steady rate (flat out once `hurry` is set), keyed by
    workspace like `session-metrics produce`, and remembers where each one landed."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        events: list[CreateSessionResponseBody],
        rate: float,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.events = events
        self.rate = rate
        self.hurry = asyncio.Event()
        self.sent = 0
        self.highwater: dict[int, int] = defaultdict(int)
        self.partition_of: dict[str, int] = {}
        """Workspace id -> partition: the key decides it, so it never changes."""

    async def run(self) -> None:
        started, chunk = time.monotonic(), max(1, int(self.rate / 50))
        while self.sent < len(self.events):
            events = self.events[self.sent : self.sent + chunk]
            futures = [
                await self.producer.send(self.topic, encode(e), key=e.workspace_id.encode("utf-8"))
                for e in events
            ]
            for event, meta in zip(events, await asyncio.gather(*futures), strict=True):
                partition = self.partition_of[event.workspace_id] = meta.partition
                self.highwater[partition] = max(self.highwater[partition], meta.offset + 1)
            self.sent += len(events)
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0 and not self.hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hurry.wait(), ahead)

    def per_partition(self, series: dict[SeriesKey, float]) -> dict[int, float]:
        """Sum a per-series value by the partition its workspace's events go to."""
        out: dict[int, float] = defaultdict(float)
        for (workspace, _project), value in series.items():
            out[self.partition_of[workspace]] += value
        return dict(out)


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (0 where none)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        return {
            p: (await reader.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)
        }
    finally:
        await reader.stop()


def add(into: dict[SeriesKey, float], values: dict[SeriesKey, float]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0.0) + value


@contextlib.asynccontextmanager
async def broker_behind_proxy() -> AsyncIterator[tuple[EmbeddedBroker, TcpProxy]]:
    """A broker of the test's own that advertises a TcpProxy in front of it: every client
    connection goes through the proxy (bootstrap at `proxy.port`)."""
    port = free_port()
    with EmbeddedBroker(advertised_port=port) as broker:
        proxy = TcpProxy(broker.port, port)
        await proxy.start()
        try:
            yield broker, proxy
        finally:
            await proxy.stop()
