"""The body of a "session created" event, field for field as the orq.ai API documents it.

camelCase on the wire, snake_case in Python. Required and optional fields are
exactly the documented ones; unknown fields are ignored so that producers can
add fields without breaking us.
"""

import sys
from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

# Every number here feeds a Prometheus counter or histogram, which cannot go
# down or hold NaN. JSON itself cannot spell NaN/Infinity and msgspec rejects
# numbers that overflow a float, but the upper bound keeps that true for any
# other encoding these Structs might be decoded from.
Amount = Annotated[float, Meta(ge=0, le=sys.float_info.max)]

# Ids become label values or dedup keys: an empty one is meaningless and a
# very long one would bloat every series it lands on.
Id = Annotated[str, Meta(min_length=1, max_length=256)]

# projectId is optional; an empty string is read the same as an absent one.
OptionalId = Annotated[str, Meta(max_length=256)]

# JavaScript Dates serialised as RFC 3339; a time without a zone is ambiguous.
Timestamp = Annotated[datetime, Meta(tz=True)]


class CreateSessionBilling(Struct, kw_only=True, frozen=True, rename="camel"):
    input_cost: Amount
    output_cost: Amount
    total_cost: Amount


class CreateSessionSessionsUsage(Struct, kw_only=True, frozen=True, rename="camel"):
    prompt_tokens: Amount
    completion_tokens: Amount
    total_tokens: Amount


class CreateSessionResponseBody(Struct, kw_only=True, frozen=True, rename="camel"):
    id: Id
    external_id: str
    duration: Amount
    """Duration of the session in milliseconds."""
    contact_ids: list[str]
    billing: CreateSessionBilling
    usage: CreateSessionSessionsUsage
    traces_count: Amount
    tags: list[str]
    workspace_id: Id
    project_id: OptionalId | None = None
    started_at: Timestamp | None = None
    updated_at: Timestamp | None = None
