"""Configuration: one frozen Settings object built once from flags and environment.

This is the only module that reads `os.environ`. Every option has a flag and an
environment twin (`--metrics-port` / `SESSION_METRICS_METRICS_PORT`); a flag
wins over the environment, which wins over the default. Every value is checked
here, before anything connects, and a bad one raises ConfigError with a single
line naming the setting.
"""

import argparse
import itertools
import math
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SESSION_METRICS_"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

DEFAULT_DURATION_BUCKETS = "1,5,10,30,60,120,300,600,1800,3600,7200,14400,43200,86400"
DEFAULT_TOKENS_BUCKETS = "100,500,1000,2500,5000,10000,25000,50000,100000,250000,500000,1000000"
DEFAULT_COST_BUCKETS = "0.001,0.005,0.01,0.05,0.1,0.5,1,5,10,50,100"


class ConfigError(Exception):
    """A bad setting; str() is the one line shown to the user."""


# --- value parsers: each raises ValueError with a short reason -------------


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    reason = f"must be an integer in {low}..{'' if high is None else high}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:  # int()'s own message names neither the flag nor the range
            raise ValueError(reason) from None
        if value < low or (high is not None and value > high):
            raise ValueError(reason)
        return value

    return parse


def _float_at_least(low: float, *, strict: bool) -> Callable[[str], float]:
    reason = f"must be a finite number {'>' if strict else '>='} {low:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(reason) from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ValueError(reason)
        return value

    return parse


_positive_float = _float_at_least(0, strict=True)
_non_negative_float = _float_at_least(0, strict=False)


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None


def _ratio(raw: str) -> float:
    value = _float_at_least(0, strict=False)(raw)
    if value > 1:
        raise ValueError("must be a number in 0..1")
    return value


@dataclass(frozen=True)
class Choice:
    """A parser that knows its allowed values, so `--help` and the errors can list them."""

    allowed: tuple[str, ...]

    def __call__(self, raw: str) -> str:
        value = raw.strip().upper() if self.allowed[0].isupper() else raw.strip().lower()
        if value not in self.allowed:
            raise ValueError(f"must be one of {', '.join(self.allowed)}")
        return value


