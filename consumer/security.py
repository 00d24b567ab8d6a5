"""Kafka connection settings to aiokafka keyword arguments (TLS context, SASL credentials)."""

import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from consumer.settings import KafkaSettings


def _read_secret(path: Path) -> str:
    # A trailing newline from `echo secret > file` is not part of the secret; other
    # whitespace may be, so only line endings are dropped.
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def client_kwargs(s: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client this service makes."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
    }
    if s.security_protocol in {"SSL", "SASL_SSL"}:
        kwargs["ssl_context"] = tls_context(s)
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


def tls_context(s: KafkaSettings) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
        certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
        keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
    )
    context.check_hostname = s.ssl_check_hostname
    return context
