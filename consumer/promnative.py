"""What a Prometheus with native histograms holds of the histograms, per worker lifetime,
for `reconcile`: HTTP only; consumer/histforms.py decides what is compared.

Prometheus 2.42 answers last_over_time() of a native histogram with 0, so a lifetime's
last count (or sum) is read as the largest value of a subquery,
`max_over_time(histogram_count(h)[range:step])`: within a lifetime both only grow (no
observation is negative). A
subquery sees a series at its steps only, and a series goes stale one scrape interval
after its last sample (its target gone, or its scrape failing), so the step is half the
shortest scrape interval Prometheus is configured with: a step lands between every last
sample and its staleness. (Measured on 2.42 with 1 s scrapes: steps of 2 s found 25 of a
lifetime's 26 sessions, steps of 1 s and 500 ms all 26.) The classic `_count` and `_sum`
of the same lifetimes are read the same way, so the two forms are read alike.
"""

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from consumer.histforms import Forms, Last, Lifetime, Series
from consumer.promquery import Prometheus, PrometheusError, Restart, lookback, seconds_of

SAMPLES = 20_000_000
"""Samples one subquery holds at most (its steps times the series it reads): Prometheus
refuses a query that holds more at once than --query.max-samples, 50,000,000 unless
raised, and the pieces are cut to stay well under it."""
FALLBACK_STEP = 1.0
"""When Prometheus does not show its configuration (a Thanos querier, say): right for
scrape intervals of 2 s and more."""
_INTERVAL = re.compile(r"^\s*scrape_interval:\s*(\S+)\s*$", re.MULTILINE)


