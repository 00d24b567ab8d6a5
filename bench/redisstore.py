"""The Redis behind the "project + store" contender (`--dedup-store`).

Debian's redis-server, started by the benchmark itself on a free loopback port with its
own config and data dir, as tests/redisserver.py does for the tests (not imported: the
benchmark does not depend on the test suite). No persistence (`save ""`, no AOF), like the
in-memory Tansu: this measures the claim round trip and the script, not a disk. It is
emptied before each round of the store contender, so every round claims into an empty
Redis, and what a round left behind is read back for the page.
"""

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from redis import Redis

from consumer.broker import free_port

READY = b"Ready to accept connections"
"""What redis-server logs once it listens."""


def available() -> bool:
    return shutil.which("redis-server") is not None


def describe() -> str:
    out = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "?")
    return f"Redis {version} (redis-server, no persistence, same machine)"


class RedisStore:
    """redis-server on 127.0.0.1 for the length of the run; a context manager."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = workdir / "redis.log"
        self._config = workdir / "redis.conf"
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        self._config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {data}",
                    'save ""',
                    "appendonly no",
                    "daemonize no",
                    'logfile ""',
                ]
            )
            + "\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def __enter__(self) -> "RedisStore":
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["redis-server", str(self._config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._tail()}")
            if READY in self._log.read_bytes():
                return self
            time.sleep(0.02)
        self._stop()
        raise RuntimeError(f"redis-server not ready in 15 s: {self._tail()}")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

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

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]
