"""TLS contexts and credentials: for aiokafka (Kafka) and for the metrics endpoint.

Also tells a broker that refuses our TLS or SASL settings apart from one that
is merely unreachable: the first can never succeed by retrying.
"""

import asyncio
import ssl
from pathlib import Path
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, UnsupportedSaslMechanismError
from aiokafka.helpers import create_ssl_context

from consumer.http import Credentials
from consumer.settings import HttpSettings, KafkaSettings

PROBE_TIMEOUT_MS = 5_000
"""Short: a stop request waits for a probe in progress."""
ALERT_WAIT = 2.0
"""Seconds to wait for a broker's TLS alert: it comes at once or not at all."""


class BrokerRefused(KafkaError):  # type: ignore[misc]  # aiokafka has no type hints
    """The broker refused our TLS or SASL settings; str() is the one line shown to the user.

    A KafkaError, so the command line reports it like any Kafka error it gives up on (exit 1).
    """


def _read_secret(path: Path) -> str:
    # A trailing newline from `echo secret > file` is not part of the secret; other
    # whitespace may be, so only line endings are dropped.
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def client_kwargs(s: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client this service makes."""
    kwargs = _transport_kwargs(s)
    kwargs["security_protocol"] = s.security_protocol
    if s.security_protocol.startswith("SASL_"):
        username = (
            s.sasl_username if s.sasl_username_file is None else _read_secret(s.sasl_username_file)
        )
        password = (
            s.sasl_password if s.sasl_password_file is None else _read_secret(s.sasl_password_file)
        )
        kwargs["sasl_mechanism"] = s.sasl_mechanism
        kwargs["sasl_plain_username"] = username
        kwargs["sasl_plain_password"] = password
    return kwargs


def _transport_kwargs(s: KafkaSettings) -> dict[str, Any]:
    """The connection without SASL: PLAINTEXT, or SSL with our TLS context."""
    tls = s.security_protocol in {"SSL", "SASL_SSL"}
    kwargs: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.client_id,
        "security_protocol": "SSL" if tls else "PLAINTEXT",
    }
    if tls:
        kwargs["ssl_context"] = tls_context(s)
    return kwargs


def tls_context(s: KafkaSettings) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
        certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
        keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
    )
    context.check_hostname = s.ssl_check_hostname
    return context


# --- a refusing broker fails fast ---------------------------------------------------------------


async def raise_if_refused(s: KafkaSettings) -> None:
    """Raise BrokerRefused if a bootstrap server rejects our certificate checks or SASL login.

    aiokafka logs why a bootstrap failed and then raises a bare
    KafkaConnectionError, so a wrong CA or password would look like an
    unreachable broker and be retried forever. One direct connection per
    server, first without SASL, then with it, tells the cases apart. An
    unreachable server returns quietly: that is for the caller's retry loop.
    """
    for host, port, _ in collect_hosts(s.bootstrap_servers, randomize=False):
        reason = await _probe(host, port, s)
        if reason is not None:
            raise BrokerRefused(f"{host}:{port} {reason}")


async def _probe(host: str, port: int, s: KafkaSettings) -> str | None:
    transport = _transport_kwargs(s)
    del transport["bootstrap_servers"]
    try:
        conn = await create_conn(host, port, request_timeout_ms=PROBE_TIMEOUT_MS, **transport)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"failed TLS verification: {exc.verify_message} "
            "(check --ssl-cafile / SESSION_METRICS_SSL_CAFILE and --ssl-check-hostname)"
        )
    except (OSError, KafkaError, TimeoutError):
        # A broker that wants a client certificate says so with a TLS alert, which aiokafka
        # turns into a closed connection: retrying would never help, so look for the alert.
        return await _tls_alert(host, port, transport) if "ssl_context" in transport else None
    conn.close()
    if not s.security_protocol.startswith("SASL_"):
        return None
    sasl = client_kwargs(s)
    del sasl["bootstrap_servers"]
    try:
        conn = await create_conn(host, port, request_timeout_ms=PROBE_TIMEOUT_MS, **sasl)
    except (OSError, TimeoutError):
        return None
    # aiokafka's SCRAM client raises KeyError/ValueError on a server-final "e=..." message.
    except (KafkaError, KeyError, ValueError) as exc:
        return _sasl_refusal(exc, s.sasl_mechanism, sasl["sasl_plain_username"])
    conn.close()
    return None


async def _tls_alert(host: str, port: int, transport: dict[str, Any]) -> str | None:
    """Why the broker ends our TLS session with an alert, or None if it does not."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=transport["ssl_context"]), ALERT_WAIT
        )
    except ssl.SSLError as exc:  # TLS 1.2: the alert ends the handshake
        return _alert_refusal(exc)
    except (OSError, TimeoutError):
        return None
    try:
        # TLS 1.3: the server checks our certificate after the handshake, and its alert
        # arrives on the first read.
        await asyncio.wait_for(reader.read(1), ALERT_WAIT)
    except ssl.SSLError as exc:
        return _alert_refusal(exc)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
    return None


def _alert_refusal(exc: ssl.SSLError) -> str:
    reason = (exc.reason or "TLS alert").lower().replace("_", " ")
    return (
        f"refused the TLS session: {reason} (check --ssl-certfile / SESSION_METRICS_SSL_CERTFILE "
        "and --ssl-keyfile: the broker may require a client certificate)"
    )


def _sasl_refusal(exc: Exception, mechanism: str | None, username: str) -> str:
    hint = "(check --sasl-mechanism, --sasl-username and the password)"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"does not accept SASL mechanism {mechanism} {hint}"
    if isinstance(exc, KafkaConnectionError):
        # The transport probe just succeeded, so the close answers the SASL exchange.
        return (
            f"closed the connection during SASL {mechanism} login of user {username!r}: "
            f"mechanism or credentials refused {hint}"
        )
    return f"refused the SASL {mechanism} login of user {username!r} {hint}"


# --- the metrics endpoint ---------------------------------------------------------------------


def metrics_tls_context(h: HttpSettings) -> ssl.SSLContext | None:
    """Server-side TLS for /metrics, or None for plain HTTP."""
    if h.metrics_tls_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(h.metrics_tls_certfile, h.metrics_tls_keyfile)
    return context


def metrics_credentials(h: HttpSettings) -> Credentials | None:
    """The basic-auth user and password /metrics requires, or None when it is open."""
    if h.metrics_auth_username is None:
        return None
    password = h.metrics_auth_password
    if h.metrics_auth_password_file is not None:
        password = _read_secret(h.metrics_auth_password_file)
    assert password is not None  # settings checked that one of the two is given
    return Credentials(h.metrics_auth_username, password)
