"""consumer/decode.py: bytes to a session event, or Invalid with a reason and msgspec's detail."""

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decode import Decoded, Invalid, Reason, classify, decode, decode_many
from consumer.envelope import is_framed
from consumer.synthetic import BAD_VALUES, SessionFactory, encode
from schemas import CreateSessionResponseBody

MAX_BYTES = 1 << 20

VALID: dict[str, Any] = {
    "id": "sess-1",
    "externalId": "ext-1",
    "duration": 1500,
    "contactIds": ["c-1"],
    "billing": {"inputCost": 0.25, "outputCost": 0.5, "totalCost": 0.75},
    "usage": {"promptTokens": 100, "completionTokens": 50, "totalTokens": 150},
    "tracesCount": 3,
    "tags": ["prod"],
    "workspaceId": "ws-1",
    "projectId": "proj-1",
    "startedAt": "2026-11-24T10:00:00.000Z",
    "updatedAt": "2026-11-24T10:00:01.500Z",
}


def body(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(VALID)
    out.update(changes)
    return out


def raw(**changes: Any) -> bytes:
    return json.dumps(body(**changes)).encode()


def without(*path: str) -> bytes:
    out = body()
    target = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return json.dumps(out).encode()


def valid_with_duration_literal(literal: bytes) -> bytes:
    value = raw(duration=999)
    assert value.count(b'"duration": 999') == 1
    return value.replace(b'"duration": 999', b'"duration": ' + literal)


# (id, value, reason, path that must appear in the detail or None when msgspec gives none)
CASES: list[tuple[str, bytes, Reason, str | None]] = [
    ("invalid-utf8-in-string", raw(id="X").replace(b'"X"', b'"\xff\xfe"'), Reason.NOT_UTF8, None),
    ("truncated", raw()[:-7], Reason.MALFORMED_JSON, None),
    ("empty", b"", Reason.MALFORMED_JSON, None),
    ("not-json", b"not json at all", Reason.MALFORMED_JSON, None),
    ("nan-literal", valid_with_duration_literal(b"NaN"), Reason.MALFORMED_JSON, None),
    ("infinity-literal", valid_with_duration_literal(b"Infinity"), Reason.MALFORMED_JSON, None),
    ("minus-infinity", valid_with_duration_literal(b"-Infinity"), Reason.MALFORMED_JSON, None),
    ("bom-prefix", b"\xef\xbb\xbf" + raw(), Reason.MALFORMED_JSON, None),
    ("invalid-utf8-outside-string", b"\xff" + raw(), Reason.NOT_UTF8, None),
    # msgspec skips unknown fields without reading their bytes: only our own check sees these.
    (
        "invalid-utf8-in-ignored-field",
        raw(extra="X").replace(b'"X"', b'"caf\xe9"'),
        Reason.NOT_UTF8,
        None,
    ),
    (
        "truncated-multibyte-in-ignored-field",
        raw(extra="X").replace(b'"X"', b'"\xe2\x98"'),
        Reason.NOT_UTF8,
        None,
    ),
    (
        "encoded-surrogate-in-ignored-field",
        raw(extra=0).replace(b'"extra": 0', b'"extra": "\xed\xa0\x80"'),
        Reason.NOT_UTF8,
        None,
    ),
    (
        "overlong-encoding-in-ignored-field",
        raw(extra=0).replace(b'"extra": 0', b'"extra": "\xc0\xaf"'),
        Reason.NOT_UTF8,
        None,
    ),
    ("top-level-array", b"[1, 2, 3]", Reason.NOT_AN_OBJECT, None),
    ("top-level-string", b'"session"', Reason.NOT_AN_OBJECT, None),
    ("top-level-null", b"null", Reason.NOT_AN_OBJECT, None),
    ("top-level-number", b"42", Reason.NOT_AN_OBJECT, None),
    ("missing-traces-count", without("tracesCount"), Reason.MISSING_FIELD, None),
    ("missing-billing-total", without("billing", "totalCost"), Reason.MISSING_FIELD, "$.billing"),
    ("missing-usage-tokens", without("usage", "totalTokens"), Reason.MISSING_FIELD, "$.usage"),
    ("string-duration", raw(duration="1500"), Reason.WRONG_TYPE, "$.duration"),
    ("bool-duration", raw(duration=True), Reason.WRONG_TYPE, "$.duration"),
    ("billing-is-string", raw(billing="0.75"), Reason.WRONG_TYPE, "$.billing"),
    ("billing-is-array", raw(billing=[0.25, 0.5]), Reason.WRONG_TYPE, "$.billing"),
    ("contact-id-number", raw(contactIds=[1]), Reason.WRONG_TYPE, "$.contactIds[0]"),
    ("workspace-null", raw(workspaceId=None), Reason.WRONG_TYPE, "$.workspaceId"),
    ("timestamp-number", raw(startedAt=1764000000), Reason.WRONG_TYPE, "$.startedAt"),
    (
        "negative-total-cost",
        raw(billing={"inputCost": 0, "outputCost": 0, "totalCost": -0.01}),
        Reason.OUT_OF_RANGE,
        "$.billing.totalCost",
    ),
    ("negative-duration", raw(duration=-5), Reason.OUT_OF_RANGE, "$.duration"),
    ("overflowing-1e400", valid_with_duration_literal(b"1e400"), Reason.OUT_OF_RANGE, "$.duration"),
    ("overflowing-int", valid_with_duration_literal(b"9" * 400), Reason.OUT_OF_RANGE, "$.duration"),
    ("empty-id", raw(id=""), Reason.OUT_OF_RANGE, "$.id"),
    ("empty-workspace", raw(workspaceId=""), Reason.OUT_OF_RANGE, "$.workspaceId"),
    ("id-too-long", raw(id="x" * 257), Reason.OUT_OF_RANGE, "$.id"),
    ("garbage-timestamp", raw(startedAt="yesterday"), Reason.INVALID_TIMESTAMP, "$.startedAt"),
    (
        "timestamp-without-zone",
        raw(updatedAt="2026-11-24T10:00:00.000"),
        Reason.INVALID_TIMESTAMP,
        "$.updatedAt",
    ),
    (
        "impossible-date",
        raw(startedAt="2026-02-30T10:00:00Z"),
        Reason.INVALID_TIMESTAMP,
        "$.startedAt",
    ),
]


def decode_both(value: bytes, max_bytes: int) -> CreateSessionResponseBody | Invalid:
    """decode(value), after checking that decode_many's fast loop (the worker's default
    path, a separate loop) gives the same result; a value starting with a control byte
    is a binary frame there (--value-format auto), and must come out as one."""
    single = decode(value, max_bytes)
    many = decode_many([value], [()], max_bytes)
    assert many.tombstones == 0
    if is_framed(value) and len(value) <= max_bytes:
        check_framed(value, many)
    elif isinstance(single, Invalid):
        assert many.events == []
        assert many.invalid == [(0, single)]
    else:
        assert many.events == [single]
        assert many.invalid == []
    return single


def check_framed(value: bytes, many: Decoded) -> None:
    if value[0] != 0:
        assert [why.reason for _, why in many.invalid] == [Reason.UNKNOWN_MAGIC_BYTE]
    elif len(value) < 5:
        assert [why.reason for _, why in many.invalid] == [Reason.BAD_ENVELOPE]
    else:
        inner = decode(value[5:], 1 << 30)
        assert many.events == ([] if isinstance(inner, Invalid) else [inner])
        assert many.invalid == ([(0, inner)] if isinstance(inner, Invalid) else [])


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [pytest.param(v, r, p, id=i) for i, v, r, p in CASES],
)
def test_bad_value_is_invalid_with_reason_and_detail(
    value: bytes, reason: Reason, path: str | None
) -> None:
    result = decode_both(value, MAX_BYTES)

    assert isinstance(result, Invalid)
    assert result.reason is reason, result.detail
    assert result.detail.strip()
    if path is not None:
        assert f"`{path}`" in result.detail


