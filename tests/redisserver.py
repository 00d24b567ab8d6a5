"""A real Redis (Debian's redis-server 7) for the claim-store tests.

One server per `RedisServer`, on a free loopback port, with its own config and data dir
under `workdir`. It can stop (SIGTERM: Redis fsyncs its AOF on the way out), die (SIGKILL),
freeze (SIGSTOP: it accepts connections and never answers, the hard case for timeouts),
and start again on the same port with its data or with an emptied data dir.
"""

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from consumer.broker import free_port
from tests.pki import Pki

READY = b"Ready to accept connections"
"""What redis-server logs once it has loaded its data and listens."""


class RedisServer:
    """redis-server on 127.0.0.1; a context manager.

    `password`: `requirepass` (the default user's password). `pki`: serve TLS only, with
    `pki.cert`, and no client certificates asked. `aof`: append-only file, fsynced on every
    write, so a claim acknowledged to the client survives SIGKILL."""

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        pki: Pki | None = None,
        aof: bool = False,
    ) -> None:
        binary = shutil.which("redis-server")
        # `make test` installs Debian's redis-server; CI must not silently skip these tests.
        assert binary, "redis-server not on PATH: run the tests with `make test`"
        self._binary = binary
        self.port = free_port()
        self.tls = pki is not None
        self._workdir = workdir
        self.data = workdir / "data"
        self._log = workdir / "redis.log"
        self._config = workdir / "redis.conf"
        self._config.write_text(_config(self.port, self.data, password, pki, aof))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.data.mkdir(exist_ok=True)
        seen = self._log.stat().st_size if self._log.exists() else 0
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, str(self._config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self._tail()}")
            # Only this start's lines: a restart must not take the last run's READY.
            with self._log.open("rb") as log:
                log.seek(seen)
                if READY in log.read():
                    return
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"redis-server not ready in {timeout} s: {self._tail()}")

    def stop(self) -> None:
        """SIGTERM: a clean shutdown, as a pod's; the AOF is fsynced before exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as under the OOM killer."""
        self._end(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, *, keep_data: bool = True) -> None:
        """Start again on the same port: with the data dir as it was, or emptied (a new
        pod without a volume)."""
        assert self._proc is None, "stop() or kill() first"
        if not keep_data:
            shutil.rmtree(self.data)
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self._proc.send_signal(sig)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()  # nothing left to keep: the test is over


def _config(port: int, data: Path, password: str | None, pki: Pki | None, aof: bool) -> str:
    lines = [
        "bind 127.0.0.1",
        f"dir {data}",
        'save ""',  # no RDB snapshots: what survives a restart is the AOF's doing alone
        f"appendonly {'yes' if aof else 'no'}",
        "appendfsync always",
        "daemonize no",
        'logfile ""',
    ]
    if pki is None:
        lines.append(f"port {port}")
    else:
        lines += [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {pki.cert}",
            f"tls-key-file {pki.key}",
            "tls-auth-clients no",
        ]
    if password is not None:
        lines.append(f"requirepass {password}")
    return "\n".join(lines) + "\n"
