"""The command line as a user runs it: real processes, real signals, real broker."""

import asyncio
import contextlib
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.broker import EmbeddedBroker, free_port
from consumer.produce import produce
from consumer.settings import DEMO_FLAGS, PRODUCE_FLAGS, Flag, all_options
from tests.conftest import TopicFactory

CLI = [sys.executable, "-m", "consumer"]
ROOT = Path(__file__).resolve().parent.parent


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


# --- bad values of every numeric parser: one line, naming the flag (and its twin) ----------------

RUN = ("run", "--bootstrap-servers", "127.0.0.1:9", "--topic", "sessions")
PRODUCE = ("produce", "--bootstrap-servers", "127.0.0.1:9", "--topic", "t")


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        pytest.param(
            [*RUN, "--metrics-port", "8000abc"],
            {},
            "--metrics-port / SESSION_METRICS_METRICS_PORT: must be an integer in 0..65535 "
            "(got '8000abc' from --metrics-port)",
            id="run-port-flag",
        ),
        pytest.param(
            list(RUN),
            {"SESSION_METRICS_METRICS_PORT": "8000abc"},
            "--metrics-port / SESSION_METRICS_METRICS_PORT: must be an integer in 0..65535 "
            "(got '8000abc' from SESSION_METRICS_METRICS_PORT)",
            id="run-port-env",
        ),
        pytest.param(
            [*RUN, "--max-series", "1e3"],
            {},
            "--max-series / SESSION_METRICS_MAX_SERIES: must be an integer in 1.. "
            "(got '1e3' from --max-series)",
            id="run-int",
        ),
        pytest.param(
            [*RUN, "--drain-timeout", "soon"],
            {},
            "--drain-timeout / SESSION_METRICS_DRAIN_TIMEOUT: must be a finite number > 0 "
            "(got 'soon' from --drain-timeout)",
            id="run-float",
        ),
        pytest.param(
            [*RUN, "--cost-buckets", "0.1,one"],
            {},
            "--cost-buckets / SESSION_METRICS_COST_BUCKETS: must be comma-separated numbers "
            "(got '0.1,one' from --cost-buckets)",
            id="run-buckets",
        ),
        pytest.param(
            [*PRODUCE, "--rate", "abc"],
            {},
            "--rate: must be a finite number >= 0 (got 'abc')",
            id="produce-rate",
        ),
        pytest.param(
            [*PRODUCE, "--count", "-1"],
            {},
            "--count: must be an integer in 0.. (got '-1')",
            id="produce-count",
        ),
        pytest.param(
            [*PRODUCE, "--seed", "x"],
            {},
            "--seed: must be an integer (got 'x')",
            id="produce-seed",
        ),
        pytest.param(
            [*PRODUCE, "--invalid-ratio", "1.5"],
            {},
            "--invalid-ratio: must be a number in 0..1 (got '1.5')",
            id="produce-ratio",
        ),
        pytest.param(
            ["demo", "--metrics-port", "8000abc"],
            {},
            "--metrics-port: must be an integer in 0..65535 (got '8000abc')",
            id="demo-port",
        ),
        pytest.param(
            ["demo", "--rate", "0"],
            {},
            "--rate: must be a finite number > 0 (got '0')",
            id="demo-rate",
        ),
        pytest.param(
            ["demo", "--duration", "nan"],
            {},
            "--duration: must be a finite number >= 0 (got 'nan')",
            id="demo-duration",
        ),
    ],
)
def test_bad_number_exits_2_with_one_line_naming_the_flag_and_the_value(
    args: list[str], env: dict[str, str], line: str
) -> None:
    result = run_cli(*args, env=env)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"session-metrics: configuration error: {line}")


def test_unknown_flag_is_one_line_pointing_at_help_not_a_usage_dump() -> None:
    result = run_cli("produce", "--topic", "t", "--speed", "5")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--speed" in result.stderr
    assert "--help)" in result.stderr
    assert "usage:" not in result.stderr


# --- --help answers what the docs do --------------------------------------------------------------


def help_lines(*command: str) -> dict[str, str]:
    """Each flag's help as one line: argparse puts it under the flag when the flag is long."""
    result = run_cli(*command, "--help", env={"COLUMNS": "1000"})
    assert result.returncode == 0, result.stderr
    lines: dict[str, str] = {}
    flag = ""
    for line in result.stdout.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0]
            lines[flag] = line
        elif flag and line.startswith("   "):
            lines[flag] += " " + line.strip()
        else:
            flag = ""
    return lines


def test_run_help_lists_the_allowed_values_of_every_choice_setting() -> None:
    lines = help_lines("run")
    choices = [o for o in all_options() if o.choices and o.flag_allowed]

    assert {o.flag for o in choices} >= {
        "--security-protocol",
        "--sasl-mechanism",
        "--auto-offset-reset",
        "--isolation-level",
        "--log-level",
    }
    for option in choices:
        assert "one of " + ", ".join(option.choices) in lines[option.flag]


