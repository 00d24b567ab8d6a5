"""Bytes of one Kafka record value to a session event, or the reason it is not one.

Pure: knows nothing of Kafka, metrics or logging. The reasons are a small fixed
set because they become label values of `session_consumer_invalid_total`.
"""

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import msgspec

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


class Invalid(msgspec.Struct, frozen=True):
    reason: Reason
    detail: str
    """msgspec's message, e.g. "Expected `float` >= 0.0 - at `$.billing.totalCost`"."""


_DECODER: Final = msgspec.json.Decoder(CreateSessionResponseBody)
_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


@dataclass(slots=True)
class Decoded:
    """One batch of values, decoded."""

    events: list[CreateSessionResponseBody]
    invalid: list[tuple[int, Invalid]]
    """(position in the input, why) of each value that is not an event."""
    tombstones: int
    """None values: Kafka's deletion markers, not events and not invalid."""


def decode(
    value: bytes, max_bytes: int, *, strict_keys: bool = False
) -> CreateSessionResponseBody | Invalid:
    if len(value) > max_bytes:
        return _too_large(value, max_bytes)
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
    values: list[bytes | None], max_bytes: int, *, strict_keys: bool = False
) -> Decoded:
    """`decode` over a batch, in one tight loop: this is the per-record hot path."""
    if strict_keys:
        return _decode_each(values, max_bytes)
    events: list[CreateSessionResponseBody] = []
    invalid: list[tuple[int, Invalid]] = []
    tombstones = 0
    append, decode_one = events.append, _DECODER.decode
    for position, value in enumerate(values):
        if value is None:
            tombstones += 1
        elif len(value) > max_bytes:
            invalid.append((position, _too_large(value, max_bytes)))
        elif not value.isascii() and (bad := _not_utf8(value)) is not None:
            invalid.append((position, bad))
        else:
            try:
                append(decode_one(value))
            except _ERRORS as exc:
                invalid.append((position, _invalid(exc)))
    return Decoded(events, invalid, tombstones)


def _decode_each(values: list[bytes | None], max_bytes: int) -> Decoded:
    events: list[CreateSessionResponseBody] = []
    invalid: list[tuple[int, Invalid]] = []
    tombstones = 0
    for position, value in enumerate(values):
        if value is None:
            tombstones += 1
            continue
        result = decode(value, max_bytes, strict_keys=True)
        if isinstance(result, Invalid):
            invalid.append((position, result))
        else:
            events.append(result)
    return Decoded(events, invalid, tombstones)


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
