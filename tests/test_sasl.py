"""SASL against real brokers: a refused mechanism or login exits 1 with one line; no secret leaks.

Tansu 0.6 cannot log anyone in here: without `--authentication` it offers no
SASL mechanism, and with it its users live in the in-memory store, which
`tansu user create` cannot reach without logging in first. So these tests run
the refusals for real (both kinds: mechanism and credentials), and
tests/test_settings.py checks that each mechanism and password source reaches
aiokafka's arguments. Successful logins are tested on Apache Kafka, in
tests/test_kafka_security.py.
"""

import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from consumer.broker import EmbeddedBroker, free_port
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.broker

PASSWORD = "Kafka-Pa55word-never-logged"
METRICS_PASSWORD = "Scrape-Pa55word-never-logged"
USER = "alice"


@pytest.fixture(scope="module")
def authenticating_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu-auth") / "tansu.log"
    with EmbeddedBroker(authentication=True, log_file=log) as b:
        yield b


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """`session-metrics run ...` to its end: exit code and stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "run", "--topic", "sessions"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", "0", "--log-level", "debug"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode().strip().splitlines()


def sasl_args(mechanism: str, source: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for SASL_PLAINTEXT, the password from env or from a file."""
    args = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", mechanism]
    args += ["--sasl-username", USER]
    if source == "env":
        return args, {"SESSION_METRICS_SASL_PASSWORD": PASSWORD}
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    return [*args, "--sasl-password-file", str(secret)], {}


def assert_one_error_line_after_json_logs(lines: list[str], expected: str) -> None:
    *logs, last = lines
    assert last == expected
    for line in logs:
        assert json.loads(line)["msg"], line
    assert not any(PASSWORD in line for line in lines)


MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
HINT = "(check --sasl-mechanism, --sasl-username and the password)"


@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_broker_refusing_the_mechanism_exits_1_with_one_line(
    broker: EmbeddedBroker, tmp_path: Path, mechanism: str, source: str
) -> None:
    args, env = sasl_args(mechanism, source, tmp_path)
    started = time.monotonic()

    code, lines = await run_cli("--bootstrap-servers", broker.bootstrap, *args, env=env)

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {broker.bootstrap} "
        f"does not accept SASL mechanism {mechanism} {HINT}",
    )
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_broker_refusing_the_credentials_exits_1_with_one_line(
    authenticating_broker: EmbeddedBroker, tmp_path: Path, mechanism: str
) -> None:
    args, env = sasl_args(mechanism, "file", tmp_path)

    code, lines = await run_cli(
        "--bootstrap-servers", authenticating_broker.bootstrap, *args, env=env
    )

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {authenticating_broker.bootstrap} "
        f"refused the SASL {mechanism} login of user 'alice' {HINT}",
    )


async def test_authenticating_broker_closing_on_plain_exits_1_with_one_line(
    authenticating_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    args, env = sasl_args("PLAIN", "env", tmp_path)

    code, lines = await run_cli(
        "--bootstrap-servers", authenticating_broker.bootstrap, *args, env=env
    )

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {authenticating_broker.bootstrap} "
        "closed the connection during SASL PLAIN login of user 'alice': mechanism or "
        f"credentials refused {HINT}",
    )


# --- secrets stay secret ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_no_secret_in_any_log_line_or_on_metrics(pki: Pki) -> None:
    """Both passwords configured, Kafka unreachable (the worker retries and logs), a scrape."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "run", "--topic", "sessions"),
        # Nothing listens there: the worker keeps retrying and logging while we look.
        *("--bootstrap-servers", f"127.0.0.1:{free_port()}", "--log-level", "debug"),
        *("--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "SCRAM-SHA-512"),
        *("--sasl-username", USER, "--metrics-auth-username", "prometheus"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
        *("--metrics-tls-certfile", str(pki.cert), "--metrics-tls-keyfile", str(pki.key)),
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "SESSION_METRICS_SASL_PASSWORD": PASSWORD,
            "SESSION_METRICS_METRICS_AUTH_PASSWORD": METRICS_PASSWORD,
        },
    )
    stderr = proc.stderr
    assert stderr is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await stderr.readline()
            assert line, "the worker exited early:\n" + "\n".join(lines)
            lines.append(line.decode().rstrip("\n"))

    try:
        await asyncio.wait_for(read_until("cannot reach Kafka, retrying"), 20)
        trust = ssl.create_default_context(cafile=pki.ca)
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/metrics"
            auth = {"Authorization": aiohttp.encode_basic_auth("prometheus", METRICS_PASSWORD)}
            async with http.get(url, ssl=trust, headers=auth) as response:
                assert response.status == 200
                body = await response.text()
            async with http.get(url, ssl=trust) as refused:
                assert refused.status == 401
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(stderr.read(), 20)
        lines += rest.decode().splitlines()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert "session_consumer_build_info" in body
    header = base64.b64encode(f"prometheus:{METRICS_PASSWORD}".encode()).decode()
    for secret in (PASSWORD, METRICS_PASSWORD, header):
        assert secret not in body
        assert not [line for line in lines if secret in line]
    assert any("metrics request refused" in line for line in lines)
    for line in lines:
        assert json.loads(line)["level"], line
