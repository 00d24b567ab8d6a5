"""`reconcile` with a Prometheus that holds native histograms, without a broker: which form
of a histogram is compared (consumer/histforms.py), and how the queries that read a
lifetime's last count and sum are built (consumer/promnative.py). What a real Prometheus
answers them: tests/test_native_histograms.py and tests/test_reconcile_broker.py."""

import re
from typing import Any

import aiohttp
import pytest

from consumer.histforms import Forms, Last, Lifetime, Series, as_held
from consumer.promnative import (
    FALLBACK_STEP,
    SAMPLES,
    _step,
    expression,
    lifetimes,
    native_forms,
    scrape_step,
    spans,
    subquery,
)
from consumer.promquery import Prometheus, PrometheusAuth, PrometheusError
from consumer.reconcile import Sample

NAME = "llm_session_duration_seconds"
NOW = 1_700_000_000.5
"""Prometheus's clock, far from the test's."""
OTHERS = ("llm_session_tokens_per_session", "llm_session_cost_per_session")


def series(instance: str, workspace: str = "ws", project: str = "p") -> Series:
    return frozenset({("instance", instance), ("workspace_id", workspace), ("project_id", project)})


def lifetime(instance: str, i: int = 0, workspace: str = "ws") -> Lifetime:
    return (series(instance, workspace), i)


def log_side() -> dict[Sample, float]:
    """The log's samples of the three histograms of one (ws, p): 5 sessions, sum 7.5."""
    out: dict[Sample, float] = {}
    for name in (NAME, *OTHERS):
        out |= {
            (f"{name}_bucket", "ws", "p", "10.0"): 3.0,
            (f"{name}_bucket", "ws", "p", "+Inf"): 5.0,
            (f"{name}_count", "ws", "p", ""): 5.0,
            (f"{name}_sum", "ws", "p", ""): 7.5,
        }
    return out


def classic_side(*names: str) -> dict[Sample, float]:
    return {k: v for k, v in log_side().items() if k[0].rsplit("_", 1)[0] in names}


def test_a_histogram_held_natively_only_is_compared_by_its_count_and_sum() -> None:
    # Two lifetimes (two pods) of the same series, as Prometheus keeps them natively.
    forms = Forms(native={lifetime("a"): Last(2, 3.0), lifetime("b"): Last(3, 4.5)})
    log, held = log_side(), classic_side(*OTHERS)

    lines = as_held(log, held, {NAME: forms})

    assert held[(f"{NAME}_count", "ws", "p", "")] == 5
    assert held[(f"{NAME}_sum", "ws", "p", "")] == 7.5
    assert not [k for k in log if k[0] == f"{NAME}_bucket"]  # not comparable: left out
    assert [k for k in log if k[0] == f"{OTHERS[0]}_bucket"]  # the classic ones are compared
    assert lines == [
        f"session-metrics: warning: Prometheus holds {NAME} as a native histogram: its count "
        "and sum are compared, not its buckets (native buckets are not the le buckets; "
        "scrape_classic_histograms: true keeps both)"
    ]


def test_a_histogram_held_in_both_forms_is_compared_classically_buckets_and_all() -> None:
    # scrape_classic_histograms: true: every scrape in both forms.
    both = {lifetime("a"): Last(5, 7.5)}
    log, held = log_side(), classic_side(NAME, *OTHERS)
    before = dict(held)

    lines = as_held(log, held, {NAME: Forms(classic=dict(both), native=dict(both))})

    assert (lines, held, log) == ([], before, log_side())


def test_lifetimes_held_in_one_form_or_the_other_add_up_and_the_buckets_are_left_out() -> None:
    # A rollout of --native-histograms: pod a served classic only, pod b native only; pod
    # c changed form within its lifetime (Prometheus's feature turned on): its later form,
    # the one that counted more, is its last value.
    forms = Forms(
        classic={lifetime("a"): Last(2, 3.0), lifetime("c"): Last(1, 1.0)},
        native={lifetime("b"): Last(1, 1.5), lifetime("c"): Last(2, 3.0)},
    )
    assert not forms.classic_holds_all()
    log, held = log_side(), classic_side(NAME, *OTHERS)

    (line,) = as_held(log, held, {NAME: forms})

    assert held[(f"{NAME}_count", "ws", "p", "")] == 5
    assert held[(f"{NAME}_sum", "ws", "p", "")] == 7.5
    assert not [k for k in held | log if k[0] == f"{NAME}_bucket"]
    assert f"holds {NAME} as a native histogram for some worker lifetimes" in line


def test_each_lifetime_of_a_target_restarted_in_place_counts() -> None:
    forms = Forms(native={lifetime("a", 0): Last(4, 6.0), lifetime("a", 1): Last(1, 1.5)})
    assert forms.totals(NAME) == {
        (f"{NAME}_count", "ws", "p", ""): 5,
        (f"{NAME}_sum", "ws", "p", ""): 7.5,
    }


def test_histograms_over_fewer_labels_are_summed_under_empty_ones() -> None:
    # --histogram-labels none: a series without workspace_id and project_id.
    forms = Forms(native={(frozenset({("instance", "a")}), 0): Last(5, 7.5)})
    assert forms.totals(NAME) == {
        (f"{NAME}_count", "", "", ""): 5,
        (f"{NAME}_sum", "", "", ""): 7.5,
    }


