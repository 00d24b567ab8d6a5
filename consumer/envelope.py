"""The envelope a record's value came in, and the JSON body inside it.

Pure: a value and its Kafka headers in, the body (or why there is none) out.
Pipelines wrap the same body in a Confluent Schema Registry frame (magic byte 0,
a 4-byte big-endian schema id) or in a CloudEvent (Kafka protocol binding:
structured mode puts the whole event in the value, binary mode puts its
attributes in `ce_*` headers). No schema registry is needed: the JSON is read
against our own schema, the schema id is only stripped.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

import msgspec

from consumer.settings import Settings

Headers = Sequence[tuple[str, bytes]]


class Format(StrEnum):
    """--value-format: what the values are; `auto` decides per record."""

    AUTO = "auto"
    JSON = "json"
    CONFLUENT_JSON = "confluent-json"
    CLOUDEVENTS = "cloudevents"


class Kind(StrEnum):
    """What one record turned out to be: the label values of the format counter."""

    JSON = "json"
    CONFLUENT = "confluent"
    CLOUDEVENTS_STRUCTURED = "cloudevents_structured"
    CLOUDEVENTS_BINARY = "cloudevents_binary"


class EnvelopeError(Exception):
    """The value is not in the envelope it claims (or must have); str() is the detail."""


class UnknownMagicByte(EnvelopeError):
    """A binary frame whose first byte is not Confluent's 0."""


class BadEnvelope(EnvelopeError):
    """A frame too short, a CloudEvent without data, or not the envelope required."""


class NotUtf8(EnvelopeError):
    """Invalid UTF-8 in a structured CloudEvent, outside what the body decoder reads."""


class _Structured(msgspec.Struct):
    """The CloudEvents JSON format, as far as we read it (other attributes are skipped)."""

    specversion: str
    type: str
    data: msgspec.Raw = msgspec.Raw(b"")
    """The event's JSON as it is in the value (empty: absent); read by the body decoder."""
    data_base64: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """How to unwrap values: `format`, and the CloudEvent types counted (empty: all)."""

    format: Format = Format.AUTO
    cloudevents_types: frozenset[str] = frozenset()


def envelope_of(settings: Settings) -> Envelope:
    return Envelope(Format(settings.value_format), settings.cloudevents_type or frozenset())


class Body(NamedTuple):
    """A tuple: one is made per enveloped record, and a frozen dataclass costs ~4x more."""

    kind: Kind
    value: bytes
    skip: bool = False
    """A CloudEvent whose type is not in --cloudevents-type: read, not counted."""


FRAME: Final = 5
"""Magic byte (0) and 4-byte schema id."""
_MAGIC: Final = b"\x00"
# Enum members as module constants: attribute access on an Enum class costs more than
# the rest of a Confluent unwrap.
_JSON, _CONFLUENT_JSON, _CLOUDEVENTS = Format.JSON, Format.CONFLUENT_JSON, Format.CLOUDEVENTS
_KIND_JSON, _KIND_CONFLUENT = Kind.JSON, Kind.CONFLUENT
SCHEMA_ID_HEADER: Final = "__value_schema_id"
STRUCTURED: Final = "application/cloudevents+json"
_JSON_WHITESPACE: Final = frozenset(b" \t\n\r")
_STRUCTURED_DECODER: Final = msgspec.json.Decoder(_Structured)


def is_framed(value: bytes) -> bool:
    """A value starting with a control byte JSON cannot start with: a binary frame."""
    return bool(value) and value[0] < 0x20 and value[0] not in _JSON_WHITESPACE


def unwrap(value: bytes, headers: Headers, envelope: Envelope) -> Body:
    """The body of `value`; raises EnvelopeError when there is none to read."""
    fmt = envelope.format
    if fmt is _CONFLUENT_JSON:
        return _confluent(value, headers)
    if fmt is _JSON:
        return Body(_KIND_JSON, value)
    found = _cloudevent(value, headers, envelope) if headers else None
    if found is not None:
        return found
    if fmt is _CLOUDEVENTS:
        raise BadEnvelope(
            "not a CloudEvent: no ce_specversion header and content-type is not " + STRUCTURED
        )
    if is_framed(value) or _header(headers, SCHEMA_ID_HEADER) is not None:
        return _confluent(value, headers)
    return Body(_KIND_JSON, value)


def _confluent(value: bytes, headers: Headers) -> Body:
    if value[:1] == _MAGIC and len(value) >= FRAME:
        return Body(_KIND_CONFLUENT, value[FRAME:])
    if headers and _header(headers, SCHEMA_ID_HEADER) is not None and not is_framed(value):
        return Body(_KIND_CONFLUENT, value)  # newer clients: the id in a header, a bare body
    if not value or value[0] != 0:
        first = f"0x{value[0]:02x}" if value else "none (empty value)"
        raise UnknownMagicByte(f"magic byte is {first}, the Confluent wire format has 0x00")
    raise BadEnvelope(f"Confluent frame is {len(value)} bytes, shorter than its 5-byte prefix")


def _cloudevent(value: bytes, headers: Headers, envelope: Envelope) -> Body | None:
    content_type = _header(headers, "content-type")
    if content_type is not None and content_type.lower().startswith(STRUCTURED.encode()):
        return _structured(value, envelope)
    ce_type = _header(headers, "ce_type")
    if _header(headers, "ce_specversion") is None:
        return None
    event_type = ce_type.decode("utf-8", "replace") if ce_type is not None else ""
    return Body(Kind.CLOUDEVENTS_BINARY, value, _skipped(event_type, envelope))


def _structured(value: bytes, envelope: Envelope) -> Body:
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotUtf8(str(exc)) from None
    try:
        event = _STRUCTURED_DECODER.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadEnvelope(f"structured CloudEvent: {exc}") from None
    return Body(Kind.CLOUDEVENTS_STRUCTURED, _data(event), _skipped(event.type, envelope))


def _data(event: _Structured) -> bytes:
    if event.data:
        return bytes(event.data)
    if event.data_base64 is not None:
        try:
            return base64.b64decode(event.data_base64, validate=True)
        except binascii.Error as exc:
            raise BadEnvelope(f"structured CloudEvent: data_base64: {exc}") from None
    raise BadEnvelope("structured CloudEvent without data or data_base64")


def _skipped(event_type: str, envelope: Envelope) -> bool:
    return bool(envelope.cloudevents_types) and event_type not in envelope.cloudevents_types


def _header(headers: Headers, name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None
