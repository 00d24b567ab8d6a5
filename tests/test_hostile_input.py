"""Hostile input end to end: every malformed kind is counted by reason and dead-lettered with its
original bytes, hostile-but-valid events are counted as documented, and the worker goes on.

The kinds are listed once here; a broker-free test checks each on both decode paths so a change of
reason shows up without a broker, and the broker test sends them all through a real worker.
"""

import asyncio
import collections
import json
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from consumer.broker import EmbeddedBroker
from consumer.decode import decode_many
from consumer.metrics import ConsumerMetrics
from consumer.produce import produce
from schemas import CreateSessionResponseBody
from tests.conftest import Running, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.test_decode import body, raw

DEFAULT_LIMIT = 1 << 20
"""--max-message-bytes default: the worker under test runs with it."""
STRICT = True
"""--reject-duplicate-keys: repeated keys are invalid too (decode's path, a second parse)."""
DEFAULT = False
"""The default: decode_many's fast loop, where the last of a repeated key counts."""

TEN_MB = 10 * 1000 * 1000


def with_literal(field: str, literal: bytes, **changes: Any) -> bytes:
    """A valid body whose top-level `field` is spelled `literal` (json.dumps cannot write it)."""
    value = raw(**{field: 999}, **changes)
    assert value.count(f'"{field}": 999'.encode()) == 1
    return value.replace(f'"{field}": 999'.encode(), f'"{field}": '.encode() + literal)


def with_nested_literal(parent: str, field: str, literal: bytes) -> bytes:
    nested = body()[parent] | {field: 999}
    value = raw(**{parent: nested})
    assert value.count(f'"{field}": 999'.encode()) == 1
    return value.replace(f'"{field}": 999'.encode(), f'"{field}": '.encode() + literal)


def with_duplicate(after: bytes, duplicate: bytes) -> bytes:
    """A valid body with `duplicate` (a `"key": value` pair) inserted right after `after`."""
    value = raw()
    assert value.count(after) == 1
    return value.replace(after, after + b", " + duplicate)


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


