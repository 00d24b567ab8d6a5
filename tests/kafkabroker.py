"""Apache Kafka itself for the tests: one KRaft JVM (broker and controller) from the pinned jars.

`make kafka-jars` resolves the jars with Maven (tests/kafka/pom.xml) into a cache outside the
repository; `KafkaBroker` formats storage with a random cluster id and SCRAM users, writes
server.properties with one listener per security setting on free loopback ports, starts the
JVM, waits until it answers, and stops it by its pid. It can stop and start again on the same
data and ports (the restart test), and deletes its data at the end.
"""

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from consumer.broker import free_ports
from tests.pki import Pki

POM = Path(__file__).parent / "kafka" / "pom.xml"


def _pinned_version() -> str:
    """The one pin is the pom's; the Makefile reads it the same way."""
    found = re.search(r"<kafka.version>(.+)</kafka.version>", POM.read_text())
    if found is None:
        raise RuntimeError(f"no <kafka.version> in {POM}")
    return found[1]


KAFKA_VERSION = _pinned_version()
STARTED = b"Kafka Server started"
"""What KafkaRaftServer logs once every listener accepts clients."""

PASSWORD = "Kafka-Pa55word-never-logged"
USER = "alice"
SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
LOG4J = """\
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/>
  </Console></Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.log" level="WARN"/><Logger name="org.apache.kafka.storage" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""


def jar_dir() -> Path:
    """Where `make kafka-jars` puts the jars (the Makefile computes the same path)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "session-metrics" / f"kafka-{KAFKA_VERSION}"


@dataclass(frozen=True)
class Ports:
    controller: int
    plaintext: int
    ssl: int
    mtls: int
    sasl: int
    sasl_ssl: int


def _properties(ports: Ports, data: Path, pki: Pki) -> str:
    jaas = "org.apache.kafka.common.security"
    listeners = {
        "PLAINTEXT": ports.plaintext,
        "SSL": ports.ssl,
        "MTLS": ports.mtls,
        "SASL_PLAINTEXT": ports.sasl,
        "SASL_SSL": ports.sasl_ssl,
    }
    client = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ports.controller}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listeners=CONTROLLER://127.0.0.1:{ports.controller},{client}",
            f"advertised.listeners={client}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,"
            "MTLS:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
            f"log.dirs={data}",
            # One node: every internal topic has one replica, and nothing waits for others.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # TLS from the test's own CA, as PEM files (no keystore to build).
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki.cert.with_suffix('.keystore.pem')}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki.ca}",
            "listener.name.mtls.ssl.client.auth=required",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            # The same logins on both SASL listeners: SASL_SSL (TLS with the server
            # certificate above, then SASL) is what production runs.
            *(
                line
                for listener in ("sasl_plaintext", "sasl_ssl")
                for line in (
                    f"listener.name.{listener}.plain.sasl.jaas.config="
                    f'{jaas}.plain.PlainLoginModule required user_{USER}="{PASSWORD}";',
                    *(
                        f"listener.name.{listener}.{m.lower()}.sasl.jaas.config="
                        f"{jaas}.scram.ScramLoginModule required;"
                        for m in SCRAM
                    ),
                )
            ),
            "",
        ]
    )


class KafkaBroker:
    """Apache Kafka on free loopback ports, one listener per security protocol; a context
    manager. `bootstrap` is PLAINTEXT; `ssl_bootstrap`, `mtls_bootstrap` (client
    certificate required), `sasl_bootstrap` (PLAIN and both SCRAMs for USER/PASSWORD) and
    `sasl_ssl_bootstrap` (the same logins over TLS)."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.workdir = workdir
        self.pki = pki
        self.ports = Ports(*free_ports(6))
        self.data = workdir / "data"
        self.log_path = workdir / "kafka.log"
        self.config = workdir / "server.properties"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: list[float] = []
        """How long each start took, until it answered (the report quotes them)."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.plaintext}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.ssl}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.mtls}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.sasl}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.sasl_ssl}"

    def java(self, main: str, *args: str, heap: str = "512m") -> list[str]:
        jars = jar_dir()
        if not (jars / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            raise RuntimeError(f"no Kafka jars in {jars}: run `make kafka-jars`")
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("no `java` on PATH: the Kafka tests need a JDK 17")
        log4j = self.workdir / "log4j2.xml"
        return [java, f"-Xmx{heap}", f"-Dlog4j2.configurationFile={log4j}",
                "-cp", f"{jars}/*", main, *args]  # fmt: skip

    def format(self) -> None:
        """Storage with a random cluster id and the SCRAM users (done once per data dir)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.xml").write_text(LOG4J)
        keystore = self.pki.cert.with_suffix(".keystore.pem")
        keystore.write_text(self.pki.key.read_text() + self.pki.cert.read_text())
        self.config.write_text(_properties(self.ports, self.data, self.pki))
        users = [f"{m}=[name={USER},password={PASSWORD}]" for m in SCRAM]
        command = self.java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
            "--config", str(self.config), *(a for u in users for a in ("--add-scram", u)),
            heap="256m",
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{done.stdout!r}\n{done.stderr!r}")

    def start(self, timeout: float = 90.0) -> None:
        started = time.monotonic()
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.java("kafka.Kafka", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while not self._answers(before):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Kafka exited with code {self._proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"Kafka did not start within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        self.start_seconds.append(time.monotonic() - started)

    def _answers(self, log_offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            if STARTED not in log.read():
                return False
        try:
            socket.create_connection(("127.0.0.1", self.ports.plaintext), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a controlled shutdown that flushes the logs), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown; the next start recovers the logs it finds."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> "KafkaBroker":
        self.format()
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def _cluster_id() -> str:
    """A random cluster id as kafka-storage random-uuid makes it: 16 bytes, URL-safe base64.
    One in 64 starts with '-', hence `--cluster-id=` as one argument."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
