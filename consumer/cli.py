"""Command line: `session-metrics run | produce | demo | reconcile`. Thin: parse, configure,
hand over."""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidSessionTimeoutError, KafkaError

from consumer import __version__, logs
from consumer.claims import StoreRefused
from consumer.settings import (
    DEMO_FLAGS,
    HTTP_OPTIONS,
    KAFKA_OPTIONS,
    PRODUCE_FLAGS,
    RUN_OPTIONS,
    STORE_OPTIONS,
    ConfigError,
    add_arguments,
    add_flags,
    add_reconcile_flags,
    kafka_settings,
    reconcile_options,
    reconcile_settings,
    run_settings,
)
from consumer.terminal import own_foreground

log = logging.getLogger("consumer")


class Parser(argparse.ArgumentParser):
    """Usage errors as the one line configuration errors are (argparse prints its usage too)."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"session-metrics: configuration error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="session-metrics",
        description="Turn session-created events from Kafka into Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"session-metrics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="consume a topic and serve /metrics")
    add_arguments(run, (*KAFKA_OPTIONS, *RUN_OPTIONS, *HTTP_OPTIONS, *STORE_OPTIONS))

    produce = commands.add_parser("produce", help="send synthetic events to a topic")
    required = add_arguments(produce, KAFKA_OPTIONS)
    required.add_argument("--topic", required=True, help="topic to produce to (flag only)")
    add_flags(produce, PRODUCE_FLAGS)

    demo = commands.add_parser("demo", help="embedded broker + synthetic events + consumer")
    add_flags(demo, DEMO_FLAGS)

    reconcile = commands.add_parser(
        "reconcile", help="the log's exact totals, compared with what Prometheus holds"
    )
    add_arguments(reconcile, reconcile_options())
    add_reconcile_flags(reconcile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"run": _run, "produce": _produce, "reconcile": _reconcile}.get(args.command, _demo)
    try:
        return command(args)
    except ConfigError as exc:
        print(f"session-metrics: configuration error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"session-metrics: Kafka error: {_kafka_reason(exc)}", file=sys.stderr)
        return 1
    except StoreRefused as exc:
        print(f"session-metrics: dedup store error: {exc} (check --dedup-store)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _kafka_reason(exc: KafkaError) -> str:
    """str() names the error; where a flag of ours caused it, name the flag too."""
    if isinstance(exc, InvalidSessionTimeoutError):
        return (
            f"{exc} (the broker refused --session-timeout-ms / SESSION_METRICS_SESSION_TIMEOUT_MS: "
            "it must lie within its group.min.session.timeout.ms, 6000 by default, and "
            "group.max.session.timeout.ms)"
        )
    return str(exc)


def _run(args: argparse.Namespace) -> int:
    from consumer.http import CannotListen  # noqa: PLC0415  # keep `--help` and config errors fast
    from consumer.service import serve  # noqa: PLC0415

    settings = run_settings(args)
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except CannotListen as exc:
        return _cannot_listen(
            exc,
            "--metrics-port / SESSION_METRICS_METRICS_PORT, "
            "or --metrics-host / SESSION_METRICS_METRICS_HOST",
        )
    return 0


def _cannot_listen(exc: Exception, settings: str) -> int:
    # Not a configuration error (exit 2): the value is valid, the machine's state is not.
    print(f"session-metrics: {exc} (check {settings})", file=sys.stderr)
    return 1


def _reconcile(args: argparse.Namespace) -> int:
    from consumer.reconcile_cmd import main as reconcile  # noqa: PLC0415

    settings = reconcile_settings(args)
    logs.configure(settings.log_level)
    return reconcile(settings)


def _produce(args: argparse.Namespace) -> int:
    from consumer.produce import produce  # noqa: PLC0415
    from consumer.security import client_kwargs, raise_if_refused  # noqa: PLC0415

    kafka = kafka_settings(args)
    logs.configure("info")

    async def go() -> None:
        await raise_if_refused(kafka)
        producer = AIOKafkaProducer(linger_ms=5, **client_kwargs(kafka))
        try:
            await producer.start()
            stats = await produce(
                producer,
                args.topic,
                count=args.count or None,
                rate=args.rate or None,
                seed=args.seed,
                invalid_ratio=args.invalid_ratio,
                duplicate_ratio=args.duplicate_ratio,
            )
        finally:
            await producer.stop()
        log.info(
            "produced",
            extra={
                "topic": args.topic,
                "events": stats.events,
                "duplicates": stats.duplicates,
                "invalid": stats.invalid,
            },
        )

    asyncio.run(go())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from consumer.demo import demo  # noqa: PLC0415
    from consumer.http import CannotListen  # noqa: PLC0415

    logs.configure("error")  # the demo sends malformed events on purpose
    try:
        with own_foreground():  # Ctrl-C to the demo only: `make demo` then exits 0, not 130
            asyncio.run(
                demo(port=args.metrics_port, rate=args.rate, duration=args.duration or None)
            )
    except CannotListen as exc:
        return _cannot_listen(exc, '--metrics-port, e.g. make demo ARGS="--metrics-port 8001"')
    return 0
