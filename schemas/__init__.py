"""msgspec Structs mirroring the session-created event (see ../shared/seed)."""

from schemas.session import (
    CreateSessionBilling,
    CreateSessionResponseBody,
    CreateSessionSessionsUsage,
)

__all__ = ["CreateSessionBilling", "CreateSessionResponseBody", "CreateSessionSessionsUsage"]