def test_every_reason_but_the_fallback_is_produced_by_a_realistic_input() -> None:
    produced = {decode(v, MAX_BYTES).reason for _, v, _, _ in CASES}  # type: ignore[union-attr]
    produced.add(decode(b"x" * 11, 10).reason)  # type: ignore[union-attr]
    deep = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    produced.add(decode(deep, MAX_BYTES).reason)  # type: ignore[union-attr]
    repeated = raw().replace(b'"id": ', b'"id": "x", "id": ', 1)
    produced.add(decode(repeated, MAX_BYTES, strict_keys=True).reason)  # type: ignore[union-attr]
    framed = decode_many([b"\x01" + raw(), b"\x00\x00"], [(), ()], MAX_BYTES)
    produced |= {why.reason for _, why in framed.invalid}

    assert produced == set(Reason) - {Reason.INVALID_VALUE}


def test_unrecognised_validation_message_falls_back_to_invalid_value() -> None:
    assert classify("Expected `str` matching regex '^a$' - at `$.id`") is Reason.INVALID_VALUE


def test_valid_value_decodes_to_struct() -> None:
    result = decode(raw(), MAX_BYTES)

    assert isinstance(result, CreateSessionResponseBody)
    assert result.id == "sess-1"
    assert result.workspace_id == "ws-1"
    assert result.billing.total_cost == 0.75
    assert result.usage.total_tokens == 150.0