def test_run_help_marks_the_required_settings_in_their_own_section() -> None:
    text = run_cli("run", "--help", env={"COLUMNS": "1000"}).stdout
    section = text.split("required options:\n", 1)[1]
    lines = help_lines("run")

    for flag in ("--bootstrap-servers", "--topic"):
        assert "(required)" in lines[flag]
        assert flag in section
    assert "(required)" not in lines["--group-id"]
    assert "--group-id" not in section


@pytest.mark.parametrize("command", ["run", "produce"])
def test_help_names_the_secrets_that_have_no_flag(command: str) -> None:
    text = " ".join(run_cli(command, "--help", env={"COLUMNS": "1000"}).stdout.split())
    secrets = [o.env for o in all_options() if not o.flag_allowed]
    if command == "produce":  # Kafka's only
        secrets = ["SESSION_METRICS_SASL_PASSWORD"]

    assert "SESSION_METRICS_SASL_PASSWORD" in secrets
    for env in secrets:
        assert env in text


@pytest.mark.parametrize(("command", "flags"), [("produce", PRODUCE_FLAGS), ("demo", DEMO_FLAGS)])
def test_produce_and_demo_help_show_every_default(command: str, flags: tuple[Flag, ...]) -> None:
    lines = help_lines(command)

    for flag in flags:
        assert f"(default: {flag.default})" in lines[flag.flag]


# --- `make demo` and Ctrl-C at a real terminal ----------------------------------------------------


@pytest.mark.broker
def test_ctrl_c_at_the_terminal_stops_make_demo_with_exit_0() -> None:
    # A pseudo-terminal whose Ctrl-C signals its foreground group, as a user's does;
    # `setsid --ctty` makes it make's controlling terminal. make must neither reinstall
    # (-o the stamp) nor use another venv than this interpreter's.
    setsid = shutil.which("setsid")
    assert setsid, "setsid (util-linux) is needed to give make a terminal"
    master, slave = pty.openpty()
    port = free_port()
    make = ["make", "--no-print-directory", "-o", ".venv/.installed", "demo"]
    variables = [f"BIN={Path(sys.executable).parent}", f"ARGS=--metrics-port {port} --rate 500"]
    proc = subprocess.Popen(
        [setsid, "--ctty", *make, *variables],
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    try:
        seen = read_terminal(master, until=lambda text: counted(text) > 0, within=60)
        # Ctrl-Z must not leave a stopped demo that nobody can resume: it keeps counting.
        os.write(master, b"\x1a")
        before = counted(seen)
        seen += read_terminal(master, until=lambda text: counted(text) > before, within=10)
        os.write(master, b"\x03")
        returncode = proc.wait(30)
        seen += read_terminal(master, until=lambda _: False, within=1)
    finally:
        if proc.poll() is None:  # a failed run: nothing it started may outlive the test
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    assert "stopped cleanly" in seen, seen[-2000:]
    assert "Interrupt" not in seen
    assert returncode == 0, seen[-2000:]


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def counted(text: str) -> int:
    found = re.findall(r"(\d+) sessions", text)
    return int(found[-1]) if found else 0


def read_terminal(fd: int, until: Callable[[str], bool], within: float) -> str:
    text, deadline = "", time.monotonic() + within
    while not until(text) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                text += os.read(fd, 4096).decode(errors="replace")
            except OSError:  # EIO: every process on the terminal has closed it
                break
    assert until(text) or within <= 1, f"no demo summary on the terminal:\n{text[-2000:]}"
    return text


# --- the metrics server's address ---------------------------------------------------------------


def test_port_in_use_exits_1_with_one_line_naming_the_setting_and_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli(*RUN, "--metrics-host", "127.0.0.1", "--metrics-port", str(port))

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"session-metrics: cannot listen on 127.0.0.1:{port}: address already in use "
        "(check --metrics-port / SESSION_METRICS_METRICS_PORT"
    )


@pytest.mark.broker
def test_demo_on_a_port_in_use_exits_1_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli("demo", "--metrics-port", str(port), "--duration", "5")

    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"session-metrics: cannot listen on 127.0.0.1:{port}: address already in use "
        '(check --metrics-port, e.g. make demo ARGS="--metrics-port 8001")\n'
    )


def test_run_serves_process_metrics_while_kafka_is_unreachable() -> None:
    # Port 9 refuses: the worker retries Kafka, and /metrics answers meanwhile.
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, *RUN, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while "process_resident_memory_bytes" not in (text := _scrape(port)):
            assert proc.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    } <= families