async def native_forms(
    prometheus: Prometheus, names: Sequence[str], since_ms: int | None, restarts: list[Restart]
) -> dict[str, Forms]:
    """Both forms of each family of `names` that Prometheus holds native series of, back to
    `since_ms`; `restarts`: the targets restarted in place, from Prometheus.totals()."""
    async with prometheus.session() as http:
        # Prometheus's clock, not ours: a piece that ended before its newest samples (our
        # clock behind its) would miss a lifetime's last ones.
        end = float((await prometheus.get(http, "/api/v1/query", query="time()"))["result"][0])
        start = end - lookback(since_ms, end)
        natives = await _series(prometheus, http, names, start, end)
        if not natives:
            return {}
        # The classic form is read too: a Prometheus can hold both, or each for some lifetimes.
        classic = await _series(prometheus, http, [f"{n}_count" for n in natives], start, end)
        step = await _step(prometheus, http)
        reader = _Reader(
            prometheus=prometheus, http=http, start=start, end=end, step=step, restarts=restarts
        )
        forms = {}
        for name in natives:
            series = max(natives[name], classic[f"{name}_count"])
            forms[name] = await reader.forms(name, max(1, SAMPLES // series))
        return forms


async def _series(
    prometheus: Prometheus,
    http: aiohttp.ClientSession,
    names: Sequence[str],
    start: float,
    end: float,
) -> Counter[str]:
    """How many series of each of `names` Prometheus holds in (start, end]: from its index,
    without reading a sample. Only a native histogram's series goes by the family's name."""
    matchers = ", ".join(m for m in (f'__name__=~"{"|".join(names)}"', prometheus.selector) if m)
    found = await prometheus.get(
        http,
        "/api/v1/series",
        start=f"{start:.3f}",
        end=f"{end:.3f}",
        **{"match[]": f"{{{matchers}}}"},
    )
    return Counter(str(labels.get("__name__", "")) for labels in found)


async def _step(prometheus: Prometheus, http: aiohttp.ClientSession) -> float:
    try:
        config = await prometheus.get(http, "/api/v1/status/config")
    except PrometheusError:
        return FALLBACK_STEP
    return scrape_step(str(config.get("yaml", ""))) or FALLBACK_STEP


def scrape_step(config_yaml: str) -> float | None:
    """Half the shortest scrape interval of a Prometheus configuration (its
    /api/v1/status/config, every default filled in); None if it names none."""
    intervals = [seconds_of(d) for d in _INTERVAL.findall(config_yaml)]
    known = [i for i in intervals if i]
    return min(known) / 2 if known else None


@dataclass(frozen=True, kw_only=True)
class _Reader:
    """Reads each lifetime's last count and sum in (start, end], at steps of `step`."""

    prometheus: Prometheus
    http: aiohttp.ClientSession
    start: float
    end: float
    step: float
    restarts: list[Restart]

    async def forms(self, name: str, points: int) -> Forms:
        """Both forms of one family, in subqueries of `points` steps at most."""
        forms = Forms()
        for native, into in ((False, forms.classic), (True, forms.native)):
            count = await self._lifetimes(name, "count", native, points)
            total = await self._lifetimes(name, "sum", native, points)
            for key in count.keys() | total.keys():
                into[key] = Last(count.get(key, 0.0), total.get(key, 0.0))
        return forms

    async def _lifetimes(
        self, name: str, part: str, native: bool, points: int
    ) -> dict[Lifetime, float]:
        """Each lifetime's last value of a series' count or sum. A target restarted in
        place keeps its series across processes, so its lifetimes are read one by one."""
        out: dict[Lifetime, float] = {}
        whole = expression(name, part, native, self.prometheus.selector)
        for series, value in (await self._largest(whole, self.start, self.end, points)).items():
            if not any(r.owns(series) for r in self.restarts):
                out[(series, 0)] = value
        for restart in self.restarts:
            own = expression(name, part, native, restart.matchers())
            for i, (after, until) in enumerate(lifetimes(self.start, self.end, restart.cuts)):
                for series, value in (await self._largest(own, after, until, points)).items():
                    out[(series, i)] = value
        return out

    async def _largest(
        self, expr: str, after: float, until: float, points: int
    ) -> dict[Series, float]:
        """Each series' largest value of `expr` at the steps in (after, until]."""
        out: dict[Series, float] = {}
        for at, seconds in spans(after, until, self.step, points):
            promql = subquery(expr, seconds, self.step)
            for row in await self.prometheus.query(self.http, promql, at=at):
                series = frozenset((k, v) for k, v in row["metric"].items() if k != "__name__")
                value = float(row["value"][1])
                out[series] = max(out.get(series, value), value)
        return out


def expression(name: str, part: str, native: bool, matchers: str) -> str:
    """A histogram's count or sum, in one form: `histogram_count(name{...})` of the native
    series, `name_count{...}` of the classic one."""
    selector = f"{{{matchers}}}" if matchers else ""
    if native:
        return f"histogram_{part}({name}{selector})"
    return f"{name}_{part}{selector}"


def subquery(expr: str, seconds: float, step: float) -> str:
    return f"max_over_time(({expr})[{round(seconds * 1000)}ms:{round(step * 1000)}ms])"


def spans(after: float, until: float, step: float, points: int) -> list[tuple[float, float]]:
    """(evaluation time, range) of subqueries that cover (after, until] together, none
    longer than `points` steps; in whole milliseconds, Prometheus's resolution."""
    first, at = round(after * 1000), round(until * 1000)
    longest = max(1, round(points * step * 1000))
    out = []
    while at > first:
        millis = min(longest, at - first)
        out.append((at / 1000, millis / 1000))
        at -= millis
    return out


def lifetimes(start: float, end: float, cuts: Sequence[float]) -> list[tuple[float, float]]:
    """(after, until] of each lifetime of a target restarted in place, in order: a new
    process's first sample is at a cut, so the lifetime before it ends a millisecond
    earlier (timestamps are in milliseconds) and its own steps come after the cut."""
    bounds = [start, *(c for c in sorted(cuts) if start < c < end)]
    ends = [*(c - 0.001 for c in bounds[1:]), end]
    return list(zip(bounds, ends, strict=True))
