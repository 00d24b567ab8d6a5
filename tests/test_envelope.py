"""consumer/envelope.py through decode_many: every accepted envelope, and why one is refused.

CloudEvents are made by the `cloudevents` SDK's Kafka binding. The Confluent frame is built
with struct as confluent-kafka's JSONSerializer writes it (magic 0, big-endian schema id):
that serializer needs a reachable Schema Registry even to frame a value.
"""

import struct
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decode import Decoded, Reason, decode_many
from consumer.envelope import Envelope, Format, Headers, Kind
from tests.test_decode import body, raw

MAX_BYTES = 1 << 20
TYPE = "com.example.llm.session.created"


def confluent(value: bytes, schema_id: int = 7) -> bytes:
    return struct.pack(">bI", 0, schema_id) + value


def cloudevent(data: Any = None, event_type: str = TYPE, **attributes: Any) -> CloudEvent:
    attrs = {"type": event_type, "source": "/llm/sessions", "id": "ce-1"} | attributes
    return CloudEvent(attributes=attrs, data=body() if data is None else data)


def headers_of(message: KafkaMessage) -> Headers:
    return list(message.headers.items())


def one(value: bytes, headers: Headers = (), fmt: Format = Format.AUTO, **kw: Any) -> Decoded:
    """decode_many on one record, after checking the --reject-duplicate-keys path (a loop
    of its own) unwraps it the same way."""
    envelope = Envelope(fmt, **kw)
    got = decode_many([value], [headers], MAX_BYTES, envelope=envelope)
    strict = decode_many([value], [headers], MAX_BYTES, strict_keys=True, envelope=envelope)
    assert (strict.events, strict.invalid, strict.skipped) == (got.events, got.invalid, got.skipped)
    assert +strict.kinds == +got.kinds
    return got


def counted(got: Decoded, kind: Kind) -> None:
    assert got.invalid == []
    assert len(got.events) == 1
    assert got.events[0].billing.total_cost == 0.75
    assert {k: n for k, n in got.kinds.items() if n} == {kind: 1}


def refused(got: Decoded, reason: Reason) -> str:
    assert got.events == []
    assert [why.reason for _, why in got.invalid] == [reason], got.invalid
    return got.invalid[0][1].detail


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.JSON])
def test_plain_json_is_read_as_json_with_or_without_unrelated_headers(fmt: Format) -> None:
    counted(one(raw(), fmt=fmt), Kind.JSON)
    counted(one(raw(), [("traceparent", b"00-abc-01")], fmt), Kind.JSON)


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CONFLUENT_JSON])
@pytest.mark.parametrize("schema_id", [1, 0x7FFFFFFF, 0x80C3FF01], ids=["1", "max", "non-utf8"])
def test_confluent_frame_is_stripped_whatever_the_schema_id(fmt: Format, schema_id: int) -> None:
    counted(one(confluent(raw(), schema_id), fmt=fmt), Kind.CONFLUENT)


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CONFLUENT_JSON])
def test_schema_id_in_a_header_leaves_the_body_bare(fmt: Format) -> None:
    header = [("__value_schema_id", b"\x01" + bytes(16))]

    counted(one(raw(), header, fmt), Kind.CONFLUENT)


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CLOUDEVENTS])
def test_structured_cloudevent_from_the_sdk_counts_its_data(fmt: Format) -> None:
    message = to_structured_event(cloudevent(datacontenttype="application/json"))

    counted(one(message.value, headers_of(message), fmt), Kind.CLOUDEVENTS_STRUCTURED)


def test_structured_cloudevent_with_binary_data_counts_its_data_base64() -> None:
    message = to_structured_event(cloudevent(data=raw()))
    assert b'"data_base64"' in message.value

    counted(one(message.value, headers_of(message)), Kind.CLOUDEVENTS_STRUCTURED)


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CLOUDEVENTS])
def test_binary_cloudevent_from_the_sdk_counts_its_value(fmt: Format) -> None:
    message = to_binary_event(cloudevent(datacontenttype="application/json"))
    assert ("ce_specversion", b"1.0") in headers_of(message)

    counted(one(message.value, headers_of(message), fmt), Kind.CLOUDEVENTS_BINARY)


def test_cloudevents_of_another_type_are_skipped_not_counted_nor_invalid() -> None:
    wanted = frozenset({TYPE})
    for message in (
        to_structured_event(cloudevent(event_type="com.example.other")),
        to_binary_event(cloudevent(event_type="com.example.other")),
    ):
        got = one(message.value, headers_of(message), cloudevents_types=wanted)
        assert (got.events, got.invalid, got.skipped) == ([], [], 1)
    match = to_binary_event(cloudevent())
    counted(one(match.value, headers_of(match), cloudevents_types=wanted), Kind.CLOUDEVENTS_BINARY)


def test_the_type_filter_leaves_values_that_are_not_cloudevents_alone() -> None:
    counted(one(raw(), cloudevents_types=frozenset({TYPE})), Kind.JSON)


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.CONFLUENT_JSON])
def test_a_frame_with_another_magic_byte_is_unknown_magic_byte(fmt: Format) -> None:
    detail = refused(one(b"\x01" + confluent(raw())[1:], fmt=fmt), Reason.UNKNOWN_MAGIC_BYTE)

    assert "0x01" in detail


