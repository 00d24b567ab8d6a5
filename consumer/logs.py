"""One JSON object per log line, and a rate limiter for logs a bad producer could flood.

Standard-library logging with a JSON formatter: fields passed as `extra=` land
as top-level keys, so `logger.info("assigned", extra={"partitions": [...]})`
becomes one greppable line. No secret is ever passed in.
"""

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed connection attempt at ERROR; our own lines say it once.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


class RateLimit:
    """Allow `per_interval` events per `interval` seconds; counts what it suppressed."""

    def __init__(self, per_interval: int = 10, interval: float = 10.0) -> None:
        self.per_interval = per_interval
        self.interval = interval
        self._window_start = 0.0
        self._used = 0
        self.suppressed = 0

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._window_start >= self.interval:
            self._window_start, self._used = now, 0
        if self._used < self.per_interval:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n
