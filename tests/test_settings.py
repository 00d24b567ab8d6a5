"""consumer/settings.py and consumer/security.py: flags and environment to checked settings."""

import argparse
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.http import Credentials
from consumer.security import client_kwargs, metrics_credentials, metrics_tls_context
from consumer.settings import (
    DEFAULT_COST_BUCKETS,
    DEMO_FLAGS,
    HTTP_OPTIONS,
    KAFKA_OPTIONS,
    PRODUCE_FLAGS,
    RUN_OPTIONS,
    STORE_OPTIONS,
    ConfigError,
    Flag,
    HttpSettings,
    Option,
    Settings,
    all_options,
    flags_table,
    options_table,
    run_settings,
)
from tests.pki import Pki, make_pki

PASSWORD = "hunter2-Sup3r-secret"
CA_NAME = "session-metrics-test-ca"
REQUIRED = {"bootstrap_servers": "kafka:9092", "topic": "sessions"}


def build(env: dict[str, str] | None = None, /, **flags: Any) -> Settings:
    """Settings from these flags (strings, like argparse gives) and this environment."""
    return run_settings(argparse.Namespace(**flags), environ=env or {})


def config_error(env: dict[str, str] | None = None, /, **flags: Any) -> str:
    with pytest.raises(ConfigError) as err:
        build(env, **flags)
    message = str(err.value)
    assert message
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real self-signed certificate (also usable as a CA bundle) and its key."""
    openssl = shutil.which("openssl")
    # Part of every Debian base image; a silent skip here would hide the TLS checks in CI.
    assert openssl is not None, "the openssl CLI is needed to make a test certificate"
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "ca.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=" + CA_NAME),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# --- precedence ---------------------------------------------------------------------------------


def test_flag_beats_environment() -> None:
    s = build({"SESSION_METRICS_METRICS_PORT": "9200"}, metrics_port="9100", **REQUIRED)

    assert s.metrics_port == 9100


def test_environment_beats_default() -> None:
    s = build({"SESSION_METRICS_METRICS_PORT": "9200"}, **REQUIRED)

    assert s.metrics_port == 9200


def test_default_applies_without_flag_or_environment() -> None:
    s = build(**REQUIRED)

    assert s.metrics_port == 8000
    assert s.group_id == "session-metrics"
    assert s.dedup_window == 20_000
    assert s.cost_buckets == tuple(float(b) for b in DEFAULT_COST_BUCKETS.split(","))
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.kafka.ssl_check_hostname is True
    assert s.dlq_topic is None


def test_flag_set_to_none_falls_back_to_environment() -> None:
    # argparse leaves an absent flag as None.
    s = build({"SESSION_METRICS_GROUP_ID": "from-env"}, group_id=None, **REQUIRED)

    assert s.group_id == "from-env"


def test_every_option_has_an_environment_twin_named_after_it() -> None:
    for option in all_options():
        assert option.env == "SESSION_METRICS_" + option.name.upper()
        assert option.flag == "--" + option.name.replace("_", "-")


@pytest.mark.parametrize(
    ("env_name", "raw", "attribute", "expected"),
    [
        ("SESSION_METRICS_TOPIC", "a, b", "topic", ("a", "b")),
        ("SESSION_METRICS_GROUP_ID", "g-1", "group_id", "g-1"),
        ("SESSION_METRICS_AUTO_OFFSET_RESET", "LATEST", "auto_offset_reset", "latest"),
        ("SESSION_METRICS_DLQ_TOPIC", "sessions.dlq", "dlq_topic", "sessions.dlq"),
        ("SESSION_METRICS_MAX_SERIES", "7", "max_series", 7),
        ("SESSION_METRICS_DEDUP_WINDOW", "0", "dedup_window", 0),
        ("SESSION_METRICS_DRAIN_TIMEOUT", "2.5", "drain_timeout", 2.5),
        ("SESSION_METRICS_COST_BUCKETS", "0.5,1,2", "cost_buckets", (0.5, 1.0, 2.0)),
        ("SESSION_METRICS_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("SESSION_METRICS_VALUE_FORMAT", "Confluent-JSON", "value_format", "confluent-json"),
        ("SESSION_METRICS_CLOUDEVENTS_TYPE", "a.b, c", "cloudevents_type", frozenset({"a.b", "c"})),
    ],
)
def test_environment_twin_sets_the_option(
    env_name: str, raw: str, attribute: str, expected: object
) -> None:
    env = {"SESSION_METRICS_BOOTSTRAP_SERVERS": "kafka:9092", "SESSION_METRICS_TOPIC": "t"}
    env[env_name] = raw

    s = build(env)

    assert getattr(s, attribute) == expected
    assert s.kafka.bootstrap_servers == "kafka:9092"


def test_sasl_password_is_not_taken_from_a_flag() -> None:
    message = config_error(
        {"SESSION_METRICS_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password=PASSWORD,
        **REQUIRED,
    )

    assert "SESSION_METRICS_SASL_PASSWORD" in message
    assert PASSWORD not in message


# --- bad values: one line naming the flag and the environment variable --------------------------

# (id, flags, environment, the option the error must name by flag and environment variable)
BAD: list[tuple[str, dict[str, str], dict[str, str], str]] = [
    ("port-too-big", {"metrics_port": "65536"}, {}, "metrics_port"),
    ("port-not-a-number", {}, {"SESSION_METRICS_METRICS_PORT": "http"}, "metrics_port"),
    ("port-negative", {"metrics_port": "-1"}, {}, "metrics_port"),
    ("buckets-equal", {"cost_buckets": "1,1,2"}, {}, "cost_buckets"),
    ("buckets-decreasing", {"duration_buckets": "10,5"}, {}, "duration_buckets"),
    ("buckets-inf", {"tokens_buckets": "1,inf"}, {}, "tokens_buckets"),
    ("buckets-nan", {"cost_buckets": "nan"}, {}, "cost_buckets"),
    ("buckets-empty", {"cost_buckets": " , "}, {}, "cost_buckets"),
    ("topic-illegal", {"topic": "bad topic!"}, {}, "topic"),
    ("topic-too-long", {"topic": "t" * 250}, {}, "topic"),
    ("topic-dot", {"topic": "."}, {}, "topic"),
    ("dlq-illegal", {"dlq_topic": "dead/letters"}, {}, "dlq_topic"),
    ("dlq-is-input", {"dlq_topic": "sessions"}, {}, "dlq_topic"),
    ("dlq-is-one-input", {"topic": "a,b", "dlq_topic": "b"}, {}, "dlq_topic"),
    ("no-bootstrap", {"bootstrap_servers": ""}, {}, "bootstrap_servers"),
    ("blank-bootstrap", {"bootstrap_servers": "  "}, {}, "bootstrap_servers"),
    ("bootstrap-no-port", {"bootstrap_servers": "localhost"}, {}, "bootstrap_servers"),
    ("bootstrap-one-without-port", {"bootstrap_servers": "a:9092,b"}, {}, "bootstrap_servers"),
    ("bootstrap-empty-entry", {"bootstrap_servers": "a:9092,"}, {}, "bootstrap_servers"),
    ("bootstrap-port-word", {"bootstrap_servers": "a:kafka"}, {}, "bootstrap_servers"),
    ("bootstrap-port-zero", {"bootstrap_servers": "a:0"}, {}, "bootstrap_servers"),
    ("bootstrap-port-too-big", {"bootstrap_servers": "a:65536"}, {}, "bootstrap_servers"),
    ("bootstrap-ipv6-bare", {"bootstrap_servers": "::1"}, {}, "bootstrap_servers"),
    ("bootstrap-ipv6-no-port", {"bootstrap_servers": "[::1]"}, {}, "bootstrap_servers"),
    ("no-topic", {"topic": ""}, {}, "topic"),
    ("bad-protocol", {"security_protocol": "TLS"}, {}, "security_protocol"),
    ("bad-mechanism", {"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5"}, {},
     "sasl_mechanism"),
    ("heartbeat-too-long", {"heartbeat_interval_ms": "4000"}, {}, "heartbeat_interval_ms"),
    ("heartbeat-over-third", {"heartbeat_interval_ms": "3334"}, {}, "heartbeat_interval_ms"),
    ("max-series-zero", {"max_series": "0"}, {}, "max_series"),
    ("drain-timeout-inf", {"drain_timeout": "inf"}, {}, "drain_timeout"),
    ("check-hostname-maybe", {"ssl_check_hostname": "maybe"}, {}, "ssl_check_hostname"),
    ("value-format-avro", {"value_format": "avro"}, {}, "value_format"),
    ("cloudevents-type-blank", {}, {"SESSION_METRICS_CLOUDEVENTS_TYPE": " , "}, "cloudevents_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "env", "option"),
    [pytest.param(f, e, o, id=i) for i, f, e, o in BAD],
)
def test_bad_value_raises_one_line_naming_flag_and_environment_variable(
    flags: dict[str, str], env: dict[str, str], option: str
) -> None:
    values = {**REQUIRED, **flags}
    # "" stands for "not given": drop it so the option is really missing.
    values = {k: v for k, v in values.items() if v != ""}

    message = config_error(env, **values)

    assert "--" + option.replace("_", "-") in message
    assert "SESSION_METRICS_" + option.upper() in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("kafka:9092", "kafka:9092"),
        (" a:9092 , b.example.com:9093 ", "a:9092,b.example.com:9093"),
        ("[::1]:9092,10.0.0.1:19092", "[::1]:9092,10.0.0.1:19092"),
    ],
)
def test_bootstrap_servers_with_a_port_on_every_entry_are_accepted(raw: str, expected: str) -> None:
    assert build(bootstrap_servers=raw, topic="t").kafka.bootstrap_servers == expected


def test_bootstrap_server_without_a_port_is_named_in_the_error() -> None:
    message = config_error(bootstrap_servers="kafka-1:9092,kafka-2", topic="t")

    assert message == (
        "--bootstrap-servers / SESSION_METRICS_BOOTSTRAP_SERVERS: every entry must be "
        "host:port ([address]:port for IPv6), 'kafka-2' is not "
        "(got 'kafka-1:9092,kafka-2' from --bootstrap-servers)"
    )


def test_bad_value_error_says_where_the_value_came_from() -> None:
    message = config_error({"SESSION_METRICS_METRICS_PORT": "http"}, **REQUIRED)

    assert message.startswith("--metrics-port / SESSION_METRICS_METRICS_PORT: ")
    assert message.endswith("(got 'http' from SESSION_METRICS_METRICS_PORT)")


def test_heartbeat_of_exactly_a_third_of_the_session_timeout_is_accepted() -> None:
    s = build(session_timeout_ms="9999", heartbeat_interval_ms="3333", **REQUIRED)

    assert (s.session_timeout_ms, s.heartbeat_interval_ms) == (9999, 3333)


SASL_ENV = {"SESSION_METRICS_SASL_PASSWORD": PASSWORD}


@pytest.mark.parametrize(
    ("flags", "env", "flag", "env_name"),
    [
        pytest.param(
            {"sasl_username": "alice"},
            SASL_ENV,
            "--sasl-mechanism",
            "SESSION_METRICS_SASL_MECHANISM",
            id="no-mechanism",
        ),
        pytest.param(
            {"sasl_mechanism": "PLAIN"},
            SASL_ENV,
            "--sasl-username",
            "SESSION_METRICS_SASL_USERNAME",
            id="no-username",
        ),
        pytest.param(
            {"sasl_mechanism": "PLAIN", "sasl_username": "alice"},
            {},
            "--sasl-password-file",
            "SESSION_METRICS_SASL_PASSWORD",
            id="no-password",
        ),
    ],
)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_protocol_needs_mechanism_username_and_password(
    protocol: str, flags: dict[str, str], env: dict[str, str], flag: str, env_name: str
) -> None:
    message = config_error(env, security_protocol=protocol, **flags, **REQUIRED)

    assert flag in message
    assert env_name in message
    assert PASSWORD not in message


def test_sasl_username_and_username_file_together_are_rejected(tmp_path: Path) -> None:
    user_file = tmp_path / "user"
    user_file.write_text("alice\n")

    message = config_error(
        SASL_ENV,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_username_file=str(user_file),
        **REQUIRED,
    )

    assert "--sasl-username" in message
    assert "SESSION_METRICS_SASL_USERNAME" in message


def test_sasl_password_and_password_file_together_are_rejected(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)

    message = config_error(
        SASL_ENV,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password_file=str(password_file),
        **REQUIRED,
    )

    assert "--sasl-password-file" in message
    assert "SESSION_METRICS_SASL_PASSWORD" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "sasl",
    [
        pytest.param({"flags": {"sasl_mechanism": "PLAIN"}}, id="mechanism"),
        pytest.param({"flags": {"sasl_username": "alice"}}, id="username"),
        pytest.param({"env": SASL_ENV}, id="password"),
        pytest.param({"flags": {"sasl_password_file": "FILE"}}, id="password-file"),
        pytest.param({"flags": {"sasl_username_file": "FILE"}}, id="username-file"),
    ],
)
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_sasl_settings_without_a_sasl_protocol_are_rejected(
    tmp_path: Path, protocol: str, sasl: dict[str, dict[str, str]]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(PASSWORD)
    flags = {k: str(secret_file) if v == "FILE" else v for k, v in sasl.get("flags", {}).items()}

    message = config_error(sasl.get("env", {}), security_protocol=protocol, **flags, **REQUIRED)

    assert "--security-protocol" in message
    assert "SESSION_METRICS_SECURITY_PROTOCOL" in message
    assert protocol in message
    assert PASSWORD not in message


@pytest.mark.parametrize("tls_option", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_without_a_tls_protocol_are_rejected(
    tls_files: tuple[Path, Path], protocol: str, tls_option: str
) -> None:
    cert, _ = tls_files
    flags = {tls_option: str(cert), "security_protocol": protocol}
    env = {}
    if protocol.startswith("SASL_"):
        flags |= {"sasl_mechanism": "PLAIN", "sasl_username": "alice"}
        env = SASL_ENV

    message = config_error(env, **flags, **REQUIRED)

    assert "TLS files" in message
    assert "--security-protocol" in message
    assert "SESSION_METRICS_SECURITY_PROTOCOL" in message


@pytest.mark.parametrize("option", ["ssl_cafile", "ssl_certfile", "sasl_password_file"])
def test_missing_file_is_rejected(tmp_path: Path, option: str) -> None:
    missing = tmp_path / "nope.pem"

    message = config_error(security_protocol="SSL", **{option: str(missing)}, **REQUIRED)

    assert "--" + option.replace("_", "-") in message
    assert "SESSION_METRICS_" + option.upper() in message
    assert "does not exist" in message


@pytest.mark.parametrize("given", ["ssl_certfile", "ssl_keyfile"])
def test_certfile_and_keyfile_go_together(tls_files: tuple[Path, Path], given: str) -> None:
    cert, key = tls_files

    message = config_error(
        security_protocol="SSL",
        **{given: str(cert if given == "ssl_certfile" else key)},
        **REQUIRED,
    )

    assert "--ssl-certfile" in message
    assert "--ssl-keyfile" in message
    assert "SESSION_METRICS_SSL_KEYFILE" in message


# --- the SASL password never leaks ---------------------------------------------------------------


def test_blank_sasl_password_error_hides_the_value() -> None:
    message = config_error(
        {"SESSION_METRICS_SASL_PASSWORD": "   "},
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        **REQUIRED,
    )

    assert "SESSION_METRICS_SASL_PASSWORD" in message
    assert "<hidden>" in message


def test_repr_of_settings_never_shows_the_sasl_password() -> None:
    s = build(
        SASL_ENV,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="alice",
        **REQUIRED,
    )

    assert s.kafka.sasl_password == PASSWORD
    assert PASSWORD not in repr(s.kafka)
    assert PASSWORD not in str(s.kafka)
    assert PASSWORD not in repr(s)
    assert "kafka:9092" in repr(s.kafka)


# --- security.client_kwargs ---------------------------------------------------------------------


def test_sasl_ssl_scram_client_kwargs_carry_credentials_and_a_real_tls_context(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    s = build(
        security_protocol="SASL_SSL",
        sasl_mechanism="scram-sha-512",
        sasl_username="alice",
        sasl_password_file=str(password_file),
        ssl_cafile=str(cert),
        **REQUIRED,
    )

    kwargs = client_kwargs(s.kafka)

    assert kwargs["bootstrap_servers"] == "kafka:9092"
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == PASSWORD
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    # The CA file was really loaded: exactly our self-signed certificate is trusted.
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", CA_NAME),),)]


def test_sasl_username_is_read_from_its_file(tmp_path: Path) -> None:
    user_file = tmp_path / "user"
    user_file.write_text("alice\n")
    s = build(
        SASL_ENV,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username_file=str(user_file),
        **REQUIRED,
    )

    kwargs = client_kwargs(s.kafka)

    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert "ssl_context" not in kwargs


def test_ssl_check_hostname_false_reaches_the_context(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    s = build(
        security_protocol="SSL",
        ssl_cafile=str(cert),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_check_hostname="false",
        **REQUIRED,
    )

    context = client_kwargs(s.kafka)["ssl_context"]

    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False


def test_plaintext_client_kwargs_have_no_tls_or_sasl_keys() -> None:
    s = build(client_id="me", **REQUIRED)

    assert client_kwargs(s.kafka) == {
        "bootstrap_servers": "kafka:9092",
        "client_id": "me",
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("source", ["env", "file"])
async def test_each_mechanism_and_password_source_reaches_aiokafka(
    tmp_path: Path, mechanism: str, source: str
) -> None:
    env, flags = {}, {}
    if source == "env":
        env = SASL_ENV
    else:
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\r\n")
        flags = {"sasl_password_file": str(secret)}
    s = build(
        env,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism.lower(),
        sasl_username="alice",
        **flags,
        **REQUIRED,
    )

    kwargs = client_kwargs(s.kafka)
    # aiokafka checks the SASL arguments when the client is made: it must accept them.
    consumer = AIOKafkaConsumer(group_id="g", **kwargs)
    await consumer.stop()

    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == PASSWORD


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "the file is empty"), (b"\n", "the file is empty"), (b"\xff\xfe", "cannot read")],
)
@pytest.mark.parametrize("option", ["sasl_password_file", "sasl_username_file"])
def test_empty_or_unreadable_sasl_secret_file_is_rejected(
    tmp_path: Path, option: str, content: bytes, reason: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    flags = {"sasl_username": "alice"} if option == "sasl_password_file" else {}
    env = {} if option == "sasl_password_file" else SASL_ENV

    message = config_error(
        env,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        **{option: str(secret)},
        **flags,
        **REQUIRED,
    )

    assert message.startswith("--" + option.replace("_", "-") + " / SESSION_METRICS_")
    assert reason in message


# --- the metrics endpoint: TLS and basic auth ---------------------------------------------------

METRICS_PASSWORD = "metrics-Sup3r-secret"
METRICS_ENV = {"SESSION_METRICS_METRICS_AUTH_PASSWORD": METRICS_PASSWORD}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_metrics_tls_and_basic_auth_are_off_by_default() -> None:
    s = build(**REQUIRED)

    assert s.http == HttpSettings()
    assert metrics_tls_context(s.http) is None
    assert metrics_credentials(s.http) is None


def test_metrics_tls_and_basic_auth_from_environment(pki: Pki) -> None:
    s = build(
        {
            **METRICS_ENV,
            "SESSION_METRICS_METRICS_TLS_CERTFILE": str(pki.cert),
            "SESSION_METRICS_METRICS_TLS_KEYFILE": str(pki.key),
            "SESSION_METRICS_METRICS_AUTH_USERNAME": "prometheus",
        },
        **REQUIRED,
    )

    context = metrics_tls_context(s.http)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert metrics_credentials(s.http) == Credentials("prometheus", METRICS_PASSWORD)
    assert METRICS_PASSWORD not in repr(s)


def test_metrics_password_is_read_from_its_file_without_the_line_ending(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(METRICS_PASSWORD + "\n")

    s = build(
        metrics_auth_username="prometheus", metrics_auth_password_file=str(secret), **REQUIRED
    )

    assert metrics_credentials(s.http) == Credentials("prometheus", METRICS_PASSWORD)


def test_metrics_password_is_not_taken_from_a_flag() -> None:
    message = config_error(
        metrics_auth_username="prometheus", metrics_auth_password=METRICS_PASSWORD, **REQUIRED
    )

    assert "SESSION_METRICS_METRICS_AUTH_PASSWORD" in message
    assert METRICS_PASSWORD not in message


@pytest.mark.parametrize(
    ("flags", "env", "names"),
    [
        pytest.param({"metrics_tls_certfile": "CERT"}, {}, "--metrics-tls-keyfile", id="no-key"),
        pytest.param({"metrics_tls_keyfile": "KEY"}, {}, "--metrics-tls-keyfile", id="no-cert"),
        pytest.param(
            {"metrics_tls_certfile": "CERT", "metrics_tls_keyfile": "OTHER_KEY"},
            {},
            "--metrics-tls-certfile",
            id="key-does-not-match",
        ),
        pytest.param(
            {"metrics_tls_certfile": "NOT_PEM", "metrics_tls_keyfile": "KEY"},
            {},
            "--metrics-tls-certfile",
            id="cert-not-pem",
        ),
        pytest.param(
            {"metrics_tls_certfile": "MISSING", "metrics_tls_keyfile": "KEY"},
            {},
            "--metrics-tls-certfile",
            id="cert-missing",
        ),
        pytest.param(
            {"metrics_auth_username": "prometheus"},
            {},
            "SESSION_METRICS_METRICS_AUTH_PASSWORD",
            id="user-without-password",
        ),
        pytest.param({}, METRICS_ENV, "--metrics-auth-username", id="password-without-user"),
        pytest.param(
            {"metrics_auth_password_file": "PASSWORD"},
            {},
            "--metrics-auth-username",
            id="password-file-without-user",
        ),
        pytest.param(
            {"metrics_auth_username": "prometheus", "metrics_auth_password_file": "PASSWORD"},
            METRICS_ENV,
            "SESSION_METRICS_METRICS_AUTH_PASSWORD",
            id="password-and-password-file",
        ),
        pytest.param(
            {"metrics_auth_username": "prometheus", "metrics_auth_password_file": "EMPTY"},
            {},
            "--metrics-auth-password-file",
            id="empty-password-file",
        ),
        pytest.param(
            {"metrics_auth_username": "prometheus", "metrics_auth_password_file": "NOT_UTF8"},
            {},
            "--metrics-auth-password-file",
            id="unreadable-password-file",
        ),
        pytest.param(
            {"metrics_auth_username": "prom:etheus"},
            METRICS_ENV,
            "--metrics-auth-username",
            id="colon-in-user",
        ),
        pytest.param(
            {"metrics_auth_username": "prometheus"},
            {"SESSION_METRICS_METRICS_AUTH_PASSWORD": "  "},
            "<hidden>",
            id="blank-password",
        ),
    ],
)
def test_bad_metrics_endpoint_settings_fail_with_one_line(
    pki: Pki, tmp_path: Path, flags: dict[str, str], env: dict[str, str], names: str
) -> None:
    files = {
        "CERT": pki.cert,
        "KEY": pki.key,
        "OTHER_KEY": pki.other_key,
        "MISSING": tmp_path / "missing.pem",
        "PASSWORD": tmp_path / "password",
        "EMPTY": tmp_path / "empty",
        "NOT_PEM": tmp_path / "not.pem",
        "NOT_UTF8": tmp_path / "not-utf8",
    }
    files["PASSWORD"].write_text(METRICS_PASSWORD)
    files["EMPTY"].write_text("\n")
    files["NOT_PEM"].write_text("not a certificate\n")
    files["NOT_UTF8"].write_bytes(b"\xff\xfe\n")
    flags = {k: str(files.get(v, v)) for k, v in flags.items()}

    message = config_error(env, **flags, **REQUIRED)

    assert names in message
    assert METRICS_PASSWORD not in message


# --- the option tables of docs/configuration.md -------------------------------------------------

CONFIGURATION = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.mark.parametrize(
    "options",
    [KAFKA_OPTIONS, RUN_OPTIONS, HTTP_OPTIONS, STORE_OPTIONS],
    ids=["kafka", "run", "http", "store"],
)
def test_configuration_guide_lists_every_option_as_the_settings_define_it(
    options: tuple[Option, ...],
) -> None:
    # Regenerate with `python -m consumer.settings` after changing an option.
    assert options_table(options) in CONFIGURATION.read_text(encoding="utf-8")


@pytest.mark.parametrize("flags", [PRODUCE_FLAGS, DEMO_FLAGS], ids=["produce", "demo"])
def test_configuration_guide_lists_every_produce_and_demo_flag(flags: tuple[Flag, ...]) -> None:
    assert flags_table(flags) in CONFIGURATION.read_text(encoding="utf-8")