# name -> (value, reason). Each is a message some producer could really send.
INVALID_KINDS: dict[str, tuple[bytes, str]] = {
    "invalid-utf8-in-string": (raw(id="X").replace(b'"X"', b'"\xff\xfe"'), "not_utf8"),
    "latin1-in-string": (raw(externalId="X").replace(b'"X"', b'"caf\xe9"'), "not_utf8"),
    "utf16-encoded": (raw().decode().encode("utf-16"), "not_utf8"),
    "latin1-in-ignored-field": (raw(note="X").replace(b'"X"', b'"caf\xe9"'), "not_utf8"),
    "bom-prefix": (b"\xef\xbb\xbf" + raw(), "malformed_json"),
    "truncated": (raw()[: len(raw()) // 2], "malformed_json"),
    "empty-value": (b"", "malformed_json"),
    "two-objects": (raw() + raw(), "malformed_json"),
    "nan-literal": (with_literal("duration", b"NaN"), "malformed_json"),
    "infinity-literal": (
        with_nested_literal("billing", "totalCost", b"Infinity"),
        "malformed_json",
    ),
    "lone-surrogate-escape": (
        raw(workspaceId="X").replace(b'"X"', b'"ws-\\ud800"'),
        "malformed_json",
    ),
    "deep-nesting": (
        raw(extra=None).replace(b'"extra": null', b'"extra": ' + deep(100_000)),
        "too_deep",
    ),
    # A body that would decode and count if nobody checked its size.
    "ten-mb-value": (raw(padding="x" * TEN_MB), "too_large"),
    "overflow-1e400": (with_literal("duration", b"1e400"), "out_of_range"),
    "negative-cost": (
        raw(billing={"inputCost": 0, "outputCost": 0, "totalCost": -0.01}),
        "out_of_range",
    ),
    "huge-workspace-id": (raw(workspaceId="w" * 100_000), "out_of_range"),
    "empty-workspace-id": (raw(workspaceId=""), "out_of_range"),
    "billing-is-array": (raw(billing=[0.25, 0.5, 0.75]), "wrong_type"),
    "tokens-as-string": (
        raw(usage={"promptTokens": 1, "completionTokens": 1, "totalTokens": "2"}),
        "wrong_type",
    ),
    "number-in-tags": (raw(tags=["prod", 7]), "wrong_type"),
    "null-workspace-id": (raw(workspaceId=None), "wrong_type"),
    "null-billing": (raw(billing=None), "wrong_type"),
    "empty-object": (b"{}", "missing_field"),
    "missing-nested-field": (
        raw(usage={"promptTokens": 1, "completionTokens": 1}),
        "missing_field",
    ),
    "top-level-array": (json.dumps([body()]).encode(), "not_an_object"),
    "top-level-null": (b"null", "not_an_object"),
    "timestamp-without-zone": (raw(startedAt="2026-11-24T10:00:00"), "invalid_timestamp"),
    "impossible-date": (raw(updatedAt="2026-02-30T10:00:00Z"), "invalid_timestamp"),
    # msgspec keeps the last of duplicated keys; a counted field given twice is ambiguous,
    # so it must be rejected rather than counted with whichever value came last.
    "duplicate-total-cost": (
        with_duplicate(b'"totalCost": 0.75', b'"totalCost": 750.0'),
        "duplicate_key",
    ),
    "duplicate-workspace-id": (
        with_duplicate(b'"workspaceId": "ws-1"', b'"workspaceId": "ws-2"'),
        "duplicate_key",
    ),
}


@dataclass(frozen=True)
class Accepted:
    """A hostile-looking but valid event and what it must add to its own series."""

    value: bytes
    cost: float
    tokens: float
    duration_seconds: float


def accepted(workspace: str, value: bytes, cost: float, tokens: float, seconds: float) -> Accepted:
    """`value` moved to its own workspace, with its own session id so dedup keeps it."""
    assert value.count(b'"ws-1"') == value.count(b'"sess-1"') == 1
    value = value.replace(b'"ws-1"', json.dumps(workspace).encode())
    value = value.replace(b'"sess-1"', json.dumps(f"id-{workspace}").encode())
    return Accepted(value, cost, tokens, seconds)


ZEROED = {"inputCost": 0, "outputCost": 0, "totalCost": 0}

# workspace id -> event. Each gets its own workspace, so its series shows exactly what it added.
VALID_KINDS: dict[str, Accepted] = {
    # -0 is a number >= 0: msgspec reads the integer -0 as 0.0 and -0.0 as -0.0; both pass
    # `ge=0` and are counted as zero (sums start at +0.0, so a "-0" is never exported).
    "hostile-minus-zero": accepted(
        "hostile-minus-zero",
        with_nested_literal("billing", "totalCost", b"-0.0").replace(
            b'"duration": 1500', b'"duration": -0'
        ),
        cost=0.0,
        tokens=150.0,
        seconds=0.0,
    ),
    # Below the smallest float: rounds to 0, a valid amount.
    "hostile-underflow": accepted(
        "hostile-underflow",
        with_literal("duration", b"1e-400"),
        cost=0.75,
        tokens=150.0,
        seconds=0.0,
    ),
    # About 700 KB: big, but under the 1 MiB limit, and tags are never labels.
    "hostile-huge-tags": accepted(
        "hostile-huge-tags", raw(tags=["t"] * 140_000), cost=0.75, tokens=150.0, seconds=1.5
    ),
    "hostile-huge-integer": accepted(
        "hostile-huge-integer",
        raw(usage={"promptTokens": 10**30, "completionTokens": 0, "totalTokens": 10**30}),
        cost=0.75,
        tokens=1e30,
        seconds=1.5,
    ),
    "hostile-unknown-fields": accepted(
        "hostile-unknown-fields",
        raw(extra={"nested": [{"a": [1, 2, {"b": None}]}]}, billing2=ZEROED) + b" \n\t ",
        cost=0.75,
        tokens=150.0,
        seconds=1.5,
    ),
    # Characters the exposition format must escape, and some it must pass through.
    'hostile-"quoted"\\back\nslash-\u00e9\u2603\U0001f600': accepted(
        'hostile-"quoted"\\back\nslash-\u00e9\u2603\U0001f600',
        raw(),
        cost=0.75,
        tokens=150.0,
        seconds=1.5,
    ),
}


def test_hostile_kinds_cover_the_issue_list() -> None:
    assert len(INVALID_KINDS) >= 15
    assert len(set(INVALID_KINDS.values())) == len(INVALID_KINDS)
    assert len(INVALID_KINDS["ten-mb-value"][0]) > TEN_MB
    assert len(VALID_KINDS["hostile-huge-tags"].value) < DEFAULT_LIMIT


def reason_on(path: bool, name: str) -> str | None:
    """The reason kind `name` is invalid for on the decode path `path`, None when counted:
    without --reject-duplicate-keys the last of a repeated key counts, as documented."""
    reason = INVALID_KINDS[name][1]
    return None if reason == "duplicate_key" and path is DEFAULT else reason


@pytest.mark.parametrize("path", [STRICT, DEFAULT], ids=["strict", "default"])
@pytest.mark.parametrize("name", INVALID_KINDS.keys())
def test_each_invalid_kind_decodes_to_its_reason(name: str, path: bool) -> None:
    value, want = INVALID_KINDS[name][0], reason_on(path, name)

    got = decode_many([value], [()], DEFAULT_LIMIT, strict_keys=path)

    assert [i.reason for _, i in got.invalid] == ([want] if want else []), got.invalid
    assert len(got.events) == (0 if want else 1)


@pytest.mark.parametrize(
    "kind", VALID_KINDS.values(), ids=[k.encode("unicode_escape").decode() for k in VALID_KINDS]
)
@pytest.mark.parametrize("path", [STRICT, DEFAULT], ids=["strict", "default"])
def test_each_hostile_but_valid_kind_decodes(kind: Accepted, path: bool) -> None:
    got = decode_many([kind.value], [()], DEFAULT_LIMIT, strict_keys=path)
    assert got.invalid == []
    (result,) = got.events

    assert isinstance(result, CreateSessionResponseBody), result
    assert result.billing.total_cost == kind.cost
    assert result.usage.total_tokens == kind.tokens
    assert result.duration / 1000 == kind.duration_seconds


# --- end to end -------------------------------------------------------------------------------

SYNTHETIC = 300


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def outcomes(metrics: ConsumerMetrics) -> float:
    return sum(
        sample(metrics, "session_consumer_messages_total", outcome=o)
        for o in ("counted", "duplicate", "invalid", "tombstone")
    )


async def send_kinds(bootstrap: str, topic: str) -> dict[str, tuple[int, int]]:
    """Produce every kind keyed by its name, partitions alternating; name -> (partition, offset)."""
    # The 10 MB value needs a producer that may send it; the broker (Tansu) takes it as is.
    big = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * TEN_MB)
    await big.start()
    try:
        where = {}
        values = [(n, v) for n, (v, _) in INVALID_KINDS.items()]
        values += [(n, k.value) for n, k in VALID_KINDS.items()]
        for i, (name, value) in enumerate(values):
            meta = await big.send_and_wait(
                topic,
                value,
                key=name.encode(),
                partition=i % 2,
                headers=[("origin", b"hostile-%d" % i)],
            )
            where[name] = (meta.partition, meta.offset)
        return where
    finally:
        await big.stop()


async def read_all(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    got: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                for records in (await reader.getmany(timeout_ms=1000)).values():
                    got.extend(records)
    finally:
        await reader.stop()
    return got


async def scrape(run: Running) -> str:
    async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.broker
@pytest.mark.parametrize("path", [STRICT, DEFAULT], ids=["strict", "default"])
async def test_every_hostile_kind_is_counted_by_reason_dead_lettered_and_the_worker_goes_on(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    path: bool,
) -> None:
    topic, dlq = await new_topic(partitions=2), await new_topic(partitions=1)
    run = await start_worker(
        settings_for(broker.bootstrap, topic, dlq_topic=dlq, reject_duplicate_keys=path)
    )
    m = run.worker.metrics
    invalid = {n: r for n in INVALID_KINDS if (r := reason_on(path, n)) is not None}
    # On the default path the two repeated-key kinds are counted; both have id sess-1,
    # so dedup counts the first and calls the second a duplicate.
    repeats = len(INVALID_KINDS) - len(invalid)

    where = await send_kinds(broker.bootstrap, topic)
    # Valid events after the hostile ones, on the same partitions: the worker must count them.
    await produce(producer, topic, count=SYNTHETIC, rate=None, seed=21)
    total = len(INVALID_KINDS) + len(VALID_KINDS) + SYNTHETIC
    await eventually(lambda: run.task.done() or outcomes(m) >= total, within=60)

    assert not run.task.done(), run.task.exception() or "the worker stopped"
    assert await run.status("/healthz") == 200
    reasons = {r for _, r in INVALID_KINDS.values()} | {
        s.labels["reason"] for f in m.registry.collect() for s in f.samples if "reason" in s.labels
    }
    got = {r: sample(m, "session_consumer_invalid_total", reason=r) for r in reasons}
    assert {r: n for r, n in got.items() if n} == collections.Counter(invalid.values())
    assert sample(m, "session_consumer_messages_total", outcome="invalid") == len(invalid)
    assert run.counted() == len(VALID_KINDS) + SYNTHETIC + min(repeats, 1)
    assert sample(m, "session_consumer_messages_total", outcome="duplicate") == max(repeats - 1, 0)
    # Dead-letter counters move in the same step as the outcomes: final by now.
    assert sample(m, "session_consumer_dead_letter_failures_total") == 0
    assert sample(m, "session_consumer_dead_lettered_total") == len(invalid)

    await run.scrape()  # publishes what was counted
    check_synthetic_totals(m)
    check_valid_kinds(m)
    check_exposition(await scrape(run))
    dead = await read_all(broker.bootstrap, dlq, len(invalid))
    check_dead_letters(dead, topic, where, invalid)


def check_synthetic_totals(m: ConsumerMetrics) -> None:
    expected = expected_totals(corpus(seed=21, count=SYNTHETIC))
    got = series_values(m.registry)
    for key, want in expected.items():
        assert got["llm_sessions_total"][key] == want.sessions
        assert math.isclose(got["llm_session_cost_total"][key], want.cost, rel_tol=1e-9)
        assert got["llm_session_tokens_total"][key] == want.tokens


def check_valid_kinds(m: ConsumerMetrics) -> None:
    got = series_values(m.registry)
    hostile = {k: v for k, v in got["llm_sessions_total"].items() if k[0].startswith("hostile-")}
    assert hostile == {(w, "proj-1"): 1.0 for w in VALID_KINDS}
    for workspace, kind in VALID_KINDS.items():
        key = (workspace, "proj-1")
        assert got["llm_session_cost_total"][key] == kind.cost
        assert math.copysign(1, got["llm_session_cost_total"][key]) == 1  # never "-0"
        assert got["llm_session_tokens_total"][key] == kind.tokens
        assert got["llm_session_duration_seconds_sum"][key] == kind.duration_seconds


def check_exposition(text: str) -> None:
    """The text a scraper reads parses, and label values come back exactly as sent."""
    sessions = {
        s.labels["workspace_id"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "llm_sessions"
        for s in family.samples
    }
    for workspace in VALID_KINDS:
        assert sessions[workspace] == 1.0
    # Neither the 10 MB value nor the 100 KB workspace id reached a label.
    assert max(map(len, text.splitlines())) < 1000


def check_dead_letters(
    records: list[ConsumerRecord[bytes, bytes]],
    topic: str,
    where: dict[str, tuple[int, int]],
    invalid: dict[str, str],
) -> None:
    by_key = {r.key.decode(): r for r in records if r.key is not None}
    assert len(records) == len(by_key) == len(invalid)
    assert set(by_key) == set(invalid)
    for name, reason in invalid.items():
        record, (partition, offset) = by_key[name], where[name]
        value = INVALID_KINDS[name][0]
        headers = dict(record.headers)
        assert record.value == value, name
        assert headers["dlq-reason"] == reason.encode(), name
        assert headers["dlq-source-topic"] == topic.encode()
        assert headers["dlq-source-partition"] == str(partition).encode()
        assert headers["dlq-source-offset"] == str(offset).encode()
        assert 0 < len(headers["dlq-detail"]) <= 1024
        assert headers["origin"].startswith(b"hostile-")
