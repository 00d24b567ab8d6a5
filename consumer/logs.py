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
    handler.addFilter(RepeatFilter(prefix="aiokafka"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
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


class RepeatFilter(logging.Filter):
    """Let each distinct message template of loggers under `prefix` through a few times
    per interval: during a broker outage aiokafka logs every failed attempt, ten a second.

    The next line that passes carries `suppressed`, the count dropped meanwhile.
    """

    def __init__(self, prefix: str, per_interval: int = 3, interval: float = 30.0) -> None:
        super().__init__()
        self._prefix = prefix
        self._limits: dict[str, RateLimit] = {}
        self._per_interval, self._interval = per_interval, interval

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = f"{record.name}:{record.msg}"
        limit = self._limits.get(key)
        if limit is None:
            if len(self._limits) > 1000:  # templates are few; never grow without bound
                self._limits.clear()
            limit = self._limits[key] = RateLimit(self._per_interval, self._interval)
        if not limit.allow():
            return False
        suppressed = limit.take_suppressed()
        if suppressed:
            record.suppressed = suppressed
        return True