def _choice(*allowed: str) -> Choice:
    return Choice(allowed)


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _topics(raw: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not names:
        raise ValueError("must name at least one topic")
    for name in names:
        _check_topic_name(name)
    return names


def _bootstrap_servers(raw: str) -> str:
    """Every entry host:port. No default port: Kafka's own clients refuse a bare host, and
    aiokafka's silent 9092 would retry a TLS listener on another port forever."""
    entries = [e.strip() for e in raw.split(",")]
    if entries == [""]:
        raise ValueError("must not be empty")
    for entry in entries:
        host, _, port = entry.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        digits = port.isascii() and port.isdigit()
        if not host.strip("[]") or not digits or (":" in host and not bracketed):
            # aiokafka would take `::1` for an IPv6 address on port 9092, hence the brackets
            raise ValueError(
                f"every entry must be host:port ([address]:port for IPv6), {entry!r} is not"
            )
        if not 0 < int(port) <= 65535:
            raise ValueError(f"{entry!r}: the port must be in 1..65535")
    return ",".join(entries)


def _names(raw: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    if not names:
        raise ValueError("must name at least one type")
    return names


def _topic(raw: str) -> str:
    return _check_topic_name(raw.strip())


def _check_topic_name(name: str) -> str:
    legal = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not name or len(name) > 249 or name in {".", ".."} or not set(name) <= legal:
        raise ValueError(f"{name!r} is not a legal Kafka topic name")
    return name


def _buckets(raw: str) -> tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in raw.split(",") if b.strip())
    except ValueError:
        raise ValueError("must be comma-separated numbers") from None
    if not bounds:
        raise ValueError("must list at least one bucket bound")
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError("bucket bounds must be finite (+Inf is always added)")
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError("bucket bounds must be strictly increasing")
    return bounds


def _existing_file(raw: str) -> Path:
    path = Path(raw.strip())
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    return path


def _basic_auth_user(raw: str) -> str:
    value = _text(raw)
    if ":" in value:  # RFC 7617: the user-id ends at the first colon
        raise ValueError("must not contain ':'")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    flag_allowed: bool = True
    """False for secrets: a flag would show in `ps` and shell history."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values of a choice setting, () for any other."""
        return self.parse.allowed if isinstance(self.parse, Choice) else ()

    @property
    def required(self) -> bool:
        return self.name in REQUIRED


KAFKA_OPTIONS: tuple[Option, ...] = (
    Option(
        "bootstrap_servers",
        _bootstrap_servers,
        None,
        "Kafka bootstrap servers, host:port[,host:port] (a port on every entry)",
    ),
    Option("client_id", _text, "session-metrics", "Kafka client id"),
    Option(
        "security_protocol", _choice(*SECURITY_PROTOCOLS), "PLAINTEXT", "Kafka security protocol"
    ),
    Option("sasl_mechanism", _choice(*SASL_MECHANISMS), None, "SASL mechanism (SASL_* protocols)"),
    Option("sasl_username", _text, None, "SASL username"),
    Option("sasl_username_file", _existing_file, None, "file holding the SASL username"),
    Option("sasl_password", _text, None, "SASL password (environment only)", flag_allowed=False),
    Option("sasl_password_file", _existing_file, None, "file holding the SASL password"),
    Option("ssl_cafile", _existing_file, None, "CA bundle (PEM) to verify the brokers"),
    Option("ssl_certfile", _existing_file, None, "client certificate (PEM) for mutual TLS"),
    Option("ssl_keyfile", _existing_file, None, "client private key (PEM) for mutual TLS"),
    Option("ssl_check_hostname", _bool, "true", "verify the broker's certificate hostname"),
)

RUN_OPTIONS: tuple[Option, ...] = (
    Option("topic", _topics, None, "input topic(s), comma-separated"),
    Option("group_id", _text, "session-metrics", "consumer group id"),
    Option(
        "auto_offset_reset",
        _choice("earliest", "latest"),
        "earliest",
        "where a new group starts reading",
    ),
    Option(
        "isolation_level",
        _choice("read_committed", "read_uncommitted"),
        "read_committed",
        "read_committed never counts records of aborted or open transactions",
    ),
    Option(
        "commit_after",
        _choice("scrape", "batch"),
        "scrape",
        "commit offsets once a served scrape shows their counts (exact in Prometheus), "
        "or after each batch (a stopping worker loses what no scrape showed)",
    ),
    Option(
        "max_unscraped_seconds",
        _non_negative_float,
        "0",
        "with --commit-after scrape: commit anyway after this long without a served "
        "scrape (0 = never)",
    ),
    Option(
        "value_format",
        _choice("auto", "json", "confluent-json", "cloudevents"),
        "auto",
        "envelope of the values: auto decides per record (docs/input.md)",
    ),
    Option(
        "cloudevents_type",
        _names,
        None,
        "count only CloudEvents of these types, comma-separated (others: outcome skipped)",
    ),
    Option("dlq_topic", _topic, None, "dead-letter topic for invalid messages (off when unset)"),
    Option("metrics_host", _text, "0.0.0.0", "address the HTTP server binds"),
    Option("metrics_port", _int_range(0, 65535), "8000", "port of /metrics, /healthz, /readyz"),
    Option("max_series", _int_range(1), "10000", "most (workspace, project) pairs exported"),
    Option(
        "histogram_labels",
        _choice("workspace_id,project_id", "workspace_id", "none"),
        "workspace_id,project_id",
        "labels the three histograms keep (the counters keep both): per pair, per workspace, "
        "or one series each",
    ),
    Option(
        "native_histograms",
        _bool,
        "false",
        "also count the histograms in native (exponential, schema 3) buckets, served to "
        "scrapers that ask for protobuf",
    ),
    Option(
        "dedup_window",
        _int_range(0),
        "20000",
        "records per partition a session id is checked against, rebuilt from the log "
        "on assignment (0 = off)",
    ),
    Option("max_message_bytes", _int_range(1), "1048576", "larger values are invalid (too_large)"),
    Option("max_batch_records", _int_range(1), "20000", "most records processed per batch"),
    Option(
        "reject_duplicate_keys",
        _bool,
        "false",
        "reject events repeating a JSON key (duplicate_key); costs a second parse",
    ),
    Option("drain_timeout", _positive_float, "10", "seconds to finish the batch on SIGTERM"),
    Option("session_timeout_ms", _int_range(1000), "10000", "Kafka group session timeout"),
    Option("heartbeat_interval_ms", _int_range(100), "3000", "Kafka group heartbeat interval"),
    Option(
        "stall_timeout", _positive_float, "60", "/healthz fails when the loop is stuck this long"
    ),
    Option(
        "duration_buckets",
        _buckets,
        DEFAULT_DURATION_BUCKETS,
        "llm_session_duration_seconds buckets (seconds)",
    ),
    Option(
        "tokens_buckets", _buckets, DEFAULT_TOKENS_BUCKETS, "llm_session_tokens_per_session buckets"
    ),
    Option("cost_buckets", _buckets, DEFAULT_COST_BUCKETS, "llm_session_cost_per_session buckets"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "info", "log level"),
    Option(
        "handover_timeout",
        _non_negative_float,
        "60",
        "seconds a stopping worker, out of the group, keeps serving its final totals "
        "until every active scraper has fetched them (0 = exit at once)",
    ),
    Option(
        "scraper_param",
        _text,
        "scraper",
        "query parameter that names a scraper (else its header or address names it)",
    ),
    Option(
        "scraper_header",
        _text,
        None,
        "header that names a scraper where a proxy hides its address (e.g. X-Forwarded-For)",
    ),
    Option(
        "scraper_grace_intervals",
        _float_at_least(1, strict=False),
        "3",
        "a scraper leaves the active set after this many of its intervals without a scrape",
    ),
)


def _store_url(raw: str) -> str:
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in {"redis", "rediss"} or not rest:
        raise ValueError("must be a redis:// or rediss:// URL")
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        # A password in the URL would show in `ps`, the pod spec and any log of settings.
        raise ValueError(
            "must not carry a password: use SESSION_METRICS_DEDUP_STORE_PASSWORD or "
            "--dedup-store-password-file"
        )
    return value


STORE_OPTIONS: tuple[Option, ...] = (
    Option(
        "dedup_store",
        _store_url,
        None,
        "Redis for session-id claims shared by all replicas, redis:// or rediss:// "
        "(off when unset)",
    ),
    Option("dedup_store_username", _text, None, "Redis ACL user (default: Redis's default user)"),
    Option(
        "dedup_store_password",
        _text,
        None,
        "Redis password (environment only)",
        flag_allowed=False,
    ),
    Option("dedup_store_password_file", _existing_file, None, "file holding the Redis password"),
    Option(
        "dedup_store_cafile", _existing_file, None, "CA bundle (PEM) to verify Redis (rediss://)"
    ),
    Option(
        "dedup_store_ttl",
        _int_range(1),
        "3600",
        "seconds a claim on a session id lasts (at most a quarter more): repeats further apart "
        "count again",
    ),
    Option(
        "dedup_store_timeout",
        _positive_float,
        "5",
        "seconds one claim round trip may take before Redis counts as unreachable",
    ),
)


HTTP_OPTIONS: tuple[Option, ...] = (
    Option("metrics_tls_certfile", _existing_file, None, "certificate chain (PEM): serve HTTPS"),
    Option(
        "metrics_tls_keyfile", _existing_file, None, "private key (PEM) of --metrics-tls-certfile"
    ),
    Option("metrics_auth_username", _basic_auth_user, None, "basic-auth user required on /metrics"),
    Option(
        "metrics_auth_password",
        _text,
        None,
        "basic-auth password (environment only)",
        flag_allowed=False,
    ),
    Option(
        "metrics_auth_password_file", _existing_file, None, "file holding the basic-auth password"
    ),
)

REQUIRED = ("bootstrap_servers", "topic")


@dataclass(frozen=True)
class StoreSettings:
    """The optional shared claim store (Redis); absent unless --dedup-store is set."""

    dedup_store: str
    dedup_store_username: str | None = None
    dedup_store_password: str | None = field(default=None, repr=False)
    dedup_store_password_file: Path | None = None
    dedup_store_cafile: Path | None = None
    dedup_store_ttl: int = 3600
    dedup_store_timeout: float = 5.0

    @property
    def tls(self) -> bool:
        return self.dedup_store.startswith("rediss://")

    def password(self) -> str | None:
        """The password, read from its file when given as one (never logged)."""
        if self.dedup_store_password_file is not None:
            return self.dedup_store_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.dedup_store_password


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    client_id: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_username_file: Path | None
    sasl_password: str | None
    sasl_password_file: Path | None
    ssl_cafile: Path | None
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    ssl_check_hostname: bool

    def __repr__(self) -> str:  # never let the password reach a log line
        return f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, ...)"


