"""/metrics against prometheus-client's own exposition of metrics built independently:
ordinary Counter and Histogram objects, in a private registry, fed event by event.

Values are chosen to sum exactly in any order (multiples of 1/8, whole numbers), so any
difference is one of text, not of float rounding. Some pass 1e6, where prometheus-client
switches to Go's exponent form (`le="1e+06"`, `2.5e+06`).
"""

import math

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from consumer.aggregate import Buckets, aggregate
from consumer.exposition import BusinessText, _count, _number, render
from consumer.metrics import COUNTERS, HISTOGRAMS, LABELS, ConsumerMetrics, le_labels
from consumer.settings import (
    DEFAULT_COST_BUCKETS,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_TOKENS_BUCKETS,
)
from consumer.synthetic import SessionFactory
from schemas import CreateSessionBilling, CreateSessionResponseBody, CreateSessionSessionsUsage

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def bounds(text: str) -> tuple[float, ...]:
    return tuple(float(b) for b in text.split(","))


BUCKETS = Buckets(
    bounds(DEFAULT_DURATION_BUCKETS), bounds(DEFAULT_TOKENS_BUCKETS), bounds(DEFAULT_COST_BUCKETS)
)


def events(count: int) -> list[CreateSessionResponseBody]:
    out = []
    for i, e in enumerate(SessionFactory(seed=61).events(count)):
        huge = i % 10 == 0
        prompt = 3_000_000.0 if huge else float(i * 37)
        out.append(
            msgspec.structs.replace(
                e,
                workspace_id=f"ws-{i % 3}",
                project_id=None if i % 4 == 0 else f"p-{i % 2}",
                duration=float(i * 250 + (4e9 if huge else 0)),
                traces_count=float(i % 5),
                billing=CreateSessionBilling(
                    input_cost=(i % 8) / 8,
                    output_cost=(1_250_000.0 if huge else (i % 3) / 4),
                    total_cost=(i % 8) / 8 + (1_250_000.0 if huge else (i % 3) / 4),
                ),
                usage=CreateSessionSessionsUsage(
                    prompt_tokens=prompt, completion_tokens=float(i), total_tokens=prompt + i
                ),
            )
        )
    return out


def independent(
    sessions: list[CreateSessionResponseBody],
    openmetrics: bool = False,
    histogram_labels: tuple[str, ...] = LABELS,
) -> bytes:
    """prometheus-client's text for `sessions`, through its own metric objects."""
    registry = CollectorRegistry()
    counters = {
        name: Counter(name, help_text, LABELS, registry=registry) for name, help_text, _ in COUNTERS
    }
    histograms = {
        name: Histogram(name, help_text, histogram_labels, registry=registry, buckets=b)
        for (name, help_text, _, _), b in zip(
            HISTOGRAMS, (BUCKETS.duration_seconds, BUCKETS.tokens, BUCKETS.cost), strict=True
        )
    }
    for e in sessions:
        labels = (e.workspace_id, e.project_id or "")
        values = {
            "llm_sessions": 1.0,
            "llm_session_input_cost": e.billing.input_cost,
            "llm_session_output_cost": e.billing.output_cost,
            "llm_session_cost": e.billing.total_cost,
            "llm_session_prompt_tokens": e.usage.prompt_tokens,
            "llm_session_completion_tokens": e.usage.completion_tokens,
            "llm_session_tokens": e.usage.total_tokens,
            "llm_session_traces": e.traces_count,
        }
        for name, value in values.items():
            counters[name].labels(*labels).inc(value)
        kept = labels[: len(histogram_labels)]
        for name, value in (
            ("llm_session_duration_seconds", e.duration / 1000),
            ("llm_session_tokens_per_session", e.usage.total_tokens),
            ("llm_session_cost_per_session", e.billing.total_cost),
        ):
            histogram = histograms[name]
            (histogram.labels(*kept) if kept else histogram).observe(value)
    return (generate_openmetrics if openmetrics else generate_latest)(registry)


def families(text: bytes) -> dict[str, tuple[bytes, list[bytes]]]:
    """Each family by the name on its HELP line: (its HELP and TYPE lines, its sample
    lines sorted; series order within a family carries no meaning)."""
    out: dict[str, tuple[bytes, list[bytes]]] = {}
    for block in text.removesuffix(b"# EOF\n").split(b"# HELP ")[1:]:
        help_line, type_line, *lines = block.splitlines(keepends=True)
        out[help_line.split(b" ", 1)[0].decode()] = (help_line + type_line, sorted(lines))
    return out


def ours(
    sessions: list[CreateSessionResponseBody],
    batches: int,
    openmetrics: bool,
    histogram_labels: tuple[str, ...] = LABELS,
) -> bytes:
    metrics = ConsumerMetrics(BUCKETS, 1000, histogram_labels=histogram_labels)
    size = math.ceil(len(sessions) / batches)
    for start in range(0, len(sessions), size):
        metrics.business.apply(aggregate(sessions[start : start + size], BUCKETS))
    accept = OPENMETRICS if openmetrics else ""
    chunks, _ = render(CollectorRegistry(), BusinessText(metrics.business), accept, [])
    return b"".join(chunks)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("batches", [1, 7])
def test_business_text_is_byte_identical_to_prometheus_clients_own_metrics(
    batches: int, openmetrics: bool
) -> None:
    sessions = events(200)
    want = families(independent(sessions, openmetrics))

    got = families(ours(sessions, batches, openmetrics))

    assert set(got) == set(want)
    for name, block in want.items():
        assert got[name] == block, name


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("kept", [("workspace_id",), ()], ids=["workspace", "none"])
def test_histograms_over_fewer_labels_are_prometheus_clients_own_with_those_labels(
    kept: tuple[str, ...], openmetrics: bool
) -> None:
    """--histogram-labels: the counters keep both labels; each histogram is what
    prometheus-client gives for the same events observed under the labels kept."""
    sessions = events(200)
    want = families(independent(sessions, openmetrics, kept))

    got = families(ours(sessions, 7, openmetrics, kept))

    assert set(got) == set(want)
    for name, block in want.items():
        assert got[name] == block, name
    assert len(got["llm_session_cost_per_session"][1]) == (3 if kept else 1) * (
        len(BUCKETS.cost) + 3
    )
    text = b"".join(line for _, lines in want.values() for line in lines)
    assert b'le="1e+06"' in text  # the default token buckets reach 1M
    assert b"e+06\n" in text  # and sums pass it


@pytest.mark.parametrize(
    "value",
    [0, 1, 999_999, 1_000_000, 1_234_567, 10**15, 10**17 + 1, 2**63],
)
def test_whole_numbers_print_as_prometheus_client_prints_them(value: int) -> None:
    want = floatToGoString(float(value))  # type: ignore[no-untyped-call]

    assert _count(value) == want
    assert _number(value) == want
    assert _number(float(value)) == want


@pytest.mark.parametrize("bound", [0.001, 0.5, 1.0, 100.0, 250000.0, 1e6, 2.5e6, 1e-7])
def test_le_labels_are_prometheus_clients(bound: float) -> None:
    assert le_labels((bound,)) == [floatToGoString(bound), "+Inf"]  # type: ignore[no-untyped-call]
