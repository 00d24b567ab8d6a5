"""Bytes of one Kafka record value to a session event, or the reason it is not one.

Pure: knows nothing of Kafka, metrics or logging. The reasons are a small fixed
set because they become label values of `session_consumer_invalid_total`.
"""

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


def decode(value: bytes, max_bytes: int) -> CreateSessionResponseBody | Invalid:
    if len(value) > max_bytes:
        return _too_large(value, max_bytes)
    try:
        return _DECODER.decode(value)
    except _ERRORS as exc:
        return _invalid(exc)


def decode_many(values: list[bytes | None], max_bytes: int) -> Decoded:
    """`decode` over a batch, in one tight loop: this is the per-record hot path."""
    events: list[CreateSessionResponseBody] = []
    invalid: list[tuple[int, Invalid]] = []
    tombstones = 0
    append, decode_one = events.append, _DECODER.decode
    for position, value in enumerate(values):
        if value is None:
            tombstones += 1
        elif len(value) > max_bytes:
            invalid.append((position, _too_large(value, max_bytes)))
        else:
            try:
                append(decode_one(value))
            except _ERRORS as exc:
                invalid.append((position, _invalid(exc)))
    return Decoded(events, invalid, tombstones)


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
