"""Bytes of one Kafka record value to a session event, or the reason it is not one.

Pure: knows nothing of Kafka, metrics or logging. The reasons are a small fixed
set because they become label values of `session_consumer_invalid_total`.
"""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import msgspec

from consumer.envelope import (
    Envelope,
    EnvelopeError,
    Format,
    Headers,
    Kind,
    NotUtf8,
    UnknownMagicByte,
    is_framed,
    unwrap,
)
from schemas import CreateSessionResponseBody


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    TOO_DEEP = "too_deep"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_VALUE = "invalid_value"
    DUPLICATE_KEY = "duplicate_key"
    """Only with --reject-duplicate-keys: msgspec, like JSON.parse, keeps the last."""
    UNKNOWN_MAGIC_BYTE = "unknown_magic_byte"
    """A binary frame that is not Confluent's (magic byte 0)."""
    BAD_ENVELOPE = "bad_envelope"
    """A Confluent frame too short, a CloudEvent without data, or not the required format."""


class Invalid(msgspec.Struct, frozen=True):
    reason: Reason
    detail: str
    """msgspec's message, e.g. "Expected `float` >= 0.0 - at `$.billing.totalCost`"."""


_DECODER: Final = msgspec.json.Decoder(CreateSessionResponseBody)
_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
DEFAULT_ENVELOPE: Final = Envelope()


@dataclass(slots=True)
class Decoded:
    """One batch of values, decoded."""

    events: list[CreateSessionResponseBody]
    invalid: list[tuple[int, Invalid]]
    """(position in the input, why) of each value that is not an event."""
    tombstones: int
    """None values: Kafka's deletion markers, not events and not invalid."""
    skipped: int = 0
    """CloudEvents of a type --cloudevents-type does not name: read, not counted."""
    kinds: Counter[Kind] = field(default_factory=Counter)
    """Records per envelope kind, tombstones and unreadable envelopes excepted."""
    positions: list[int] = field(default_factory=list)
    """Position in the input of each event, ascending (events are in input order)."""


def decode(
    value: bytes, max_bytes: int, *, strict_keys: bool = False
) -> CreateSessionResponseBody | Invalid:
    if len(value) > max_bytes:
        return _too_large(value, max_bytes)
    return _decode_body(value, strict_keys)


def _decode_body(value: bytes, strict_keys: bool) -> CreateSessionResponseBody | Invalid:
    if not value.isascii() and (bad := _not_utf8(value)) is not None:
        return bad
    try:
        event = _DECODER.decode(value)
    except _ERRORS as exc:
        return _invalid(exc)
    if strict_keys:
        return _repeated_key(value) or event
    return event


def decode_many(
    values: list[bytes | None],
    headers: Sequence[Headers],
    max_bytes: int,
    *,
    strict_keys: bool = False,
    envelope: Envelope = DEFAULT_ENVELOPE,
) -> Decoded:
    """`decode` over a batch, each value unwrapped from its envelope (`headers[i]` are
    value i's Kafka headers). This is the per-record hot path: plain JSON without
    headers takes one tight loop, and only what fails there is looked at again."""
    if strict_keys or envelope.format not in {Format.AUTO, Format.JSON}:
        return _decode_each(values, headers, max_bytes, strict_keys, envelope)
    out = Decoded([], [], 0)
    again = _plain(out, values, headers, max_bytes, unwrap=envelope.format is Format.AUTO)
    out.kinds[Kind.JSON] = len(values) - out.tombstones - len(again)
    out.positions = _plain_positions(out, values, again)
    reader = _Reader(out, max_bytes, False, envelope)
    plain = len(out.events)
    for position in again:
        reader.add(position, values[position] or b"", headers[position])
    if plain and len(out.events) > plain:
        _in_input_order(out)
    return out


def _plain_positions(out: Decoded, values: list[bytes | None], again: list[int]) -> list[int]:
    """Where the fast loop's events stand in the input: computed once after it rather than
    noted for every record inside it (in the usual batch, every position)."""
    if len(out.events) == len(values):
        return list(range(len(values)))
    left = {p for p, _ in out.invalid}.union(again)
    if out.tombstones:
        left.update(p for p, v in enumerate(values) if v is None)
    return [p for p in range(len(values)) if p not in left]


def _in_input_order(out: Decoded) -> None:
    """Enveloped values are decoded after the plain ones: put the events back in input
    order, which dedup needs (the first of two copies counts)."""
    order = sorted(range(len(out.positions)), key=out.positions.__getitem__)
    out.events = [out.events[i] for i in order]
    out.positions = [out.positions[i] for i in order]


