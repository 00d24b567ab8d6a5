"""Run one consumer process and time it from outside, through its /metrics.

Timing runs from the first observed count above zero to the last observed
count below the target, so start-up, group join and the tail are excluded
and both ends are real observations (no interpolation).
"""

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = "session_consumer_messages"
"""The project's (and naive's) counter of records handled."""
POLL = 0.1
"""Seconds between polls; each poll asks for one metric family only (`name[]`)."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Observation = tuple[float, float, float]
"""(monotonic time, records handled, CPU seconds used) of the processes at one poll."""


@dataclass(frozen=True)
class Contender:
    name: str
    argv: list[str]
    """Command line without the port; `--port`/`--metrics-port` is added here."""
    port_flag: str
    metric: str
    """Counter family whose samples sum to the records this process has handled."""
    cwd: Path = ROOT
    """Where the process starts: `python -m consumer` imports the `consumer` of this tree
    (bench/ab.py runs an older checkout this way)."""
    env: dict[str, str] = field(default_factory=dict)
    """Added to this process's environment."""


@dataclass(frozen=True)
class Timed:
    name: str
    records: int
    seconds: float
    peak_rss_mb: list[float]
    """VmHWM of each process, read just before it is stopped."""
    rss_mb: list[float] = field(default_factory=list)
    """VmRSS of each process at the same moment: what it holds once the corpus is read."""
    cpu_seconds: float = 0.0
    """CPU time (user + system) the processes spent over the timed span: unlike the wall
    time, barely moved by other load on the machine, so A/B runs can compare it."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.records * 1e6


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def project(
    bootstrap: str,
    topic: str,
    *flags: str,
    name: str = "project",
    under: tuple[str, ...] = (),
    tree: Path = ROOT,
) -> Contender:
    """`session-metrics run` on `topic` with extra `flags`, optionally `under` a module
    (e.g. a profiler: `-m pyinstrument ...`), from the checkout at `tree`."""
    run = ["-m", "consumer", "run", "--bootstrap-servers", bootstrap, "--topic", topic]
    # `-m` puts the working directory first on sys.path; PYTHONPATH covers the rest.
    env = {} if tree == ROOT else {"PYTHONPATH": str(tree)}
    argv = python(*under, *run, *flags)
    return Contender(name, argv, "--metrics-port", MESSAGES, cwd=tree, env=env)


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
                *self._argv,
                cwd=self.contender.cwd,
                env={**os.environ, **self.contender.env},
                stdout=log,
                stderr=log,
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

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (0 once the process is gone)."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS:")

    def _status_mb(self, key: str) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {key} in /proc status")

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
        seconds, records, cpu = _span(await watch(processes, expected, within), expected)
        return Timed(
            name or processes[0].contender.name,
            records,
            seconds,
            [p.peak_rss_mb() for p in processes],
            [p.rss_mb() for p in processes],
            cpu,
        )
    finally:
        await asyncio.gather(*(p.stop() for p in processes))


async def watch(processes: list[Process], expected: int, within: float) -> list[Observation]:
    """Poll until the processes' counts sum to `expected`; the observations."""
    seen: list[Observation] = []
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            counts = await asyncio.gather(*(p.count(http) for p in processes))
            now = time.monotonic()
            total = sum(c or 0.0 for c in counts)
            if total > 0:
                seen.append((now, total, sum(p.cpu_seconds() for p in processes)))
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


def _span(seen: list[Observation], expected: int) -> tuple[float, int, float]:
    """(seconds, records, CPU seconds) between the first observation and the last one short
    of `expected`."""
    first = seen[0]
    inner = [s for s in seen if s[1] < expected]
    last = inner[-1] if len(inner) >= 2 else seen[-1]
    if last[0] <= first[0]:
        raise RuntimeError("too few observations to time the run: raise --events")
    return last[0] - first[0], int(last[1] - first[1]), last[2] - first[2]