def test_a_histogram_prometheus_holds_in_neither_form_is_left_out_with_a_warning() -> None:
    log, held = log_side(), classic_side(*OTHERS)

    (line,) = as_held(log, held, {NAME: Forms()})  # its series found, none with values

    assert not [k for k in log if k[0].startswith(NAME)]
    assert line.startswith(f"session-metrics: warning: Prometheus holds no {NAME} series")


def test_the_step_is_half_the_shortest_scrape_interval_prometheus_is_configured_with() -> None:
    # As /api/v1/status/config gives it (Prometheus 2.42), every default filled in.
    config = (
        "global:\n  scrape_interval: 15s\n  scrape_timeout: 10s\n  evaluation_interval: 1m\n"
        "scrape_configs:\n- job_name: a\n  scrape_interval: 15s\n"
        "- job_name: b\n  scrape_interval: 1s500ms\n  scrape_timeout: 1s\n"
    )
    assert scrape_step(config) == 0.75
    assert scrape_step("global:\n  evaluation_interval: 1m\n") is None


async def test_a_prometheus_that_does_not_show_its_configuration_gets_the_fallback_step() -> None:
    class Hidden(Prometheus):
        async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
            raise PrometheusError(f"{path}: 404 without JSON")

    async with aiohttp.ClientSession() as http:
        assert await _step(Hidden("http://thanos:9090", PrometheusAuth()), http) == FALLBACK_STEP


def test_subqueries_cover_the_window_in_pieces_prometheus_accepts() -> None:
    assert spans(100.0, 110.0, 1.0, points=4) == [(110.0, 4.0), (106.0, 4.0), (102.0, 2.0)]
    assert spans(100.0, 110.0, 0.5, points=20) == [(110.0, 10.0)]
    assert spans(100.0, 100.0, 0.5, points=20) == []


class Recording(Prometheus):
    """A Prometheus that holds `series` (name: how many) and no samples, configured to
    scrape every second; it records what it is asked."""

    def __init__(self, series: dict[str, int]) -> None:
        super().__init__("http://prometheus:9090", PrometheusAuth(), 'job="sm"')
        self.series = series
        self.asked: list[str] = []
        self.paths: list[str] = []
        self.at: list[float | None] = []

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        self.paths.append(path)
        if path == "/api/v1/query" and params == {"query": "time()"}:
            return {"resultType": "scalar", "result": [NOW, str(NOW)]}
        if path == "/api/v1/status/config":
            return {"yaml": "global:\n  scrape_interval: 1s\n"}
        assert path == "/api/v1/series", path
        match = re.fullmatch(r'\{__name__=~"(.*)", job="sm"\}', params["match[]"])
        assert match, params
        asked = match.group(1).split("|")
        return [{"__name__": n} for n in asked for _ in range(self.series.get(n, 0))]

    async def query(
        self, http: aiohttp.ClientSession, promql: str, at: float | None = None
    ) -> list[dict[str, Any]]:
        self.asked.append(promql)
        self.at.append(at)
        return []


async def test_a_prometheus_without_native_series_is_asked_nothing_more() -> None:
    prometheus = Recording({f"{NAME}_count": 5})
    assert await native_forms(prometheus, [NAME], None, []) == {}
    assert prometheus.paths == ["/api/v1/query", "/api/v1/series"]
    assert prometheus.asked == []


async def test_pieces_are_as_long_as_the_series_of_either_form_let_prometheus_take_them() -> None:
    # 40,000 classic series beside 10,000 native ones (a rollout): SAMPLES / 40,000 = 500
    # steps of 0.5 s a piece, 15 pieces for the 3,600 s reconcile looks back.
    prometheus = Recording({NAME: 10_000, f"{NAME}_count": 40_000})

    forms = await native_forms(prometheus, [NAME], None, [])

    assert forms == {NAME: Forms()}
    assert max(a or 0.0 for a in prometheus.at) == NOW  # Prometheus's clock, not the test's
    ranges = [int(re.findall(r"\[(\d+)ms:500ms\]", q)[0]) for q in prometheus.asked]
    assert max(ranges) == SAMPLES // 40_000 * 500
    for expr in (
        f"{NAME}_count",
        f"{NAME}_sum",
        f"histogram_count({NAME}",
        f"histogram_sum({NAME}",
    ):
        mine = [r for q, r in zip(prometheus.asked, ranges, strict=True) if f"(({expr}" in q]
        assert (len(mine), sum(mine)) == (15, 3_600_000), expr


def test_a_restarted_targets_lifetimes_end_just_before_the_next_ones_first_sample() -> None:
    assert lifetimes(0.0, 100.0, [50.0, 10.0, 200.0]) == [
        (0.0, 9.999),
        (10.0, 49.999),
        (50.0, 100.0),
    ]
    assert lifetimes(0.0, 100.0, []) == [(0.0, 100.0)]


@pytest.mark.parametrize(
    ("native", "matchers", "promql"),
    [
        (
            True,
            'job="sm"',
            'max_over_time((histogram_count(h{job="sm"}))[600000ms:250ms])',
        ),
        (False, "", "max_over_time((h_count)[600000ms:250ms])"),
    ],
)
def test_a_lifetimes_last_count_is_the_largest_of_a_subquery(
    native: bool, matchers: str, promql: str
) -> None:
    assert subquery(expression("h", "count", native, matchers), 600.0, 0.25) == promql