def _plain(
    out: Decoded,
    values: list[bytes | None],
    headers: Sequence[Headers],
    max_bytes: int,
    *,
    unwrap: bool,
) -> list[int]:
    """The fast loop: each value as plain JSON into `out`; returns the positions to
    unwrap from an envelope (with headers, or a binary frame) when `unwrap`."""
    again: list[int] = []
    with_headers = unwrap and any(headers)

    def reject(position: int, value: bytes, why: Invalid) -> None:
        # A binary frame is never plain JSON (nor, with its schema id, always UTF-8):
        # unwrap it only once it failed, so plain JSON pays nothing for the envelope.
        if unwrap and is_framed(value):
            again.append(position)
        else:
            out.invalid.append((position, why))

    append, decode_one = out.events.append, _DECODER.decode
    for position, value in enumerate(values):
        if value is None:
            out.tombstones += 1
        elif with_headers and headers[position]:
            again.append(position)
        elif len(value) > max_bytes:
            out.invalid.append((position, _too_large(value, max_bytes)))
        elif not value.isascii() and (bad := _not_utf8(value)) is not None:
            reject(position, value, bad)
        else:
            try:
                append(decode_one(value))
            except _ERRORS as exc:
                reject(position, value, _invalid(exc))
    return again


def _decode_each(
    values: list[bytes | None],
    headers: Sequence[Headers],
    max_bytes: int,
    strict_keys: bool,
    envelope: Envelope,
) -> Decoded:
    reader = _Reader(Decoded([], [], 0), max_bytes, strict_keys, envelope)
    for position, value in enumerate(values):
        if value is None:
            reader.out.tombstones += 1
        else:
            reader.add(position, value, headers[position])
    return reader.out


@dataclass(slots=True)
class _Reader:
    """Unwraps and decodes one value at a time into `out`: the path off the fast loop."""

    out: Decoded
    max_bytes: int
    strict_keys: bool
    envelope: Envelope

    def add(self, position: int, value: bytes, headers: Headers) -> None:
        out = self.out
        if len(value) > self.max_bytes:
            out.invalid.append((position, _too_large(value, self.max_bytes)))
            return
        try:
            body = unwrap(value, headers, self.envelope)
        except EnvelopeError as exc:
            out.invalid.append((position, _unreadable(exc)))
            return
        out.kinds[body.kind] += 1
        result = _decode_body(body.value, self.strict_keys)
        if isinstance(result, Invalid):
            out.invalid.append((position, result))
        elif body.skip:
            out.skipped += 1
        else:
            out.events.append(result)
            out.positions.append(position)


def _unreadable(exc: EnvelopeError) -> Invalid:
    if isinstance(exc, UnknownMagicByte):
        return Invalid(Reason.UNKNOWN_MAGIC_BYTE, str(exc))
    if isinstance(exc, NotUtf8):
        return Invalid(Reason.NOT_UTF8, str(exc))
    return Invalid(Reason.BAD_ENVELOPE, str(exc))


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique(pairs: list[tuple[str, object]]) -> None:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Repeated(next(k for i, k in enumerate(keys) if k in keys[:i]))


def _repeated_key(value: bytes) -> Invalid | None:
    """An exact second parse that sees every key: msgspec has no duplicate-key check.

    The stdlib parser hands each object's (key, value) pairs to `_unique` in order;
    it costs several microseconds per event, hence opt-in.
    """
    try:
        json.loads(value, object_pairs_hook=_unique)
    except _Repeated as exc:
        return Invalid(Reason.DUPLICATE_KEY, f"key {exc.key!r} appears twice in one object")
    except RecursionError:
        return Invalid(Reason.TOO_DEEP, "JSON nested too deeply")
    return None


def _not_utf8(value: bytes) -> Invalid | None:
    """Every byte checked, also those of fields msgspec skips without reading (RFC 8259
    §8.1: JSON between systems is UTF-8). Called only for non-ASCII values: ASCII is UTF-8."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(Reason.NOT_UTF8, str(exc))
    return None


def _too_large(value: bytes, max_bytes: int) -> Invalid:
    return Invalid(Reason.TOO_LARGE, f"value is {len(value)} bytes, limit is {max_bytes}")


def _invalid(exc: Exception) -> Invalid:
    # ValidationError subclasses DecodeError, so it must be checked first.
    if isinstance(exc, msgspec.ValidationError):
        return Invalid(classify(str(exc)), str(exc))
    if isinstance(exc, UnicodeDecodeError):
        # msgspec lets this escape for invalid UTF-8 inside a JSON string.
        return Invalid(Reason.NOT_UTF8, str(exc))
    if isinstance(exc, RecursionError):
        # Deep nesting (even inside an ignored unknown field) exhausts the C stack
        # guard; a message must never be able to crash the worker.
        return Invalid(Reason.TOO_DEEP, "JSON nested too deeply")
    return Invalid(Reason.MALFORMED_JSON, str(exc))


def classify(message: str) -> Reason:
    """Map a msgspec validation message to a reason (messages are stable msgspec API text)."""
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD
    if message.startswith("Expected `object`") and " - at `$" not in message:
        return Reason.NOT_AN_OBJECT
    if "RFC3339" in message or "timezone" in message:
        return Reason.INVALID_TIMESTAMP
    if "out of range" in message or ">=" in message or "<=" in message:
        return Reason.OUT_OF_RANGE
    if ", got `" in message:
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE
