"""The command line as a user runs it: real processes, real signals, real broker."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.broker import EmbeddedBroker, free_port
from consumer.produce import produce
from tests.conftest import TopicFactory

CLI = [sys.executable, "-m", "consumer"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--metrics-port", "99999"], {}, "--metrics-port"),
        (["--duration-buckets", "5,1"], {}, "--duration-buckets"),
        ([], {"SESSION_METRICS_MAX_SERIES": "lots"}, "SESSION_METRICS_MAX_SERIES"),
        (["--security-protocol", "SASL_SSL"], {}, "--sasl-mechanism"),
        (["--ssl-cafile", "/nonexistent/ca.pem", "--security-protocol", "SSL"], {}, "--ssl-cafile"),
        (["--dlq-topic", "sessions"], {}, "--dlq-topic"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], names: str
) -> None:
    # Port 9 (discard) is never a broker: the error must come before any connection.
    started = time.monotonic()
    result = run_cli(
        "run", "--bootstrap-servers", "127.0.0.1:9", "--topic", "sessions", *args, env=env
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert time.monotonic() - started < 10


def test_missing_bootstrap_servers_is_a_config_error() -> None:
    result = run_cli("run", "--topic", "sessions")
    assert result.returncode == 2
    assert "--bootstrap-servers / SESSION_METRICS_BOOTSTRAP_SERVERS: required" in result.stderr


def test_sasl_password_is_not_echoed_in_errors() -> None:
    result = run_cli(
        "run",
        "--bootstrap-servers",
        "127.0.0.1:9",
        "--topic",
        "t",
        env={"SESSION_METRICS_SASL_PASSWORD": "hunter2-secret"},
    )
    assert result.returncode == 2
    assert "hunter2-secret" not in result.stderr


@pytest.mark.broker
async def test_sigterm_drains_commits_and_exits_0(
    broker: EmbeddedBroker, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=3)
    await produce(producer, topic, count=2000, rate=None, seed=41)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--bootstrap-servers",
        broker.bootstrap,
        "--topic",
        topic,
        "--group-id",
        f"sigterm-{topic}",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while 'session_consumer_messages_total{outcome="counted"} 2000.0' not in (
            await asyncio.to_thread(_scrape, port)
        ):
            assert time.monotonic() < deadline, "worker did not count the corpus"
            await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b'"consumer stopped"' in stderr

    reader = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=f"sigterm-{topic}", enable_auto_commit=False
    )
    await reader.start()
    try:
        committed = [await reader.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await reader.stop()
    assert sum(c or 0 for c in committed) == 2000


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


@pytest.mark.broker
def test_demo_runs_and_stops_by_itself() -> None:
    port = free_port()
    result = subprocess.run(
        [*CLI, "demo", "--duration", "12", "--metrics-port", str(port), "--rate", "500"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"http://127.0.0.1:{port}/metrics" in result.stdout
    summaries = [line for line in result.stdout.splitlines() if "events/s" in line]
    assert summaries
    assert int(summaries[-1].split("|")[1].split()[0]) > 0  # sessions counted
    assert "stopped cleanly" in result.stdout


@pytest.mark.broker
async def test_demo_stops_cleanly_on_ctrl_c_to_its_process_group() -> None:
    # A terminal's Ctrl-C signals the whole process group, broker included.
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "demo",
        "--metrics-port",
        str(port),
        "--rate",
        "500",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if "events/s" in line and int(line.split("|")[1].split()[0]) > 0:
                break
            assert time.monotonic() < deadline, "demo never counted a session"
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"stopped cleanly" in stdout
    assert b"Traceback" not in stderr


@pytest.mark.broker
async def test_produce_command_sends_the_requested_count(
    broker: EmbeddedBroker, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=2)
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "produce",
        "--bootstrap-servers",
        broker.bootstrap,
        "--topic",
        topic,
        "--count",
        "700",
        "--seed",
        "3",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b'"events": 700' in stderr

    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 700 and time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=500)
            seen += sum(len(records) for records in batch.values())
    finally:
        await reader.stop()
    assert seen == 700