def test_synthetic_event_round_trips() -> None:
    event = SessionFactory(seed=3).event()

    assert decode(encode(event), MAX_BYTES) == event


def test_value_over_the_limit_is_too_large() -> None:
    value = raw()

    result = decode(value, len(value) - 1)

    assert result == Invalid(
        Reason.TOO_LARGE, f"value is {len(value)} bytes, limit is {len(value) - 1}"
    )


def test_value_exactly_at_the_limit_is_decoded() -> None:
    value = raw()

    assert isinstance(decode(value, len(value)), CreateSessionResponseBody)


def test_too_large_is_checked_before_parsing() -> None:
    result = decode(b"\xff not even json", 3)

    assert isinstance(result, Invalid)
    assert result.reason is Reason.TOO_LARGE


def test_synthetic_bad_values_each_give_a_different_reason() -> None:
    reasons = [decode(v, MAX_BYTES).reason for v in BAD_VALUES]  # type: ignore[union-attr]

    assert reasons == [
        Reason.MALFORMED_JSON,
        Reason.MISSING_FIELD,
        Reason.NOT_AN_OBJECT,
        Reason.OUT_OF_RANGE,
    ]


@pytest.mark.parametrize("shape", ["objects", "arrays"])
def test_deeply_nested_unknown_field_is_invalid_not_an_exception(shape: str) -> None:
    # 10-30 KB, well under the size limit: msgspec recurses while skipping the unknown field
    # and raises RecursionError, which must not escape decode() and kill the worker.
    depth = 5000
    if shape == "objects":
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        nested = b"[" * depth + b"]" * depth
    value = b'{"unknownField":' + nested + b"}"

    result = decode(value, MAX_BYTES)

    assert isinstance(result, Invalid)
    assert result.reason is Reason.TOO_DEEP


# --- property: decode never raises -------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
field_names = st.sampled_from([*VALID, "billing.inputCost", "usage.totalTokens"])