@dataclass(frozen=True)
class HttpSettings:
    """Optional TLS and basic auth of the metrics server (all off by default)."""

    metrics_tls_certfile: Path | None = None
    metrics_tls_keyfile: Path | None = None
    metrics_auth_username: str | None = None
    metrics_auth_password: str | None = field(default=None, repr=False)
    metrics_auth_password_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    topic: tuple[str, ...]
    group_id: str
    auto_offset_reset: str
    isolation_level: str
    commit_after: str
    max_unscraped_seconds: float
    value_format: str
    cloudevents_type: frozenset[str] | None
    dlq_topic: str | None
    metrics_host: str
    metrics_port: int
    max_series: int
    histogram_labels: str
    native_histograms: bool
    dedup_window: int
    max_message_bytes: int
    max_batch_records: int
    reject_duplicate_keys: bool
    drain_timeout: float
    session_timeout_ms: int
    heartbeat_interval_ms: int
    stall_timeout: float
    duration_buckets: tuple[float, ...]
    tokens_buckets: tuple[float, ...]
    cost_buckets: tuple[float, ...]
    log_level: str
    handover_timeout: float = 60.0
    scraper_param: str = "scraper"
    scraper_header: str | None = None
    scraper_grace_intervals: float = 3.0
    http: HttpSettings = field(default_factory=HttpSettings)
    store: StoreSettings | None = None


