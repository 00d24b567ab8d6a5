"""consumer/logs.py: one JSON object per log line; a rate limit for floods."""

import asyncio
import io
import json
import logging
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.broker import free_port
from consumer.logs import JsonFormatter, RateLimit


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_each_record_is_one_json_object_per_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    logger.info("assigned %d partitions", 3)
    logger.warning("line one\nline two")

    entries = lines(stream)
    assert len(entries) == 2
    assert entries[0]["msg"] == "assigned 3 partitions"
    assert entries[0]["level"] == "info"
    assert entries[0]["logger"] == logger.name
    assert isinstance(entries[0]["ts"], float)
    assert entries[1]["msg"] == "line one\nline two"
    assert entries[1]["level"] == "warning"


def test_extra_fields_are_top_level_keys(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged

    logger.info("assigned", extra={"partitions": [0, 1], "topic": "sessions", "group": "g"})

    (entry,) = lines(stream)
    assert entry["partitions"] == [0, 1]
    assert entry["topic"] == "sessions"
    assert entry["group"] == "g"
    # Nothing but our own keys and the extras: no LogRecord internals.
    assert set(entry) == {"ts", "level", "logger", "msg", "partitions", "topic", "group"}


def test_values_json_cannot_encode_are_written_as_strings(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    logger.info("file", extra={"path": Path("/etc/ca.pem"), "user": "é"})

    (entry,) = lines(stream)
    assert entry["path"] == "/etc/ca.pem"
    assert entry["user"] == "é"


def test_exception_is_included_on_the_same_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("commit failed")

    (entry,) = lines(stream)
    assert entry["level"] == "error"
    assert entry["msg"] == "commit failed"
    assert "Traceback" in entry["exc"]
    assert "ValueError: boom" in entry["exc"]


def test_rate_limit_allows_n_per_interval_then_suppresses() -> None:
    limit = RateLimit(per_interval=3, interval=10.0)

    allowed = [limit.allow(now=1000.0 + i) for i in range(5)]

    assert allowed == [True, True, True, False, False]
    assert limit.suppressed == 2


def test_rate_limit_opens_again_after_the_interval() -> None:
    limit = RateLimit(per_interval=2, interval=10.0)
    for _ in range(4):
        limit.allow(now=1000.0)

    assert limit.allow(now=1009.999) is False
    assert limit.allow(now=1010.0) is True
    assert limit.allow(now=1010.5) is True
    assert limit.allow(now=1011.0) is False
    assert limit.suppressed == 4


def test_take_suppressed_returns_the_count_and_resets_it() -> None:
    limit = RateLimit(per_interval=1, interval=60.0)
    for _ in range(4):
        limit.allow(now=500.0)

    assert limit.take_suppressed() == 3
    assert limit.take_suppressed() == 0
    assert limit.suppressed == 0


async def test_a_worker_stopped_before_it_reached_kafka_still_logs_consumer_stopped() -> None:
    # Nothing listens on a fresh free port: the worker keeps retrying its first connection.
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "run", "--topic", "sessions"),
        *("--bootstrap-servers", f"127.0.0.1:{free_port()}"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(free_port())),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"cannot reach Kafka, retrying" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()

    assert proc.returncode == 0
    lines = rest.decode().splitlines()
    assert lines, "nothing logged after SIGTERM"
    last = json.loads(lines[-1])
    assert last["msg"] == "consumer stopped"
    assert last["counted"] == 0