def check_result(result: CreateSessionResponseBody | Invalid) -> None:
    assert isinstance(result, CreateSessionResponseBody | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in set(Reason)
        assert result.detail


@settings(max_examples=300)
@given(value=st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(value: bytes) -> None:
    check_result(decode_both(value, 200))


@settings(max_examples=300)
@given(value=json_values)
def test_decode_never_raises_on_arbitrary_json(value: Any) -> None:
    check_result(decode_both(json.dumps(value).encode(), MAX_BYTES))


@settings(max_examples=300)
@given(replacements=st.dictionaries(field_names, json_values, max_size=4))
def test_decode_never_raises_on_a_valid_event_with_fields_replaced(
    replacements: dict[str, Any],
) -> None:
    event = body()
    for name, value in replacements.items():
        parent, _, child = name.partition(".")
        if not child:
            event[name] = value
        elif isinstance(event[parent], dict):
            event[parent][child] = value

    result = decode_both(json.dumps(event).encode(), MAX_BYTES)

    check_result(result)
    if not replacements:
        assert isinstance(result, CreateSessionResponseBody)


# --- property: mutations of valid bodies ------------------------------------------------------
#
# A mutated body is either rejected with a reason, or accepted as an event that is safe to
# count: every amount finite and >= 0, ids within their lengths, timestamps with a zone.

SEED_BODIES = [
    raw(),
    raw(workspaceId="caf\u00e9-\u2603", projectId=None, tags=[], contactIds=[]),
    *(encode(e) for e in SessionFactory(seed=5).events(3)),
]


def assert_countable(event: CreateSessionResponseBody) -> None:
    amounts = (
        event.duration,
        event.traces_count,
        event.billing.input_cost,
        event.billing.output_cost,
        event.billing.total_cost,
        event.usage.prompt_tokens,
        event.usage.completion_tokens,
        event.usage.total_tokens,
    )
    assert all(math.isfinite(a) and a >= 0 for a in amounts), amounts
    assert 1 <= len(event.id) <= 256
    assert 1 <= len(event.workspace_id) <= 256
    assert event.project_id is None or len(event.project_id) <= 256
    for when in (event.started_at, event.updated_at):
        assert when is None or when.utcoffset() is not None


def check_mutant(value: bytes) -> None:
    result = decode_both(value, MAX_BYTES)
    check_result(result)
    if isinstance(result, CreateSessionResponseBody):
        assert_countable(result)


@st.composite
def byte_mutants(draw: st.DrawFn) -> bytes:
    """A seed body with a few bytes flipped, deleted, inserted or duplicated."""
    value = bytearray(draw(st.sampled_from(SEED_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value) - 1))
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "repeat"]))
        if op == "flip":
            value[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            value[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del value[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            value[at:at] = value[at : at + draw(st.integers(1, 40))]
    return bytes(value)


def slots(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a JSON document a value can be put: existing keys and items, new ones."""
    out: list[tuple[str | int, ...]] = []
    if isinstance(node, dict):
        out.append((*path, "unknownField"))
        for key, child in node.items():
            out += [(*path, key), *slots(child, (*path, key))]
    elif isinstance(node, list):
        out.append((*path, len(node)))
        for index, child in enumerate(node):
            out += [(*path, index), *slots(child, (*path, index))]
    return out


def put(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if isinstance(parent, list) and last == len(parent):
        parent.append(value)
    else:
        parent[last] = value


@st.composite
def json_mutants(draw: st.DrawFn) -> bytes:
    """A seed body with random JSON values put at random places, nested ones included."""
    document = json.loads(draw(st.sampled_from(SEED_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        put(document, draw(st.sampled_from(slots(document))), draw(json_values))
    return json.dumps(document).encode()


@settings(max_examples=500)
@given(value=byte_mutants())
def test_byte_mutants_of_a_valid_body_are_rejected_or_countable(value: bytes) -> None:
    check_mutant(value)


@settings(max_examples=500)
@given(value=json_mutants())
def test_random_values_anywhere_in_a_valid_body_are_rejected_or_countable(value: bytes) -> None:
    check_mutant(value)


@settings(max_examples=200)
@given(seed_body=st.sampled_from(SEED_BODIES), data=st.data())
def test_every_truncation_of_a_valid_body_is_malformed(
    seed_body: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(seed_body) - 1))

    result = decode_both(seed_body[:cut], MAX_BYTES)

    assert isinstance(result, Invalid)
    assert result.reason in {Reason.MALFORMED_JSON, Reason.NOT_UTF8}, result.detail


@settings(max_examples=100)
@given(seed=st.integers(0, 2**32))
def test_synthetic_events_of_any_seed_round_trip_and_are_countable(seed: int) -> None:
    event = SessionFactory(seed=seed).event()

    result = decode(encode(event), MAX_BYTES)

    assert result == event
    assert isinstance(result, CreateSessionResponseBody)
    assert_countable(result)


@settings(max_examples=100)
@given(value=st.binary(min_size=11, max_size=200), data=st.data())
def test_anything_over_the_limit_is_too_large_whatever_it_holds(
    value: bytes, data: st.DataObject
) -> None:
    limit = data.draw(st.integers(0, len(value) - 1))

    result = decode_both(value, limit)

    assert isinstance(result, Invalid)
    assert result.reason is Reason.TOO_LARGE


# --- duplicated keys ------------------------------------------------------------------------
#
# msgspec keeps the last of two equal keys (as JSON.parse does). For a key that decides what is
# counted, or where, the event is ambiguous: with --reject-duplicate-keys (strict_keys) it is
# "duplicate_key"; without, the last value counts, which is documented and tested too.

COUNTED_KEYS = [
    ("id", "sess-2"),
    ("workspaceId", "ws-2"),
    ("projectId", "proj-2"),
    ("duration", 99),
    ("tracesCount", 99),
    ("billing.inputCost", 99),
    ("billing.outputCost", 99),
    ("billing.totalCost", 99),
    ("usage.promptTokens", 99),
    ("usage.completionTokens", 99),
    ("usage.totalTokens", 99),
]


def with_key_twice(dotted: str, second: Any) -> bytes:
    """The valid body with `dotted` given a second time (with `second`) right after the first."""
    *parents, key = dotted.split(".")
    first = body()
    for parent in parents:
        first = first[parent]
    pair = f'"{key}": {json.dumps(first[key])}'.encode()
    value = raw()
    assert value.count(pair) == 1
    return value.replace(pair, pair + f', "{key}": {json.dumps(second)}'.encode())


@pytest.mark.parametrize(("dotted", "second"), COUNTED_KEYS, ids=[k for k, _ in COUNTED_KEYS])
def test_a_counted_key_given_twice_is_a_duplicate_key(dotted: str, second: Any) -> None:
    result = decode(with_key_twice(dotted, second), MAX_BYTES, strict_keys=True)

    assert isinstance(result, Invalid), f"{dotted} given twice was accepted: {result}"
    assert result.reason == "duplicate_key", result.detail
    assert dotted.rsplit(".", 1)[-1] in result.detail


def test_without_strict_keys_the_last_of_a_repeated_key_counts() -> None:
    result = decode(with_key_twice("billing.totalCost", 99), MAX_BYTES)

    assert isinstance(result, CreateSessionResponseBody)
    assert result.billing.total_cost == 99


def test_strict_keys_accepts_a_body_without_repeats_and_sees_repeats_in_unknown_objects() -> None:
    assert not isinstance(decode(raw(), MAX_BYTES, strict_keys=True), Invalid)

    nested = raw(extra={"a": 1}).replace(b'"a": 1', b'"a": 1, "a": 2')
    result = decode(nested, MAX_BYTES, strict_keys=True)

    assert isinstance(result, Invalid)
    assert result.reason is Reason.DUPLICATE_KEY


def test_decode_many_with_strict_keys_rejects_only_the_repeating_value() -> None:
    values: list[bytes | None] = [raw(), with_key_twice("id", "x"), None, raw()]

    got = decode_many(values, [()] * len(values), MAX_BYTES, strict_keys=True)

    assert len(got.events) == 2
    assert got.tombstones == 1
    assert [(i, r.reason) for i, r in got.invalid] == [(1, Reason.DUPLICATE_KEY)]


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(
        st.sampled_from(["event", "framed", "tombstone", "bad", "too_large"]), max_size=30
    )
)
def test_each_event_carries_its_position_in_the_input_in_input_order(kinds: list[str]) -> None:
    """The log window decides by offset: an event's position must be its own record's,
    however plain, enveloped, invalid and tombstone records mix."""
    events = list(SessionFactory(5).events(len(kinds)))
    values: list[bytes | None] = []
    for kind, event in zip(kinds, events, strict=True):
        body = encode(event)
        values.append(
            {
                "event": body,
                "framed": b"\x00\x00\x00\x00\x07" + body,  # Confluent's wire format
                "tombstone": None,
                "bad": b"{not json",
                "too_large": body + b" " * 5000,
            }[kind]
        )
    out = decode_many(values, [()] * len(values), 4096)
    assert out.positions == sorted(out.positions)
    assert [e.id for e in out.events] == [events[p].id for p in out.positions]
    assert out.positions == [i for i, k in enumerate(kinds) if k in ("event", "framed")]