def add_arguments(
    parser: argparse.ArgumentParser, options: Sequence[Option]
) -> "argparse._ArgumentGroup":
    """Add flags for `options`; values stay strings so flags and env share one parser.

    Required settings get their own group, which is returned so a command can add its
    own: argparse's `required=True` would refuse a value that comes from the environment."""
    required = parser.add_argument_group("required options")
    for opt in options:
        if opt.flag_allowed:
            (required if opt.required else parser).add_argument(
                opt.flag, dest=opt.name, metavar=opt.name.upper(), help=option_help(opt)
            )
    # Secrets have no flag, so argparse would never mention them: say where they go.
    secrets = [
        f"{o.env} ({o.help.removesuffix(' (environment only)')})"
        for o in options
        if not o.flag_allowed
    ]
    if secrets:
        parser.epilog = (
            "secrets come from the environment, never a flag (a flag shows in ps and shell "
            f"history), or from the matching --*-password-file: {', '.join(secrets)}"
        )
    return required


def option_help(opt: Option) -> str:
    """`--help`'s line for `opt`: what it is, allowed values, default, environment twin."""
    allowed = f"; one of {', '.join(opt.choices)}" if opt.choices else ""
    if opt.required:
        default = " (required)"
    else:
        default = "" if opt.default is None else f" (default: {opt.default})"
    return f"{opt.help}{allowed}{default} [env {opt.env}]".replace("%", "%%")


@dataclass(frozen=True)
class Flag:
    """A flag of `produce` or `demo`: no environment twin, so argparse parses it, with
    the same value parsers (and reasons) as the options above."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PRODUCE_FLAGS: tuple[Flag, ...] = (
    Flag("count", _int_range(0), "10000", "events to send, 0 = forever"),
    Flag(
        "rate", _float_at_least(0, strict=False), "0", "events per second, 0 = as fast as possible"
    ),
    Flag("seed", _integer, "0", "random seed: the same seed gives the same events"),
    Flag("invalid_ratio", _ratio, "0", "share of extra malformed messages"),
    Flag("duplicate_ratio", _ratio, "0", "share of events sent twice"),
)

DEMO_FLAGS: tuple[Flag, ...] = (
    Flag("metrics_port", _int_range(0, 65535), "8000", "port of /metrics (binds 127.0.0.1)"),
    Flag("rate", _positive_float, "2000", "synthetic events per second"),
    Flag("duration", _float_at_least(0, strict=False), "0", "seconds to run, 0 = until Ctrl-C"),
)


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    for f in flags:
        parser.add_argument(
            f.flag,
            dest=f.name,
            metavar=f.name.upper(),
            type=_flag_type(f.parse),
            default=f.parse(f.default),
            help=f"{f.help} (default: {f.default})".replace("%", "%%"),
        )


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:  # argparse shows an ArgumentTypeError's own text
            raise argparse.ArgumentTypeError(f"{exc} (got {raw!r})") from None

    return convert


def flags_table(flags: Sequence[Flag]) -> str:
    """docs/configuration.md's table of `flags` (printed by `python -m consumer.settings`)."""
    lines = ["| Flag | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{f.flag}` | `{f.default}` | {f.help} |" for f in flags]
    return "\n".join(lines)


def resolve(
    options: Sequence[Option], args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Parse every option from flag, else environment, else default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.name, None) if opt.flag_allowed else None
        source = opt.flag
        if raw is None and opt.env in env:
            raw, source = env[opt.env], opt.env
        if raw is None:
            raw, source = opt.default, "default"
        try:
            values[opt.name] = None if raw is None else opt.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if not opt.flag_allowed else repr(raw)
            raise ConfigError(
                f"{opt.flag} / {opt.env}: {exc} (got {shown} from {source})"
            ) from None
    return values


