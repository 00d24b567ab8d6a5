"""What a Prometheus server holds for the business series: HTTP only, for `reconcile`.

A series' total is the sum over worker lifetimes of the last value Prometheus scraped:
each lifetime is its own target (a new pod, a new address), so its counters start at
zero and `last_over_time` over a window that reaches back to the range's first record
gives what that lifetime counted (docs/guarantees.md measures exactness this way).
"""

import itertools
import json
import math
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from consumer.reconcile import Sample

TIMEOUT = 30.0
MARGIN_SECONDS = 600
"""Added to the window before the range's first record: clocks of producers and of
Prometheus differ by a little."""


class PrometheusError(Exception):
    """Prometheus cannot answer as asked; str() is the one line shown to the user."""


@dataclass(frozen=True)
class PrometheusAuth:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    cafile: Path | None = None


@dataclass(frozen=True)
class Restart:
    """A target that ran more than one worker process in the window (restarted in place):
    its labels, and when each later process was first scraped."""

    target: tuple[tuple[str, str], ...]
    cuts: tuple[float, ...]

    def matchers(self) -> str:
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in self.target)

    def owns(self, labels: Iterable[tuple[str, str]]) -> bool:
        return set(self.target) <= set(labels)


class Prometheus:
    def __init__(self, url: str, auth: PrometheusAuth, selector: str = "") -> None:
        self.url = url.rstrip("/")
        self._auth = auth
        self.selector = selector

    def session(self) -> aiohttp.ClientSession:
        headers = {}
        basic = None
        if self._auth.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._auth.bearer_token}"
        elif self._auth.username is not None:
            basic = aiohttp.BasicAuth(self._auth.username, self._auth.password or "")
        context = None
        if self._auth.cafile is not None:
            context = ssl.create_default_context(cafile=self._auth.cafile)
        return aiohttp.ClientSession(
            headers=headers,
            auth=basic,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            connector=aiohttp.TCPConnector(ssl=context) if context else None,
        )

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        try:
            async with http.get(self.url + path, params=params) as response:
                if response.status in (401, 403):
                    raise PrometheusError(
                        f"{self.url} refused us ({response.status}): check --prometheus-username, "
                        "the password or the bearer token"
                    )
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    raise PrometheusError(
                        f"{self.url}{path} answered {response.status} without JSON: is "
                        "--prometheus-url a Prometheus?"
                    ) from None
        except aiohttp.ClientError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {exc}") from None
        except TimeoutError:
            raise PrometheusError(
                f"Prometheus at {self.url} did not answer in {TIMEOUT:.0f} s"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"Prometheus at {self.url}: {error or 'unexpected answer'}")
        return body["data"]

    async def retention_seconds(self) -> float | None:
        """How far back Prometheus keeps data by time (None: by size only, or not said)."""
        async with self.session() as http:
            info = await self.get(http, "/api/v1/status/runtimeinfo")
        return retention_of(str(info.get("storageRetention", "")))

    async def totals(
        self, names: tuple[str, ...], since_ms: int | None
    ) -> tuple[dict[Sample, float], list[Restart]]:
        """Every sample of `names`, summed over lifetimes, back to `since_ms`; and the
        targets that restarted in place (their counters reset within one series)."""
        window = f"[{lookback(since_ms, time.time())}s]"
        selector = f"{{{self.selector}}}" if self.selector else ""
        out: dict[Sample, float] = {}
        async with self.session() as http:
            for name in names:
                by = "workspace_id, project_id" + (", le" if name.endswith("_bucket") else "")
                promql = f"sum by ({by}) (last_over_time({name}{selector}{window}))"
                for row in await self.query(http, promql):
                    out[_key(name, row["metric"])] = float(row["value"][1])
            restarts = await self._restarts(http, selector, window)
            for restart in restarts:
                await self._add_earlier_lifetimes(http, out, names, restart, window)
        return out, restarts

    async def query(
        self, http: aiohttp.ClientSession, promql: str, at: float | None = None
    ) -> list[dict[str, Any]]:
        """An instant query's result, evaluated at `at` (Unix seconds; None: now)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        rows: list[dict[str, Any]] = (await self.get(http, "/api/v1/query", **params))["result"]
        return rows

    async def _restarts(
        self, http: aiohttp.ClientSession, selector: str, window: str
    ) -> list[Restart]:
        """Targets that ran more than one worker process: a worker restarted in place (same
        pod, same address) continues its old series from zero, so `last_over_time` sees
        only its last lifetime. Told by `process_start_time_seconds`, which every worker
        exports: a counter's values alone cannot tell a restart that has counted back up.
        A process's lifetime begins at its first scrape, where the start time changes."""
        promql = f"changes(process_start_time_seconds{selector}{window}) > 0"
        targets = {
            tuple(sorted((k, v) for k, v in row["metric"].items() if k != "__name__"))
            for row in await self.query(http, promql)
        }
        restarts = []
        for target in sorted(targets):
            matchers = Restart(target, ()).matchers()
            starts = await self.query(http, f"process_start_time_seconds{{{matchers}}}{window}")
            cuts = sorted(
                float(b[0])
                for row in starts
                for a, b in itertools.pairwise(row["values"])
                if a[1] != b[1]
            )
            if cuts:
                restarts.append(Restart(target, tuple(cuts)))
        return restarts

    async def _add_earlier_lifetimes(
        self,
        http: aiohttp.ClientSession,
        out: dict[Sample, float],
        names: tuple[str, ...],
        restart: Restart,
        window: str,
    ) -> None:
        """Add the last value of each earlier lifetime of a restarted target, from the raw
        samples, cut where its process start time changes."""
        for name in names:
            for row in await self.query(http, f"{name}{{{restart.matchers()}}}{window}"):
                earlier = _earlier_lifetimes(row["values"], list(restart.cuts))
                if earlier:
                    key = _key(name, row["metric"])
                    out[key] = out.get(key, 0.0) + earlier


def _earlier_lifetimes(values: list[list[Any]], cuts: list[float]) -> float:
    """What the lifetimes before a series' last one ended at: the last value of each run of
    samples between two cuts (a new process began at each cut), but the final one, which
    `last_over_time` already gave."""
    lasts, at = [], 0
    for cut in [*sorted(cuts), math.inf]:
        last = None
        while at < len(values) and float(values[at][0]) < cut:
            last = float(values[at][1])
            at += 1
        if last is not None:
            lasts.append(last)
    return math.fsum(lasts[:-1])


def _key(name: str, labels: dict[str, str]) -> Sample:
    return (
        name,
        labels.get("workspace_id", ""),
        labels.get("project_id", ""),
        labels.get("le", ""),
    )


def lookback(since_ms: int | None, now: float) -> int:
    if since_ms is None:
        return 3600
    return max(60, math.ceil(now - since_ms / 1000) + MARGIN_SECONDS)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def retention_of(text: str) -> float | None:
    """Seconds of Prometheus's `storageRetention` ("15d", "1y2w", "15d or 10GiB")."""
    for piece in text.split(" or "):
        seconds = seconds_of(piece.strip())
        if seconds is not None:
            return seconds
    return None


def seconds_of(duration: str) -> float | None:
    """Seconds of a Prometheus duration ("15s", "1m30s", "500ms"); None if it is not one."""
    pieces = _DURATION.findall(duration)
    if pieces and "".join(n + u for n, u in pieces) == duration:
        return float(sum(int(n) * _UNITS[u] for n, u in pieces))
    return None
