"""Kafka over TLS for real: Tansu behind Debian's stunnel4, with a CA made for the test.

Tansu 0.6's own `--cert` switch gives no working TLS listener (it refuses
`--key`, and with a combined PEM it still reads plaintext: no ServerHello), so
a real TLS terminator sits in front of it and the broker advertises the
terminator's port: every connection of every client, after bootstrap too, is TLS.
"""

import argparse
import asyncio
import json
import math
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.broker import EmbeddedBroker, free_port
from consumer.produce import produce
from consumer.security import client_kwargs
from consumer.settings import KafkaSettings, kafka_settings
from tests.conftest import WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.broker

STUNNEL_CONFIG = """\
foreground = yes
pid =
debug = notice
[kafka]
accept = 127.0.0.1:{accept}
connect = 127.0.0.1:{connect}
cert = {cert}
key = {key}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_bootstrap(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of stunnel, terminating TLS in front of a broker that advertises it."""
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    assert binary, "stunnel4 not on PATH: run the tests with `make test`"
    workdir = tmp_path_factory.mktemp("stunnel")
    tls_port = free_port()
    with EmbeddedBroker(advertised_port=tls_port, log_file=workdir / "tansu.log") as broker:
        config = workdir / "stunnel.conf"
        config.write_text(
            STUNNEL_CONFIG.format(accept=tls_port, connect=broker.port, cert=pki.cert, key=pki.key)
        )
        with (workdir / "stunnel.log").open("wb") as log:
            proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_for_port(tls_port, proc)
                yield f"127.0.0.1:{tls_port}"
            finally:
                proc.terminate()
                proc.wait(10)


def _wait_for_port(port: int, proc: "subprocess.Popen[bytes]", within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"stunnel exited with code {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"stunnel did not listen on port {port} within {within}s")


def tls_kafka(bootstrap: str, ca: Path) -> KafkaSettings:
    args = argparse.Namespace(
        bootstrap_servers=bootstrap, security_protocol="SSL", ssl_cafile=str(ca)
    )
    return kafka_settings(args, environ={})


async def test_worker_consumes_through_tls_and_counts_every_event_exactly(
    tls_bootstrap: str, pki: Pki, start_worker: WorkerFactory
) -> None:
    kafka = client_kwargs(tls_kafka(tls_bootstrap, pki.ca))
    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(**kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(linger_ms=2, **kafka)
    await producer.start()
    try:
        await produce(producer, topic, count=1000, rate=None, seed=88)
    finally:
        await producer.stop()

    run = await start_worker(
        settings_for(tls_bootstrap, topic, security_protocol="SSL", ssl_cafile=pki.ca)
    )
    await eventually(lambda: run.counted() >= 1000)

    assert run.counted() == 1000
    want = expected_totals(corpus(seed=88, count=1000))
    await run.scrape()
    got = series_values(run.worker.metrics.registry)
    assert set(got["llm_sessions_total"]) == set(want)
    for key, totals in want.items():
        assert got["llm_sessions_total"][key] == totals.sessions
        assert math.isclose(got["llm_session_cost_total"][key], totals.cost, rel_tol=1e-9)
    assert await run.is_ready()


async def test_untrusted_broker_certificate_exits_1_with_one_clear_line(
    tls_bootstrap: str, pki: Pki
) -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "run", "--bootstrap-servers", tls_bootstrap),
        *("--topic", "sessions", "--metrics-host", "127.0.0.1", "--metrics-port", "0"),
        *("--security-protocol", "SSL", "--ssl-cafile", str(pki.other_ca)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 1
    *logs, last = stderr.decode().strip().splitlines()
    assert last == (
        f"session-metrics: Kafka error: BrokerRefused: {tls_bootstrap} failed TLS "
        "verification: unable to get local issuer certificate "
        "(check --ssl-cafile / SESSION_METRICS_SSL_CAFILE and --ssl-check-hostname)"
    )
    assert all(json.loads(line) for line in logs)  # everything before it is a JSON log line
    assert time.monotonic() - started < 15  # no retry loop: one probe, then out