def kafka_settings(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> KafkaSettings:
    values = resolve(KAFKA_OPTIONS, args, environ)
    _require(values, "bootstrap_servers")
    settings = KafkaSettings(**values)
    _check_security(settings)
    return settings


def run_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    kafka = kafka_settings(args, environ)
    values = resolve(RUN_OPTIONS, args, environ)
    _require(values, "topic")
    if values["dlq_topic"] is not None and values["dlq_topic"] in values["topic"]:
        raise ConfigError("--dlq-topic / SESSION_METRICS_DLQ_TOPIC: must differ from --topic")
    if values["heartbeat_interval_ms"] * 3 > values["session_timeout_ms"]:
        raise ConfigError(
            "--heartbeat-interval-ms / SESSION_METRICS_HEARTBEAT_INTERVAL_MS: "
            "must be at most a third of --session-timeout-ms"
        )
    return Settings(
        kafka=kafka,
        http=http_settings(args, environ),
        store=store_settings(args, environ),
        **values,
    )


def store_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> StoreSettings | None:
    values = resolve(STORE_OPTIONS, args, environ)
    if values["dedup_store"] is None:
        given = [o for o in STORE_OPTIONS[1:5] if values[o.name] is not None]
        if given:
            raise ConfigError(
                f"--dedup-store / SESSION_METRICS_DEDUP_STORE: required with {_named(given[0])}"
            )
        return None
    s = StoreSettings(**values)
    if s.dedup_store_password is not None and s.dedup_store_password_file is not None:
        raise ConfigError(
            "SESSION_METRICS_DEDUP_STORE_PASSWORD: give at most one of it and "
            "--dedup-store-password-file"
        )
    if s.dedup_store_password_file is not None:
        _check_secret_file(s.dedup_store_password_file, "dedup_store_password_file")
    if s.dedup_store_cafile is not None:
        if not s.tls:
            raise ConfigError(
                "--dedup-store-cafile / SESSION_METRICS_DEDUP_STORE_CAFILE: needs a rediss:// "
                "--dedup-store"
            )
        try:
            ssl.create_default_context(cafile=s.dedup_store_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--dedup-store-cafile / SESSION_METRICS_DEDUP_STORE_CAFILE: cannot load: {exc}"
            ) from None
    return s


def _named(opt: Option) -> str:
    return opt.flag if opt.flag_allowed else opt.env


def http_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> HttpSettings:
    settings = HttpSettings(**resolve(HTTP_OPTIONS, args, environ))
    _check_http(settings)
    return settings


def _require(values: dict[str, Any], name: str) -> None:
    if values[name] is None:
        opt = next(o for o in all_options() if o.name == name)
        raise ConfigError(f"{opt.flag} / {opt.env}: required")


def _check_security(s: KafkaSettings) -> None:
    sasl = s.security_protocol.startswith("SASL_")
    if sasl:
        if s.sasl_mechanism is None:
            raise ConfigError(
                "--sasl-mechanism / SESSION_METRICS_SASL_MECHANISM: required with "
                f"--security-protocol {s.security_protocol}"
            )
        if (s.sasl_username is None) == (s.sasl_username_file is None):
            raise ConfigError(
                "--sasl-username / SESSION_METRICS_SASL_USERNAME: give exactly one "
                "of it and --sasl-username-file"
            )
        if (s.sasl_password is None) == (s.sasl_password_file is None):
            raise ConfigError(
                "SESSION_METRICS_SASL_PASSWORD: give exactly one of it and --sasl-password-file"
            )
        for name in ("sasl_username_file", "sasl_password_file"):
            path = getattr(s, name)
            if path is not None:
                _check_secret_file(path, name)
    elif any(
        (
            s.sasl_mechanism,
            s.sasl_username,
            s.sasl_username_file,
            s.sasl_password,
            s.sasl_password_file,
        )
    ):
        raise ConfigError(
            "--security-protocol / SESSION_METRICS_SECURITY_PROTOCOL: SASL settings "
            f"given but the protocol is {s.security_protocol}"
        )
    tls = s.security_protocol in {"SSL", "SASL_SSL"}
    if not tls and (s.ssl_cafile or s.ssl_certfile or s.ssl_keyfile):
        raise ConfigError(
            "--security-protocol / SESSION_METRICS_SECURITY_PROTOCOL: TLS files "
            f"given but the protocol is {s.security_protocol}"
        )
    if (s.ssl_certfile is None) != (s.ssl_keyfile is None):
        raise ConfigError(
            "--ssl-keyfile / SESSION_METRICS_SSL_KEYFILE: --ssl-certfile and "
            "--ssl-keyfile go together"
        )
    _check_pem(s)


def _check_pem(s: KafkaSettings) -> None:
    """Load the TLS files now: a broken PEM is a configuration error, not a crash later."""
    context = ssl.create_default_context()
    try:
        if s.ssl_cafile is not None:
            context.load_verify_locations(cafile=s.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"--ssl-cafile / SESSION_METRICS_SSL_CAFILE: cannot load: {exc}"
        ) from None
    try:
        if s.ssl_certfile is not None:
            context.load_cert_chain(s.ssl_certfile, s.ssl_keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"--ssl-certfile / SESSION_METRICS_SSL_CERTFILE: cannot load with --ssl-keyfile: {exc}"
        ) from None


def _check_http(s: HttpSettings) -> None:
    _check_http_tls(s)
    _check_http_auth(s)


def _check_http_tls(s: HttpSettings) -> None:
    if (s.metrics_tls_certfile is None) != (s.metrics_tls_keyfile is None):
        raise ConfigError(
            "--metrics-tls-keyfile / SESSION_METRICS_METRICS_TLS_KEYFILE: "
            "--metrics-tls-certfile and --metrics-tls-keyfile go together"
        )
    if s.metrics_tls_certfile is None:
        return
    try:  # load now: a key that does not match the certificate fails here, not at start-up
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            s.metrics_tls_certfile, s.metrics_tls_keyfile
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "--metrics-tls-certfile / SESSION_METRICS_METRICS_TLS_CERTFILE: "
            f"cannot load with --metrics-tls-keyfile: {exc}"
        ) from None


