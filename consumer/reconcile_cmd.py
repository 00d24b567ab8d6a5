"""`session-metrics reconcile`: the log's exact totals, and what Prometheus holds of them.

Exit codes: 0 every sample agrees (or offline: totals printed), 1 something differs,
2 the question cannot be answered (configuration, an unreachable or refusing Kafka or
Prometheus, a topic that does not exist, a range older than either keeps). 1 must only
ever mean "differs": a Job or a script alerts finance on it.
"""

import asyncio
import logging
import sys
import time
from typing import TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumer import logrange
from consumer.aggregate import Buckets
from consumer.envelope import Envelope, Format
from consumer.histforms import as_held
from consumer.logrange import Plan, RangeError
from consumer.metrics import HISTOGRAM_LABELS, HISTOGRAMS
from consumer.promnative import native_forms
from consumer.promquery import Prometheus, PrometheusAuth, PrometheusError
from consumer.reconcile import Fold, Row, compare, sample_names, summarize
from consumer.reconcile_output import as_json, differences_table, summary_line, totals_table
from consumer.security import client_kwargs, raise_if_refused
from consumer.settings import ReconcileSettings

log = logging.getLogger(__name__)

EQUAL, DIFFERS, CANNOT = 0, 1, 2


class CannotReconcile(Exception):
    """One line for the user: the comparison cannot be made as asked."""


async def reconcile(s: ReconcileSettings, out: TextIO, err: TextIO) -> int:
    prometheus = _prometheus(s)
    retention = await prometheus.retention_seconds() if prometheus is not None else None
    await raise_if_refused(s.kafka)
    fold = Fold(
        Buckets(s.duration_buckets, s.tokens_buckets, s.cost_buckets),
        s.dedup_window,
        s.max_message_bytes,
        strict_keys=s.reject_duplicate_keys,
        envelope=Envelope(Format(s.value_format), s.cloudevents_type or frozenset()),
        histogram_labels=len(HISTOGRAM_LABELS[s.histogram_labels]),
        once_per_range=s.dedup_store,
    )
    kafka = client_kwargs(s.kafka)
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=s.isolation_level,
        max_partition_fetch_bytes=max(1048576, s.max_message_bytes),
        **kafka,
    )
    try:
        await consumer.start()
        plan = await _plan(s, consumer, kafka)
        _check_gone(plan, offline=prometheus is None, err=err)
        started = time.monotonic()
        read = await logrange.read(
            consumer,
            plan.spans,
            fold.warm,
            fold.add,
            _progress(err),
            read_committed=s.isolation_level == "read_committed",
        )
    finally:
        await consumer.stop()
    seconds = time.monotonic() - started
    log.info(
        "log range read",
        extra={"records": read.records, "seconds": round(seconds, 3), **fold.outcomes},
    )
    held, forms = None, {}
    _check_retention(read.first_timestamp_ms, retention)
    if prometheus is not None:
        held, restarts = await prometheus.totals(sample_names(), read.first_timestamp_ms)
        if restarts:
            log.info(
                "targets restarted in place: their earlier lifetimes read from raw samples",
                extra={"targets": len(restarts)},
            )
        families = [name for name, _, _, _ in HISTOGRAMS]
        forms = await native_forms(prometheus, families, read.first_timestamp_ms, restarts)
    log_samples = fold.samples()
    if held is not None:
        for line in as_held(log_samples, held, forms):
            print(line, file=err)
    rows = compare(log_samples, held)
    _print(rows, fold.outcomes, out, as_json_=s.format == "json")
    return EQUAL if all(r.equal for r in rows) else DIFFERS


def _prometheus(s: ReconcileSettings) -> Prometheus | None:
    if s.prometheus_url is None:
        return None
    password = s.prometheus_password
    if s.prometheus_password_file is not None:
        password = s.prometheus_password_file.read_text(encoding="utf-8").rstrip("\r\n")
    token = s.prometheus_bearer_token
    if s.prometheus_bearer_token_file is not None:
        token = s.prometheus_bearer_token_file.read_text(encoding="utf-8").rstrip("\r\n")
    auth = PrometheusAuth(s.prometheus_username, password, token, s.prometheus_cafile)
    return Prometheus(s.prometheus_url, auth, s.prometheus_selector or "")


