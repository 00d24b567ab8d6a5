"""`session-metrics reconcile` against a real broker and a real Prometheus: the log's
totals equal sums computed one record at a time, it neither joins nor commits, a range
that starts mid-partition decides repeats as the whole log does, what a worker committed
but Prometheus never scraped is found and named, and each case it cannot answer is one
line and exit 2."""

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from consumer.broker import create_topics, free_port
from consumer.synthetic import SessionFactory, encode
from schemas import CreateSessionResponseBody
from tests.conftest import Broker, TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import SampleKey, expected_samples
from tests.faults import BATCH_COMMITS, FAST_GROUP, Worker, Workers, committed, until
from tests.kafkabroker import KafkaBroker
from tests.promserver import FileTargets, file_sd_config, prometheus_server, query
from tests.reconcile_run import Reconciled, disagreements, reconcile, reconcile_process

pytestmark = [pytest.mark.broker]

NATIVE = ("--enable-feature=native-histograms",)

WINDOW = 40
Entry = CreateSessionResponseBody | None
"""What one offset carries: an event, or None (invalid value, tombstone)."""


async def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for `group` as a worker would have."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        c.assign(list(tps))
        await c.commit(tps)
    finally:
        await c.stop()


async def fill(producer: AIOKafkaProducer, topic: str, partitions: int) -> list[list[Entry]]:
    """Each partition's log: events (plain and Confluent-framed), invalid values, tombstones,
    repeats just after their first copy and far beyond the window."""
    logs: list[list[Entry]] = [[] for _ in range(partitions)]
    for i, e in enumerate(SessionFactory(31).events(600)):
        p, log = i % partitions, logs[i % partitions]
        sends: list[tuple[bytes | None, Entry]] = [
            (encode(e) if i % 2 else b"\x00\x00\x00\x00\x07" + encode(e), e)
        ]
        if i % 7 == 0:
            sends.append((b"{not json", None))
        if i % 11 == 0:
            sends.append((None, None))
        if i % 5 == 0:
            sends.append((encode(e), e))
        if i % 4 == 0 and len(log) > WINDOW and (half := log[-WINDOW // 2]) is not None:
            sends.append((encode(half), half))  # half a window back: a mid-range start splits it
        if i % 9 == 0 and len(log) > 3 * WINDOW:
            old = next(x for x in log[-3 * WINDOW :] if x is not None)
            sends.append((encode(old), old))
        for value, entry in sends:
            await producer.send(topic, value, key=b"k", partition=p)
            log.append(entry)
    await producer.flush()
    return logs


def counted(log: list[Entry], start: int, end: int) -> list[CreateSessionResponseBody]:
    """The log-window rule one offset at a time: an event counts unless its id sits at an
    offset in [o - WINDOW, o); offsets in [start, end) count."""
    last: dict[str, int] = {}
    out = []
    for offset, e in enumerate(log[:end]):
        if e is None:
            continue
        before = last.get(e.id)
        if offset >= start and (before is None or before < offset - WINDOW):
            out.append(e)
        last[e.id] = offset
    return out


async def test_offline_totals_are_the_logs_up_to_the_committed_offsets_and_nothing_is_committed(
    broker: Broker, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic, group = await new_topic(partitions=3), f"g-{uuid.uuid4().hex[:8]}"
    logs = await fill(producer, topic, 3)
    ends = {0: len(logs[0]), 1: len(logs[1]), 2: len(logs[2]) // 2}
    await commit(broker.bootstrap, group, topic, ends)
    kafka = ("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", group)

    run = await reconcile(*kafka, "--dedup-window", str(WINDOW), "--format", "json")

    assert run.code == 0, run.err
    want = expected_samples([e for p, log in enumerate(logs) for e in counted(log, 0, ends[p])])
    assert disagreements(run.rows(), want) == []
    assert await committed(broker.bootstrap, group, topic, 3) == ends

    # Partition 2 from its middle to its end: the window before the middle is read first.
    middle = len(logs[2]) // 2
    run = await reconcile(
        *kafka,
        "--dedup-window",
        str(WINDOW),
        "--format",
        "json",
        "--offsets",
        f"{topic}:2={middle}-",
    )
    assert run.code == 0, run.err
    assert disagreements(run.rows(), expected_samples(counted(logs[2], middle, len(logs[2])))) == []


async def test_a_topic_that_does_not_exist_is_one_line_and_exit_2(broker: Broker) -> None:
    run = await reconcile_process(
        "--bootstrap-servers", broker.bootstrap, "--topic", "no-such-topic-here"
    )
    assert run.code == 2
    assert run.err.strip().splitlines() == [
        "session-metrics: cannot reconcile: topic 'no-such-topic-here' does not exist "
        "(check --topic)"
    ]


async def test_an_unreachable_prometheus_is_one_line_and_exit_2(
    broker: Broker, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=1)
    url = f"http://127.0.0.1:{free_port()}"
    run = await reconcile(
        "--bootstrap-servers", broker.bootstrap, "--topic", topic, "--prometheus-url", url
    )
    assert run.code == 2
    (line,) = run.err.strip().splitlines()
    assert line.startswith(f"session-metrics: Prometheus error: cannot reach Prometheus at {url}")


@pytest.mark.prometheus
async def test_a_range_older_than_prometheus_keeps_is_one_line_and_exit_2(
    broker: Broker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic, group = await new_topic(partitions=1), f"g-{uuid.uuid4().hex[:8]}"
    month_ago = int((time.time() - 30 * 86400) * 1000)  # Prometheus keeps 15 days by default
    for e in SessionFactory(3).events(20):
        await producer.send(topic, encode(e), partition=0, timestamp_ms=month_ago)
    await producer.send_and_wait(topic, encode(next(SessionFactory(4).events(1))), partition=0)
    await commit(broker.bootstrap, group, topic, {0: 21})
    targets = FileTargets(tmp_path / "targets.json")
    with prometheus_server(file_sd_config(targets.path, 1.0), tmp_path) as url:
        run = await reconcile(
            *("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--group-id", group),
            *("--prometheus-url", url),
        )
    assert run.code == 2
    (line,) = run.err.strip().splitlines()
    assert "older than Prometheus keeps (15 days)" in line, line


@pytest.mark.prometheus
@pytest.mark.timeout(90)
async def test_sessions_a_worker_committed_but_prometheus_never_scraped_are_found(
    broker: Broker, new_topic: TopicFactory, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """`--commit-after batch` commits what no scrape has shown: a worker that stops then
    loses it in Prometheus. The scrape is kept from happening on purpose (its target is
    taken away), so the loss is exactly the second batch of events. The worker then
    restarts in place (same address: its series go on from zero, as a container restarted
    in its pod does) and counts a third batch: reconcile adds up both lifetimes. The
    workers serve native histograms too; a second Prometheus, with native histograms on,
    keeps only those, and reconcile finds the same loss in their counts and sums."""
    topic, group = await new_topic(partitions=2), f"g-{uuid.uuid4().hex[:8]}"
    first, lost = list(SessionFactory(41).events(300)), list(SessionFactory(42).events(200))
    third = list(SessionFactory(43).events(100))
    targets = FileTargets(tmp_path / "targets.json")
    (tmp_path / "native").mkdir()
    config = file_sd_config(targets.path, 0.5)
    with (
        prometheus_server(config, tmp_path) as url,
        prometheus_server(config, tmp_path / "native", NATIVE) as native,
    ):
        group_args = (
            "--bootstrap-servers",
            broker.bootstrap,
            "--topic",
            topic,
            "--group-id",
            group,
        )
        no_wait = ("--handover-timeout", "0")  # nothing scrapes it at its stop anyway
        also_native = ("--native-histograms", "true")
        workers = Workers(
            tmp_path, *group_args, *FAST_GROUP, *BATCH_COMMITS, *no_wait, *also_native
        )
        both = Both(url, native)
        try:
            worker = await workers.start()
            targets.add(f"127.0.0.1:{worker.port}")
            await send(producer, topic, first)
            await until(both(sessions, len(first)), 30, "Prometheus sees the first events")
            targets.targets.clear()
            targets.add(f"127.0.0.1:{free_port()}")  # nothing there: Prometheus drops the worker
            await until(both(scraping_only_nothing), 15, "Prometheus drops the worker")
            await send(producer, topic, lost)
            await until(
                lambda: all_committed(broker, group, topic, len(first) + len(lost)),
                30,
                "the worker commits all",
            )
            worker.terminate()  # a rolling restart's stop: what it committed unscraped is lost
            assert (await worker.wait())[0] == 0, worker.tail()
            again = Worker(tmp_path, "again", workers.args)
            again.port, again.args[-1] = worker.port, str(worker.port)
            workers.started.append(await again.start())
            targets.add(f"127.0.0.1:{worker.port}")
            await send(producer, topic, third)
            await until(both(now_shows, len(third)), 30, "Prometheus sees the third events")
        finally:
            await workers.close()
        run = await reconcile(*group_args, "--prometheus-url", url, "--format", "json")
        table = await reconcile(*group_args, "--prometheus-url", url)
        native_run = await reconcile(*group_args, "--prometheus-url", native, "--format", "json")
        native_table = await reconcile(*group_args, "--prometheus-url", native)

    assert run.code == 1, run.err
    assert_lost_exactly(run, lost, first + lost + third)
    assert table.code == 1
    lines = table.out.splitlines()
    assert lines[0].split() == ["series", "log", "prometheus", "difference"]
    assert_named(lines, "llm_sessions_total", lost)
    assert f"{len(first) + len(lost) + len(third)} counted" in table.out

    assert (native_run.code, native_table.code) == (1, 1), native_run.err
    assert not [k for k in native_run.rows() if k[0].endswith("_bucket")]
    assert_lost_exactly(native_run, lost, first + lost + third, buckets=False)
    assert_named(native_table.out.splitlines(), "llm_session_duration_seconds_count", lost)
    assert "as a native histogram: its count and sum are compared" in native_table.err


class Both:
    """A check of a Prometheus server made on both servers of the test."""

    def __init__(self, *servers: str) -> None:
        self.servers = servers

    def __call__(
        self, check: Callable[..., Awaitable[bool]], *args: int
    ) -> Callable[[], Awaitable[bool]]:
        async def on_both() -> bool:
            return all([await check(server, *args) for server in self.servers])

        return on_both


def assert_lost_exactly(
    run: Reconciled,
    lost: list[CreateSessionResponseBody],
    produced: list[CreateSessionResponseBody],
    buckets: bool = True,
) -> None:
    """The log side is every produced event, and Prometheus misses exactly `lost`."""

    def compared(samples: dict[SampleKey, float]) -> dict[SampleKey, float]:
        return {k: v for k, v in samples.items() if buckets or not k[0].endswith("_bucket")}

    rows = run.rows()
    missing = {k: log - (held or 0.0) for k, (log, held) in rows.items()}
    assert (
        disagreements({k: (v, None) for k, v in missing.items()}, compared(expected_samples(lost)))
        == []
    ), "the differences are not exactly the sessions never scraped"
    assert disagreements(rows, compared(expected_samples(produced))) == []


def assert_named(lines: list[str], metric: str, lost: list[CreateSessionResponseBody]) -> None:
    series = {(e.workspace_id, e.project_id or "") for e in lost}
    named = [f'{metric}{{workspace_id="{w}", project_id="{p}"}}' for w, p in series]
    assert all(any(line.startswith(n) for line in lines) for n in named), named


async def send(
    producer: AIOKafkaProducer, topic: str, events: list[CreateSessionResponseBody]
) -> None:
    for e in events:
        await producer.send(topic, encode(e), key=e.id.encode())
    await producer.flush()


async def sessions(url: str, at_least: int) -> bool:
    rows = await query(url, "sum(last_over_time(llm_sessions_total[1h]))")
    return bool(rows) and float(rows[0]["value"][1]) >= at_least


async def now_shows(url: str, sessions: int) -> bool:
    rows = await query(url, "sum(llm_sessions_total)")
    return bool(rows) and float(rows[0]["value"][1]) == sessions


async def scraping_only_nothing(url: str) -> bool:
    """The worker's target is gone from Prometheus: only the empty address is left."""
    rows = await query(url, "up")
    recent = await query(url, "count(up == 1)")
    return bool(rows) and not recent


async def all_committed(broker: Broker, group: str, topic: str, records: int) -> bool:
    # Counted rather than asked: Tansu's ListOffsets "latest" is not the true end.
    return sum((await committed(broker.bootstrap, group, topic, 2)).values()) == records


async def test_reconcile_gives_the_outcomes_and_totals_run_gives_on_the_same_log(
    broker: Broker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic = await new_topic(partitions=3)
    logs = await fill(producer, topic, 3)
    records = sum(map(len, logs))
    worker = await start_worker(
        settings_for(
            broker.bootstrap,
            topic,
            dedup_window=WINDOW,
            session_timeout_ms=3000,
            heartbeat_interval_ms=1000,
        )
    )
    m = worker.worker.metrics

    def outcome(name: str) -> float:
        value = m.registry.get_sample_value("session_consumer_messages_total", {"outcome": name})
        return value or 0.0

    outcomes = ("counted", "duplicate", "invalid", "tombstone", "skipped")
    await eventually(lambda: sum(map(outcome, outcomes)) == records)
    await worker.scrape()  # publishes what it counted
    ranges = ",".join(f"{topic}:{p}=0-" for p in range(3))
    run = await reconcile(
        *("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--offsets", ranges),
        *("--dedup-window", str(WINDOW), "--format", "json"),
    )
    table = await reconcile(
        *("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--offsets", ranges),
        *("--dedup-window", str(WINDOW)),
    )

    assert run.code == 0, run.err
    assert disagreements(run.rows(), business_samples(m.registry)) == []
    by_outcome = [int(outcome(o)) for o in outcomes]
    assert (
        f"{records} records read: {by_outcome[0]} counted, {by_outcome[1]} repeats, "
        f"{by_outcome[2]} invalid, {by_outcome[3]} tombstones, {by_outcome[4]} skipped"
    ) in table.out
    assert min(by_outcome[:4]) > 0
    assert table.out.splitlines()[0].split()[:3] == ["workspace_id", "project_id", "sessions"]


def business_samples(registry: CollectorRegistry) -> dict[SampleKey, float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if "workspace_id" in s.labels:
                le = s.labels.get("le", "")
                le = le if le in ("", "+Inf") else repr(float(le))
                out[(s.name, s.labels["workspace_id"], s.labels["project_id"], le)] = s.value
    return out


async def test_an_unreachable_kafka_is_one_line_and_exit_2() -> None:
    # Port 9 (discard) is never a broker; reconcile gives up at once where run retries.
    run = await reconcile("--bootstrap-servers", "127.0.0.1:9", "--topic", "sessions")
    assert run.code == 2
    assert run.err.strip().splitlines() == [
        "session-metrics: Kafka error: KafkaConnectionError: Unable to bootstrap from "
        "[('127.0.0.1', 9, <AddressFamily.AF_INET: 2>)]"
    ]


async def test_from_and_to_total_the_records_of_their_times_or_say_the_broker_cannot(
    any_broker: Broker,
) -> None:
    """Kafka finds records by time; Tansu answers offset 0 whatever the time, which
    reconcile refuses in one line rather than total a wrong range."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(any_broker.bootstrap, {topic: 2})
    now = int(time.time() * 1000)
    events = list(SessionFactory(5).events(30))
    p = AIOKafkaProducer(bootstrap_servers=any_broker.bootstrap)
    await p.start()
    try:
        for i, e in enumerate(events):  # a minute apart, the last one a minute ago
            stamp = now - (30 - i) * 60_000
            await p.send_and_wait(topic, encode(e), partition=i % 2, timestamp_ms=stamp)
    finally:
        await p.stop()
    cut, later = str((now - 15 * 60_000) / 1000), str(now / 1000 + 60)
    kafka = ("--bootstrap-servers", any_broker.bootstrap, "--topic", topic, "--format", "json")

    since = await reconcile(*kafka, "--from", cut, "--to", later)
    before = await reconcile(*kafka, "--to", cut)

    if isinstance(any_broker, KafkaBroker):
        assert (since.code, before.code) == (0, 0), since.err + before.err
        assert disagreements(since.rows(), expected_samples(events[15:])) == []
        assert disagreements(before.rows(), expected_samples(events[:15])) == []
    else:
        assert since.code == 2
        assert "it cannot find records by time; give --offsets instead" in since.err
