"""Command line: `session-metrics run | produce | demo`. Thin: parse, configure, hand over."""

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidSessionTimeoutError, KafkaError

from consumer import __version__, logs
from consumer.settings import (
    HTTP_OPTIONS,
    KAFKA_OPTIONS,
    RUN_OPTIONS,
    ConfigError,
    add_arguments,
    kafka_settings,
    run_settings,
)

log = logging.getLogger("consumer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-metrics",
        description="Turn session-created events from Kafka into Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"session-metrics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="consume a topic and serve /metrics")
    add_arguments(run, (*KAFKA_OPTIONS, *RUN_OPTIONS, *HTTP_OPTIONS))

    produce = commands.add_parser("produce", help="send synthetic events to a topic")
    add_arguments(produce, KAFKA_OPTIONS)
    produce.add_argument("--topic", required=True, help="topic to produce to")
    produce.add_argument("--count", type=int, default=10000, help="events to send, 0 = forever")
    produce.add_argument("--rate", type=float, default=0, help="events per second, 0 = flat out")
    produce.add_argument("--seed", type=int, default=0, help="random seed (same seed, same events)")
    produce.add_argument(
        "--invalid-ratio", type=float, default=0.0, help="share of extra malformed messages"
    )
    produce.add_argument(
        "--duplicate-ratio", type=float, default=0.0, help="share of events sent twice"
    )

    demo = commands.add_parser("demo", help="embedded broker + synthetic events + consumer")
    demo.add_argument("--metrics-port", type=int, default=8000, help="port of /metrics")
    demo.add_argument("--rate", type=float, default=2000, help="synthetic events per second")
    demo.add_argument("--duration", type=float, default=0, help="seconds to run, 0 = until Ctrl-C")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "produce":
            return _produce(args)
        return _demo(args)
    except ConfigError as exc:
        print(f"session-metrics: configuration error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"session-metrics: Kafka error: {_kafka_reason(exc)}", file=sys.stderr)
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
    from consumer.service import serve  # noqa: PLC0415  # keep `--help` and config errors fast

    settings = run_settings(args)
    logs.configure(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def _produce(args: argparse.Namespace) -> int:
    from consumer.produce import produce  # noqa: PLC0415
    from consumer.security import client_kwargs, raise_if_refused  # noqa: PLC0415

    kafka = kafka_settings(args)
    _check_produce_args(args)
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


def _check_produce_args(args: argparse.Namespace) -> None:
    if args.count < 0:
        raise ConfigError("--count: must not be negative")
    if not (math.isfinite(args.rate) and args.rate >= 0):
        raise ConfigError("--rate: must be a finite number >= 0")
    for flag, value in (
        ("--invalid-ratio", args.invalid_ratio),
        ("--duplicate-ratio", args.duplicate_ratio),
    ):
        if not 0 <= value <= 1:
            raise ConfigError(f"{flag}: must be between 0 and 1")


def _demo(args: argparse.Namespace) -> int:
    from consumer.demo import demo  # noqa: PLC0415

    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError("--metrics-port: must be an integer in 0..65535")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ConfigError("--rate: must be a positive number")
    if not (math.isfinite(args.duration) and args.duration >= 0):
        raise ConfigError("--duration: must be a number >= 0")
    logs.configure("error")  # the demo sends malformed events on purpose
    asyncio.run(demo(port=args.metrics_port, rate=args.rate, duration=args.duration or None))
    return 0
