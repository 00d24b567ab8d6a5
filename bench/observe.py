"""Run one consumer process and time it from outside, through its /metrics.

Timing runs from the first observed count above zero to the last observed
count below the target, so start-up, group join and the tail are excluded
and both ends are real observations (no interpolation).
"""

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = "session_consumer_messages"
"""The project's (and naive's) counter of records handled."""
POLL = 0.1
"""Seconds between polls; each poll asks for one metric family only (`name[]`)."""


@dataclass(frozen=True)
class Contender:
    name: str
    argv: list[str]
    """Command line without the port; `--port`/`--metrics-port` is added here."""
    port_flag: str
    metric: str
    """Counter family whose samples sum to the records this process has handled."""


@dataclass(frozen=True)
class Timed:
    name: str
    records: int
    seconds: float
    peak_rss_mb: list[float]

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def project(
    bootstrap: str, topic: str, *flags: str, name: str = "project", under: tuple[str, ...] = ()
) -> Contender:
    """`session-metrics run` on `topic` with extra `flags`, optionally `under` a module
    (e.g. a profiler: `-m pyinstrument ...`)."""
    run = ["-m", "consumer", "run", "--bootstrap-servers", bootstrap, "--topic", topic]
    return Contender(name, python(*under, *run, *flags), "--metrics-port", MESSAGES)


class Process:
    """One contender process, its log file and its /metrics URL."""

    def __init__(self, contender: Contender, port: int, log_dir: Path, tag: str) -> None:
        self.contender = contender
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.log_path = log_dir / f"{tag}.log"
        self._argv = [*contender.argv, contender.port_flag, str(port)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv, cwd=ROOT, stdout=log, stderr=log
            )

    async def count(self, http: aiohttp.ClientSession) -> float | None:
        """The contender's count now; None while its server is not up yet."""
        try:
            params = {"name[]": self.contender.metric + "_total"}
            async with http.get(self.url, params=params) as response:
                text = await response.text()
        except aiohttp.ClientError:
            return None
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == self.contender.metric + "_total"
        )

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def failed(self) -> str:
        tail = self.log_path.read_text(errors="replace")[-3000:]
        return f"{self.contender.name} (pid {self.proc.pid if self.proc else '-'}): {tail}"


async def timed_run(
    processes: list[Process], expected: int, within: float, name: str | None = None
) -> Timed:
    """Start `processes` (one group), poll until they have handled `expected` records."""
    for p in processes:
        await p.start()
    try:
        seconds, records = _span(await watch(processes, expected, within), expected)
        return Timed(
            name or processes[0].contender.name,
            records,
            seconds,
            [p.peak_rss_mb() for p in processes],
        )
    finally:
        await asyncio.gather(*(p.stop() for p in processes))


async def watch(
    processes: list[Process], expected: int, within: float
) -> list[tuple[float, float]]:
    """Poll until the processes' counts sum to `expected`; the (time, count) observations."""
    seen: list[tuple[float, float]] = []
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            counts = await asyncio.gather(*(p.count(http) for p in processes))
            now = time.monotonic()
            total = sum(c or 0.0 for c in counts)
            if total > 0:
                seen.append((now, total))
            if total >= expected:
                return seen
            for p in processes:
                if p.proc is not None and p.proc.returncode is not None:
                    raise RuntimeError("contender exited early: " + p.failed())
            await asyncio.sleep(POLL)
    raise RuntimeError(
        f"not done within {within}s: {seen[-1:] or 'nothing counted'}; "
        + " | ".join(p.failed() for p in processes)
    )


def _span(seen: list[tuple[float, float]], expected: int) -> tuple[float, int]:
    """(seconds, records) between the first observation and the last one short of `expected`."""
    first = seen[0]
    inner = [s for s in seen if s[1] < expected]
    last = inner[-1] if len(inner) >= 2 else seen[-1]
    if last[0] <= first[0]:
        raise RuntimeError("too few observations to time the run: raise --events")
    return last[0] - first[0], int(last[1] - first[1])
