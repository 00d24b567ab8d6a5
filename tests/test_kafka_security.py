"""SASL and TLS on Apache Kafka's own listeners, alone and together (SASL_SSL): logins that
succeed, with exact totals, and refusals that exit 1 with one line. (Tansu can only refuse:
see tests/test_sasl.py.)"""

import math
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import create_topics
from consumer.produce import produce
from tests.conftest import WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals, series_values
from tests.faults import Worker, until
from tests.kafkabroker import PASSWORD, USER, KafkaBroker
from tests.pki import Pki
from tests.test_sasl import HINT, MECHANISMS, assert_one_error_line_after_json_logs, run_cli

pytestmark = [pytest.mark.broker, pytest.mark.kafka]

COUNT = 600


async def produced_topic(kafka: KafkaBroker, seed: int) -> str:
    """A new 3-partition topic holding COUNT events of `seed`, written over PLAINTEXT."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(kafka.bootstrap, {topic: 3})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=2)
    await producer.start()
    try:
        await produce(producer, topic, count=COUNT, rate=None, seed=seed)
    finally:
        await producer.stop()
    return topic


def credentials(
    mechanism: str,
    source: str,
    tmp_path: Path,
    *,
    user: str = USER,
    password: str = PASSWORD,
    protocol: str = "SASL_PLAINTEXT",
) -> tuple[list[str], dict[str, str]]:
    """SASL flags and environment, the password from the environment or a file."""
    args = ["--security-protocol", protocol, "--sasl-mechanism", mechanism]
    args += ["--sasl-username", user]
    if source == "env":
        return args, {"SESSION_METRICS_SASL_PASSWORD": password}
    secret = tmp_path / "kafka-password"
    secret.write_text(password + "\n")
    return [*args, "--sasl-password-file", str(secret)], {}


def assert_exact(series: dict[str, dict[tuple[str, str], float]], seed: int) -> None:
    want = expected_totals(corpus(seed=seed, count=COUNT))
    assert series["llm_sessions_total"] == {key: float(t.sessions) for key, t in want.items()}
    for key, t in want.items():
        assert math.isclose(series["llm_session_cost_total"][key], t.cost, rel_tol=1e-9)


# --- SASL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_login_on_kafka_counts_every_event_exactly(
    kafka: KafkaBroker, tmp_path: Path, mechanism: str, source: str
) -> None:
    seed = 100 + MECHANISMS.index(mechanism) * 2 + (source == "env")
    topic = await produced_topic(kafka, seed)
    args, env = credentials(mechanism, source, tmp_path)
    worker = Worker(
        tmp_path,
        "sasl",
        ["--bootstrap-servers", kafka.sasl_bootstrap, "--topic", topic, *args],
        env=env,
    )
    await assert_worker_counts_exactly(worker, seed)


async def assert_worker_counts_exactly(worker: Worker, seed: int) -> None:
    """Start `worker` on the topic of `seed`: exact totals on /metrics, then a clean stop,
    and the password in none of its logs."""
    await worker.start()
    try:
        await until(lambda: _counted_is(worker, COUNT), 60, f"{COUNT} counted over SASL")
        scrape = await worker.scrape()
        assert scrape is not None
        assert scrape.counted == COUNT
        assert_exact(
            {
                "llm_sessions_total": scrape.series("llm_sessions_total"),
                "llm_session_cost_total": scrape.series("llm_session_cost_total"),
            },
            seed,
        )
        worker.terminate()
        code, _ = await worker.wait()
        assert code == 0
    finally:
        if worker.alive:
            worker.kill()
    assert PASSWORD not in worker.log_path.read_text()


async def _counted_is(worker: Worker, count: int) -> bool:
    assert worker.alive, worker.tail()
    return await worker.counted() >= count


@pytest.mark.parametrize(
    ("user", "password"),
    [(USER, "not-the-" + PASSWORD), ("mallory", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_refused_sasl_login_on_kafka_exits_1_with_one_line(
    kafka: KafkaBroker, tmp_path: Path, mechanism: str, user: str, password: str
) -> None:
    args, env = credentials(mechanism, "env", tmp_path, user=user, password=password)

    code, lines = await run_cli("--bootstrap-servers", kafka.sasl_bootstrap, *args, env=env)

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {kafka.sasl_bootstrap} "
        f"refused the SASL {mechanism} login of user {user!r} {HINT}",
    )
    assert not any(password in line for line in lines)


# --- SASL over TLS ------------------------------------------------------------------------------

# What production runs: TLS to a private CA, then SASL. PLAIN is Confluent Cloud's,
# SCRAM-SHA-512 MSK's, Strimzi's and the README's example. A login that counts costs a
# worker process (~2 s), so only the README's: every mechanism already counts over
# SASL_PLAINTEXT, and TLS under SASL is the same for each. A refusal costs ~0.7 s: both.
SASL_SSL_MECHANISMS = ["PLAIN", "SCRAM-SHA-512"]


def sasl_ssl_args(
    kafka: KafkaBroker, pki: Pki, mechanism: str, tmp_path: Path, password: str = PASSWORD
) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for the SASL_SSL listener, trusting the test CA."""
    args, env = credentials(mechanism, "env", tmp_path, password=password, protocol="SASL_SSL")
    tls = ["--ssl-cafile", str(pki.ca)]
    return ["--bootstrap-servers", kafka.sasl_ssl_bootstrap, *args, *tls], env


