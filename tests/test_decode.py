"""consumer/decode.py: bytes to a session event, or Invalid with a reason and msgspec's detail."""

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decode import Invalid, Reason, classify, decode
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
    ("invalid-utf8-outside-string", b"\xff" + raw(), Reason.MALFORMED_JSON, None),
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


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [pytest.param(v, r, p, id=i) for i, v, r, p in CASES],
)
def test_bad_value_is_invalid_with_reason_and_detail(
    value: bytes, reason: Reason, path: str | None
) -> None:
    result = decode(value, MAX_BYTES)

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
    check_result(decode(value, 200))


@settings(max_examples=300)
@given(value=json_values)
def test_decode_never_raises_on_arbitrary_json(value: Any) -> None:
    check_result(decode(json.dumps(value).encode(), MAX_BYTES))


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

    result = decode(json.dumps(event).encode(), MAX_BYTES)

    check_result(result)
    if not replacements:
        assert isinstance(result, CreateSessionResponseBody)