def _check_http_auth(s: HttpSettings) -> None:
    password_given = (s.metrics_auth_password, s.metrics_auth_password_file) != (None, None)
    if s.metrics_auth_username is None:
        if password_given:
            raise ConfigError(
                "--metrics-auth-username / SESSION_METRICS_METRICS_AUTH_USERNAME: "
                "required with a basic-auth password"
            )
        return
    if (s.metrics_auth_password is None) == (s.metrics_auth_password_file is None):
        raise ConfigError(
            "SESSION_METRICS_METRICS_AUTH_PASSWORD: give exactly one of it and "
            "--metrics-auth-password-file with --metrics-auth-username"
        )
    if s.metrics_auth_password_file is not None:
        _check_secret_file(s.metrics_auth_password_file, "metrics_auth_password_file")


def _check_secret_file(path: Path, name: str) -> None:
    """Read it now: an unreadable or empty secret file is a configuration error."""
    opt = next(o for o in all_options() if o.name == name)
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{opt.flag} / {opt.env}: cannot read: {exc}") from None
    if not secret:
        raise ConfigError(f"{opt.flag} / {opt.env}: the file is empty")


def all_options() -> tuple[Option, ...]:
    return (*KAFKA_OPTIONS, *RUN_OPTIONS, *HTTP_OPTIONS, *STORE_OPTIONS)