async def test_sasl_ssl_login_on_kafka_counts_every_event_exactly(
    kafka: KafkaBroker, kafka_pki: Pki, tmp_path: Path
) -> None:
    seed = 130
    topic = await produced_topic(kafka, seed)
    args, env = sasl_ssl_args(kafka, kafka_pki, "SCRAM-SHA-512", tmp_path)
    worker = Worker(tmp_path, "sasl-ssl", [*args, "--topic", topic], env=env)
    await assert_worker_counts_exactly(worker, seed)


@pytest.mark.parametrize("mechanism", SASL_SSL_MECHANISMS)
async def test_refused_sasl_ssl_login_on_kafka_exits_1_with_one_line(
    kafka: KafkaBroker, kafka_pki: Pki, tmp_path: Path, mechanism: str
) -> None:
    password = "not-the-" + PASSWORD
    args, env = sasl_ssl_args(kafka, kafka_pki, mechanism, tmp_path, password=password)

    code, lines = await run_cli(*args, env=env)

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {kafka.sasl_ssl_bootstrap} "
        f"refused the SASL {mechanism} login of user {USER!r} {HINT}",
    )
    assert not any(password in line for line in lines)


# --- TLS ----------------------------------------------------------------------------------------


async def test_kafka_tls_listener_counts_every_event_exactly(
    kafka: KafkaBroker, kafka_pki: Pki, start_worker: WorkerFactory
) -> None:
    topic = await produced_topic(kafka, seed=120)
    run = await start_worker(
        settings_for(kafka.ssl_bootstrap, topic, security_protocol="SSL", ssl_cafile=kafka_pki.ca)
    )
    await eventually(lambda: run.counted() >= COUNT, within=60)

    assert run.counted() == COUNT
    await run.scrape()  # a served scrape publishes what was counted
    assert_exact(series_values(run.worker.metrics.registry), seed=120)
    assert await run.is_ready()


async def test_kafka_mutual_tls_with_a_client_certificate_counts_every_event_exactly(
    kafka: KafkaBroker, kafka_pki: Pki, start_worker: WorkerFactory
) -> None:
    topic = await produced_topic(kafka, seed=121)
    settings = settings_for(
        kafka.mtls_bootstrap,
        topic,
        security_protocol="SSL",
        ssl_cafile=kafka_pki.ca,
        ssl_certfile=kafka_pki.client_cert,
        ssl_keyfile=kafka_pki.client_key,
    )
    run = await start_worker(settings)
    await eventually(lambda: run.counted() >= COUNT, within=60)

    assert run.counted() == COUNT
    await run.scrape()
    assert_exact(series_values(run.worker.metrics.registry), seed=121)


async def test_kafka_certificate_from_an_untrusted_ca_exits_1_with_one_line(
    kafka: KafkaBroker, kafka_pki: Pki
) -> None:
    code, lines = await run_cli(
        *("--bootstrap-servers", kafka.ssl_bootstrap, "--security-protocol", "SSL"),
        *("--ssl-cafile", str(kafka_pki.other_ca)),
        env={},
    )

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {kafka.ssl_bootstrap} failed TLS "
        "verification: unable to get local issuer certificate "
        "(check --ssl-cafile / SESSION_METRICS_SSL_CAFILE and --ssl-check-hostname)",
    )


async def test_kafka_requiring_a_client_certificate_we_lack_exits_1_with_one_line(
    kafka: KafkaBroker, kafka_pki: Pki
) -> None:
    code, lines = await run_cli(
        *("--bootstrap-servers", kafka.mtls_bootstrap, "--security-protocol", "SSL"),
        *("--ssl-cafile", str(kafka_pki.ca)),
        env={},
    )

    assert code == 1
    assert_one_error_line_after_json_logs(
        lines,
        f"session-metrics: Kafka error: BrokerRefused: {kafka.mtls_bootstrap} refused the TLS "
        "session: sslv3 alert bad certificate (check --ssl-certfile / "
        "SESSION_METRICS_SSL_CERTFILE and --ssl-keyfile: the broker may require a client "
        "certificate)",
    )