async def _plan(s: ReconcileSettings, consumer: AIOKafkaConsumer, kafka: dict[str, object]) -> Plan:
    partitions = await logrange.partitions_of(kafka, s.topic)
    if s.offsets is not None:
        known = set(partitions)
        for topic, p in s.offsets:
            if (topic, p) not in known:
                raise RangeError(f"--offsets: {topic}/{p} does not exist")
        offsets = {tp: s.offsets[(tp.topic, tp.partition)] for tp in partitions if tp in s.offsets}
        return await logrange.plan(consumer, partitions, s.dedup_window, offsets=offsets)
    committed = None
    if s.range_to_ms is None:
        # Without --to, the range ends where the group's accounting does.
        committed = await logrange.committed_offsets(kafka, s.group_id, partitions)
        if all(offset is None for offset in committed.values()):
            raise CannotReconcile(
                f"group {s.group_id!r} has no committed offset on {', '.join(s.topic)}: check "
                "--group-id (or total a range offline with --to or --offsets)"
            )
    return await logrange.plan(
        consumer,
        partitions,
        s.dedup_window,
        committed=committed,
        from_ms=s.range_from_ms,
        to_ms=s.range_to_ms,
    )


def _check_gone(plan: Plan, offline: bool, err: TextIO) -> None:
    """Records the range needs that Kafka no longer has (retention)."""
    if not plan.gone:
        return
    tp, first = next(iter(plan.gone.items()))
    line = (
        f"{tp.topic}/{tp.partition}: records before offset {first} are gone from Kafka "
        f"(retention) and {len(plan.gone) - 1} more partitions alike"
    )
    if not offline:
        raise CannotReconcile(
            f"{line}: the log cannot account for what the workers counted from them"
        )
    print(f"session-metrics: warning: {line}; counting from there", file=err)


def _check_retention(first_ms: int | None, retention: float | None) -> None:
    """A counted record older than Prometheus keeps: the lifetimes that counted it may have
    ended before that, and their samples are gone from Prometheus, so a difference would
    mean nothing. (Record timestamps, not offsets for times: no broker's index to trust.)"""
    if retention is None or first_ms is None:
        return
    kept_since = time.time() - retention
    if first_ms / 1000 < kept_since:
        first = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first_ms / 1000))
        raise CannotReconcile(
            f"the range's oldest record ({first}) is older than Prometheus keeps "
            f"({retention / 86400:g} days): reconcile a newer range offline (without "
            "--prometheus-url), or with a Prometheus that keeps it"
        )


def _progress(err: TextIO) -> logrange.Progress | None:
    if not err.isatty():
        return None
    started = last = time.monotonic()

    def show(records: int, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < 0.5 and done < total:
            return
        last = now
        rate = records / max(now - started, 1e-9)
        err.write(f"\r{records} records, {done}/{total} partitions done, {rate:,.0f} records/s ")
        if done == total:
            err.write("\n")
        err.flush()

    return show


def _print(rows: list[Row], outcomes: dict[str, int], out: TextIO, *, as_json_: bool) -> None:
    if as_json_:
        print(as_json(rows), file=out)
        return
    offline = any(r.prometheus is None for r in rows)
    table = totals_table(rows) if offline else differences_table(rows)
    if table:
        print(table, file=out)
    print(
        f"{outcomes['records']} records read: {outcomes['counted']} counted, "
        f"{outcomes['duplicates']} repeats, {outcomes['invalid']} invalid, "
        f"{outcomes['tombstones']} tombstones, {outcomes['skipped']} skipped",
        file=out,
    )
    print(summary_line(summarize(rows, offline)), file=out)


async def reconcile_or_explain(s: ReconcileSettings, out: TextIO, err: TextIO) -> int:
    """`reconcile`, with every case it cannot answer turned into one line and exit 2."""
    try:
        return await reconcile(s, out, err)
    except (CannotReconcile, RangeError) as exc:
        print(f"session-metrics: cannot reconcile: {exc}", file=err)
    except PrometheusError as exc:
        print(f"session-metrics: Prometheus error: {exc}", file=err)
    except KafkaError as exc:
        print(f"session-metrics: Kafka error: {exc}", file=err)
    return CANNOT


def main(s: ReconcileSettings) -> int:
    return asyncio.run(reconcile_or_explain(s, sys.stdout, sys.stderr))
