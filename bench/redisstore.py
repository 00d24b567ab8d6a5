"""The Redis behind the "project + store" contender (`--dedup-store`).

Debian's redis-server, started by the benchmark itself on a free loopback port with its
own config and data dir: tests/redisserver.py's RedisServer, as bench/brokers.py runs the
tests' Kafka. No persistence (`save ""`, no AOF), like the in-memory Tansu: this measures
the claim round trip and the script, not a disk. It is emptied before each round of the
store contender, so every round claims into an empty Redis, and what a round left behind
is read back for the page.
"""

import shutil
import subprocess
from pathlib import Path

from redis import Redis

from tests.redisserver import RedisServer


def available() -> bool:
    return shutil.which("redis-server") is not None


def describe() -> str:
    out = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "?")
    return f"Redis {version} (redis-server, no persistence, same machine)"


class RedisStore(RedisServer):
    """redis-server on 127.0.0.1 for the length of the run; a context manager."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)

    def flush(self) -> None:
        """Empty it: the next round's claims all start free."""
        with Redis(port=self.port) as client:
            client.flushall()

    def held(self) -> dict[str, float]:
        """What the claims of the last round take in Redis: claims (fields of the span
        hashes, consumer/redisclaims.py) and used memory."""
        with Redis(port=self.port) as client:
            memory = client.info("memory")
            claims = sum(client.hlen(key) for key in client.scan_iter(count=1000))
            return {"claims": float(claims), "used_mb": memory["used_memory"] / 2**20}
