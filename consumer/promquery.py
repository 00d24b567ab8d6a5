"""What a Prometheus server holds for the business series: HTTP only, for `reconcile`.

A series' total is the sum over worker lifetimes of the last value Prometheus scraped:
each lifetime is its own target (a new pod, a new address), so its counters start at
zero and `last_over_time` over a window that reaches back to the range's first record
gives what that lifetime counted (docs/guarantees.md measures exactness this way).
"""

import math
import re
import ssl
import time
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


class Prometheus:
    def __init__(self, url: str, auth: PrometheusAuth, selector: str = "") -> None:
        self.url = url.rstrip("/")
        self._auth = auth
        self._selector = selector

    def _session(self) -> aiohttp.ClientSession:
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

    async def _get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
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
        async with self._session() as http:
            info = await self._get(http, "/api/v1/status/runtimeinfo")
        return retention_of(str(info.get("storageRetention", "")))

    async def totals(
        self, names: tuple[str, ...], since_ms: int | None
    ) -> tuple[dict[Sample, float], int]:
        """Every sample of `names`, summed over lifetimes, back to `since_ms`; and the
        counter resets within one target (a container restarted in place), whose earlier
        lifetimes `last_over_time` cannot see."""
        window = lookback(since_ms, time.time())
        selector = f"{{{self._selector}}}" if self._selector else ""
        out: dict[Sample, float] = {}
        async with self._session() as http:
            promql = f"sum(resets(llm_sessions_total{selector}[{window}s]))"
            found = (await self._get(http, "/api/v1/query", query=promql))["result"]
            resets = int(float(found[0]["value"][1])) if found else 0
            for name in names:
                by = "workspace_id, project_id" + (", le" if name.endswith("_bucket") else "")
                promql = f"sum by ({by}) (last_over_time({name}{selector}[{window}s]))"
                data = await self._get(http, "/api/v1/query", query=promql)
                for row in data["result"]:
                    labels = row["metric"]
                    key = (
                        name,
                        labels.get("workspace_id", ""),
                        labels.get("project_id", ""),
                        labels.get("le", ""),
                    )
                    out[key] = float(row["value"][1])
        return out, resets


def lookback(since_ms: int | None, now: float) -> int:
    if since_ms is None:
        return 3600
    return max(60, math.ceil(now - since_ms / 1000) + MARGIN_SECONDS)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def retention_of(text: str) -> float | None:
    """Seconds of Prometheus's `storageRetention` ("15d", "1y2w", "15d or 10GiB")."""
    for piece in text.split(" or "):
        part = piece.strip()
        pieces = _DURATION.findall(part)
        if pieces and "".join(n + u for n, u in pieces) == part:
            return float(sum(int(n) * _UNITS[u] for n, u in pieces))
    return None