def test_plain_json_where_confluent_frames_are_required_is_unknown_magic_byte() -> None:
    detail = refused(one(raw(), fmt=Format.CONFLUENT_JSON), Reason.UNKNOWN_MAGIC_BYTE)

    assert "0x7b" in detail


@pytest.mark.parametrize("value", [b"\x00", b"\x00\x00\x00\x07"])
def test_a_frame_shorter_than_its_prefix_is_a_bad_envelope(value: bytes) -> None:
    refused(one(value), Reason.BAD_ENVELOPE)


def test_a_confluent_frame_around_a_bad_body_gives_the_body_reason() -> None:
    refused(one(confluent(b'{"id": 1}')), Reason.WRONG_TYPE)
    refused(one(confluent(raw(id="X").replace(b'"X"', b'"\xff"'))), Reason.NOT_UTF8)


def test_json_format_does_not_unwrap_anything() -> None:
    refused(one(confluent(raw()), fmt=Format.JSON), Reason.MALFORMED_JSON)
    message = to_structured_event(cloudevent())
    refused(one(message.value, headers_of(message), Format.JSON), Reason.MISSING_FIELD)


def test_plain_json_where_cloudevents_are_required_is_a_bad_envelope() -> None:
    detail = refused(one(raw(), fmt=Format.CLOUDEVENTS), Reason.BAD_ENVELOPE)

    assert "ce_specversion" in detail


STRUCTURED = [("content-type", b"application/cloudevents+json; charset=utf-8")]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"not json", Reason.BAD_ENVELOPE, id="not-json"),
        pytest.param(b'{"type": "t"}', Reason.BAD_ENVELOPE, id="no-specversion"),
        pytest.param(b'{"specversion": "1.0", "type": "t"}', Reason.BAD_ENVELOPE, id="no-data"),
        pytest.param(
            b'{"specversion": "1.0", "type": "t", "data_base64": "%%%"}',
            Reason.BAD_ENVELOPE,
            id="bad-base64",
        ),
        pytest.param(
            b'{"specversion": "1.0", "type": "t", "x": "\xe9", "data": ' + raw() + b"}",
            Reason.NOT_UTF8,
            id="latin1-in-an-extension",
        ),
        pytest.param(
            b'{"specversion": "1.0", "type": "t", "data": "a string"}',
            Reason.NOT_AN_OBJECT,
            id="data-not-an-object",
        ),
    ],
)
def test_a_broken_structured_cloudevent_is_refused_with_a_reason(
    value: bytes, reason: Reason
) -> None:
    refused(one(value, STRUCTURED), reason)


def test_size_limit_applies_to_the_whole_value_envelope_included() -> None:
    value = confluent(raw())

    got = decode_many([value], [()], len(value) - 1)

    assert [why.reason for _, why in got.invalid] == [Reason.TOO_LARGE]


# --- a mixed batch ------------------------------------------------------------------------------


def test_a_mixed_batch_keeps_positions_and_counts_each_kind() -> None:
    structured = to_structured_event(cloudevent())
    binary = to_binary_event(cloudevent())
    values: list[bytes | None] = [
        raw(),
        confluent(raw()),
        None,
        structured.value,
        b"\x02junk",
        binary.value,
        b"{",
        raw(),
    ]
    headers: list[Headers] = [(), (), (), headers_of(structured), (), headers_of(binary), (), ()]

    got = decode_many(values, headers, MAX_BYTES)

    assert len(got.events) == 5
    assert got.tombstones == 1
    assert sorted((p, why.reason) for p, why in got.invalid) == [
        (4, Reason.UNKNOWN_MAGIC_BYTE),
        (6, Reason.MALFORMED_JSON),
    ]
    assert dict(got.kinds) == {
        Kind.JSON: 3,
        Kind.CONFLUENT: 1,
        Kind.CLOUDEVENTS_STRUCTURED: 1,
        Kind.CLOUDEVENTS_BINARY: 1,
    }


# --- property: any value under any envelope header gets exactly one outcome -----------------

HEADER_SETS: list[Headers] = [
    (),
    [("traceparent", b"00-1-2-01")],
    STRUCTURED,
    [("ce_specversion", b"1.0"), ("ce_type", TYPE.encode())],
    [("ce_specversion", b"1.0"), ("ce_type", b"other")],
    [("__value_schema_id", b"\x01" + bytes(16))],
    [("content-type", b"\xff\xfe")],
]


@settings(max_examples=400)
@given(
    value=st.one_of(
        st.binary(max_size=200),
        st.builds(confluent, st.binary(max_size=200)),
        st.just(raw()),
        st.just(confluent(raw())),
    ),
    headers=st.sampled_from(HEADER_SETS),
    fmt=st.sampled_from(list(Format)),
)
def test_any_value_under_any_envelope_gets_exactly_one_outcome(
    value: bytes, headers: Headers, fmt: Format
) -> None:
    got = one(value, headers, fmt, cloudevents_types=frozenset({TYPE}))

    assert len(got.events) + len(got.invalid) + got.skipped == 1
    for _, why in got.invalid:
        assert why.reason in set(Reason)
        assert why.detail