def options_table(options: Sequence[Option]) -> str:
    """docs/configuration.md's table of `options` (`python -m consumer.settings` prints them)."""
    lines = ["| Flag | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for opt in options:
        flag = f"`{opt.flag}`" if opt.flag_allowed else "*(none: env or file only)*"
        if opt.name in REQUIRED:
            default = "**required**"
        else:
            default = "—" if opt.default is None else f"`{opt.default}`"
        lines.append(f"| {flag} | `{opt.env}` | {default} | {opt.help} |")
    return "\n".join(lines)


# --- reconcile ---------------------------------------------------------------------------------

RECONCILE_SHARED = (
    "topic",
    "group_id",
    "isolation_level",
    "value_format",
    "cloudevents_type",
    "dedup_window",
    "max_message_bytes",
    "reject_duplicate_keys",
    "histogram_labels",
    "duration_buckets",
    "tokens_buckets",
    "cost_buckets",
    "log_level",
)
"""Options of `run` that `reconcile` takes as they are (same flag, same variable): it must
decode, dedup and bucket as the workers do, so it reads the workers' own configuration."""


def _http_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in {"http", "https"} or not rest:
        raise ValueError("must be an http:// or https:// URL")
    if "@" in rest.split("/", 1)[0]:
        raise ValueError(
            "must not carry credentials: use --prometheus-username with "
            "SESSION_METRICS_PROMETHEUS_PASSWORD or a bearer token"
        )
    return value


RECONCILE_OPTIONS: tuple[Option, ...] = (
    Option(
        "prometheus_url",
        _http_url,
        None,
        "Prometheus to compare with, http(s)://host:port[/prefix] (off: print the log's totals)",
    ),
    Option("prometheus_username", _basic_auth_user, None, "basic-auth user for Prometheus"),
    Option(
        "prometheus_password",
        _text,
        None,
        "basic-auth password for Prometheus (environment only)",
        flag_allowed=False,
    ),
    Option("prometheus_password_file", _existing_file, None, "file holding that password"),
    Option(
        "prometheus_bearer_token",
        _text,
        None,
        "bearer token for Prometheus (environment only)",
        flag_allowed=False,
    ),
    Option("prometheus_bearer_token_file", _existing_file, None, "file holding that token"),
    Option("prometheus_cafile", _existing_file, None, "CA bundle (PEM) to verify Prometheus"),
    Option(
        "prometheus_selector",
        _text,
        None,
        'label matchers added to every query, e.g. job="session-metrics"',
    ),
)


def _time_ms(raw: str) -> int:
    """RFC 3339 with a zone, or Unix seconds."""
    from datetime import datetime  # noqa: PLC0415  # only reconcile parses times

    text = raw.strip()
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 time with a zone or Unix seconds") from None
    if when.tzinfo is None:
        raise ValueError("must carry a time zone (e.g. Z or +02:00)")
    return round(when.timestamp() * 1000)


PartitionOffsets = dict[tuple[str, int], tuple[int, int | None]]


def _offsets(raw: str) -> PartitionOffsets:
    """TOPIC:PARTITION=START-[END],... (no END: to the partition's end)."""
    reason = "must be TOPIC:PARTITION=START-[END], comma-separated"
    out: PartitionOffsets = {}
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        where, eq, span = item.partition("=")
        topic, colon, partition = where.rpartition(":")
        start, dash, end = span.partition("-")
        if not (eq and colon and dash and topic and partition.isdigit() and start.isdigit()):
            raise ValueError(reason)
        if end and not end.isdigit():
            raise ValueError(reason)
        stop = int(end) if end else None
        if stop is not None and stop < int(start):
            raise ValueError(f"{item}: END must not be below START")
        out[(_check_topic_name(topic), int(partition))] = (int(start), stop)
    if not out:
        raise ValueError(reason)
    return out


RECONCILE_FLAGS: tuple[Flag, ...] = (
    Flag("format", _choice("table", "json"), "table", "output: table or json"),
    Flag(
        "from",
        _time_ms,
        "",
        "count records from this time on (RFC 3339 with a zone, or Unix seconds; offline only)",
    ),
    Flag("to", _time_ms, "", "count records before this time (as --from; offline only)"),
    Flag(
        "offsets",
        _offsets,
        "",
        "exact ranges instead: TOPIC:PARTITION=START-[END],... (no END: to the end; offline only)",
    ),
)
"""Flags of one reconcile run, no environment twin: a range is a question, not a setting."""


def add_reconcile_flags(parser: argparse.ArgumentParser) -> None:
    for f in RECONCILE_FLAGS:
        parser.add_argument(
            f.flag,
            dest=f.name,
            metavar=f.name.upper(),
            type=_flag_type(f.parse),
            default=f.parse(f.default) if f.default else None,
            help=f.help + (f" (default: {f.default})" if f.default else ""),
        )


def reconcile_flags_table() -> str:
    lines = ["| Flag | Default | Meaning |", "|---|---|---|"]
    lines += [
        f"| `{f.flag}` | {f'`{f.default}`' if f.default else '—'} | {f.help} |"
        for f in RECONCILE_FLAGS
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReconcileSettings:
    kafka: KafkaSettings
    topic: tuple[str, ...]
    group_id: str
    isolation_level: str
    value_format: str
    cloudevents_type: frozenset[str] | None
    dedup_window: int
    max_message_bytes: int
    reject_duplicate_keys: bool
    histogram_labels: str
    duration_buckets: tuple[float, ...]
    tokens_buckets: tuple[float, ...]
    cost_buckets: tuple[float, ...]
    log_level: str
    dedup_store: bool
    """Only whether the workers use a claim store: it changes what counts as a repeat."""
    prometheus_url: str | None
    prometheus_username: str | None
    prometheus_password: str | None = field(repr=False)
    prometheus_password_file: Path | None
    prometheus_bearer_token: str | None = field(repr=False)
    prometheus_bearer_token_file: Path | None
    prometheus_cafile: Path | None
    prometheus_selector: str | None
    format: str = "table"
    range_from_ms: int | None = None
    range_to_ms: int | None = None
    offsets: PartitionOffsets | None = None

    @property
    def partial(self) -> bool:
        return (self.range_from_ms, self.range_to_ms, self.offsets) != (None, None, None)


def reconcile_options() -> tuple[Option, ...]:
    """Every option `reconcile` reads: the Kafka connection, the run options it shares,
    its own, and `--dedup-store` (whether the workers use one; never connected to)."""
    shared = tuple(o for o in RUN_OPTIONS if o.name in RECONCILE_SHARED)
    return (*KAFKA_OPTIONS, *shared, *RECONCILE_OPTIONS, STORE_OPTIONS[0])


def reconcile_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ReconcileSettings:
    kafka = kafka_settings(args, environ)
    shared = [o for o in RUN_OPTIONS if o.name in RECONCILE_SHARED]
    values = resolve([*shared, *RECONCILE_OPTIONS], args, environ)
    _require(values, "topic")
    store = resolve(STORE_OPTIONS[:1], args, environ)["dedup_store"] is not None
    flags: dict[str, Any] = {
        "format": getattr(args, "format", None) or "table",
        "range_from_ms": getattr(args, "from", None),
        "range_to_ms": getattr(args, "to", None),
        "offsets": getattr(args, "offsets", None),
    }
    s = ReconcileSettings(kafka=kafka, dedup_store=store, **values, **flags)
    _check_reconcile(s)
    return s


def _check_reconcile(s: ReconcileSettings) -> None:
    _check_range(s)
    _check_prometheus_auth(s)


def _check_range(s: ReconcileSettings) -> None:
    if s.offsets is not None and (s.range_from_ms, s.range_to_ms) != (None, None):
        raise ConfigError("--offsets: give either it or --from/--to")
    if None not in (s.range_from_ms, s.range_to_ms) and s.range_to_ms <= s.range_from_ms:  # type: ignore[operator]
        raise ConfigError("--to: must be after --from")
    if s.offsets is not None and not {t for t, _ in s.offsets} <= set(s.topic):
        raise ConfigError("--offsets: names a topic that --topic does not")
    if s.partial and s.prometheus_url is not None:
        raise ConfigError(
            "--prometheus-url / SESSION_METRICS_PROMETHEUS_URL: a partial range (--from, --to, "
            "--offsets) is totalled offline only: Prometheus's totals cover everything the "
            "group counted"
        )


def _check_prometheus_auth(s: ReconcileSettings) -> None:
    basic = s.prometheus_username is not None
    passwords = (s.prometheus_password, s.prometheus_password_file)
    tokens = (s.prometheus_bearer_token, s.prometheus_bearer_token_file)
    if basic and passwords.count(None) != 1:
        raise ConfigError(
            "SESSION_METRICS_PROMETHEUS_PASSWORD: give exactly one of it and "
            "--prometheus-password-file with --prometheus-username"
        )
    if not basic and passwords != (None, None):
        raise ConfigError(
            "--prometheus-username / SESSION_METRICS_PROMETHEUS_USERNAME: required with a password"
        )
    if tokens.count(None) == 0 or (basic and tokens != (None, None)):
        raise ConfigError(
            "SESSION_METRICS_PROMETHEUS_BEARER_TOKEN: give at most one of it, "
            "--prometheus-bearer-token-file and --prometheus-username"
        )
    for name in ("prometheus_password_file", "prometheus_bearer_token_file"):
        path = getattr(s, name)
        flag = "--" + name.replace("_", "-")
        try:
            secret = None if path is None else path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{flag}: cannot read: {exc}") from None
        if secret == "":
            raise ConfigError(f"{flag}: the file is empty")
    if s.prometheus_cafile is not None:
        try:
            ssl.create_default_context(cafile=s.prometheus_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--prometheus-cafile / SESSION_METRICS_PROMETHEUS_CAFILE: cannot load: {exc}"
            ) from None


if __name__ == "__main__":
    for group in (KAFKA_OPTIONS, RUN_OPTIONS, HTTP_OPTIONS, STORE_OPTIONS):
        print(options_table(group), end="\n\n")
    for flags in (PRODUCE_FLAGS, DEMO_FLAGS):
        print(flags_table(flags), end="\n\n")
    print(options_table(RECONCILE_OPTIONS), end="\n\n")
    print(reconcile_flags_table())
