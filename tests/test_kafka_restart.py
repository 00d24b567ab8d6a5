"""Apache Kafka keeps its logs across a restart (Tansu does not): a worker process that lives
through one counts every event exactly; and Kafka's end offsets are the real highwater."""

import asyncio
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.broker import create_topics
from consumer.produce import produce
from tests.conftest import Running, WorkerFactory, eventually, settings_for
from tests.corpus import corpus, expected_totals
from tests.faults import FULL, Stream, Worker, committed, report, until
from tests.kafkabroker import KafkaBroker
from tests.pki import Pki
from tests.test_outage import Probes
from tests.test_sasl import run_cli

pytestmark = [pytest.mark.broker, pytest.mark.kafka]

BEFORE, AFTER = 2000, 1000
"""Events produced before the broker stops, and after it is back."""


@pytest.fixture
def own_kafka(kafka_pki: Pki, tmp_path: Path) -> Iterator[KafkaBroker]:
    # Not the session broker: this test stops and restarts it.
    with KafkaBroker(tmp_path / "kafka", kafka_pki) as k:
        yield k


async def send(bootstrap: str, topic: str, count: int, skip: int, rate: float | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        await produce(producer, topic, count=count, rate=rate, seed=150, skip=skip)
    finally:
        await producer.stop()


# A SIGKILL is the harder restart (Kafka recovers its logs); the clean stop joins it in the
# full run (CI is at its 20-minute budget).
@pytest.mark.parametrize("how", ["stop", "kill"] if FULL else ["kill"])
async def test_worker_lives_through_a_kafka_restart_and_counts_exactly(
    own_kafka: KafkaBroker, tmp_path: Path, how: str
) -> None:
    """`stop` is a controlled shutdown (SIGTERM); `kill` is SIGKILL, after which Kafka
    recovers its logs on start. Both keep every acknowledged record."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(own_kafka.bootstrap, {topic: 3})
    worker = Worker(tmp_path, "w", ["--bootstrap-servers", own_kafka.bootstrap, "--topic", topic])
    await worker.start()
    probes = Probes(worker)
    probing = asyncio.create_task(probes.run())
    try:
        await send(own_kafka.bootstrap, topic, BEFORE, skip=0, rate=1000)
        await until(lambda: counted_at_least(worker, BEFORE), 60, "counted before the stop")
        stopping = time.monotonic()
        await asyncio.to_thread(own_kafka.stop if how == "stop" else own_kafka.kill)
        stopped = time.monotonic()
        unready = await until(lambda: status_is(worker, 503), 30, "/readyz 503 while down")
        restarting = time.monotonic()
        await asyncio.to_thread(own_kafka.start)
        ready = await until(lambda: status_is(worker, 200), 60, "/readyz 200 once back")
        await send(own_kafka.bootstrap, topic, BEFORE + AFTER, skip=BEFORE, rate=None)
        await until(lambda: counted_at_least(worker, BEFORE + AFTER), 60, "counted after")
        await asyncio.sleep(1)  # nothing more arrives: nothing before the stop was re-read
        scrape = await worker.scrape()
        assert worker.alive, worker.tail()
    finally:
        probing.cancel()
        if worker.alive:
            worker.terminate()
            await worker.wait()

    assert scrape is not None
    assert scrape.counted == BEFORE + AFTER
    want = expected_totals(corpus(seed=150, count=BEFORE + AFTER))
    assert scrape.series("llm_sessions_total") == {k: float(t.sessions) for k, t in want.items()}
    cost = scrape.series("llm_session_cost_total")
    assert all(math.isclose(cost[k], t.cost, rel_tol=1e-9) for k, t in want.items())
    assert set(probes.healthy(stopping, restarting)) <= {200}
    report(
        f"kafka_restart_after_{how}",
        broker_stop_s=round(stopped - stopping, 2),
        readyz_503_after_s=round(unready, 2),
        broker_start_s=round(own_kafka.start_seconds[-1], 2),
        readyz_200_after_restart_s=round(ready, 2),
    )


async def counted_at_least(worker: Worker, count: int) -> bool:
    assert worker.alive, worker.tail()
    return await worker.counted() >= count


async def status_is(worker: Worker, status: int) -> bool:
    got = await worker.get("/readyz")
    return got is not None and got[0] == status


# --- the group at Kafka's defaults --------------------------------------------------------------


async def test_session_timeout_below_kafkas_minimum_exits_1_naming_the_flag(
    kafka: KafkaBroker,
) -> None:
    code, lines = await run_cli(
        *("--bootstrap-servers", kafka.bootstrap, "--session-timeout-ms", "3000"),
        *("--heartbeat-interval-ms", "1000"),
        env={},
    )

    assert code == 1
    assert lines[-1] == (
        "session-metrics: Kafka error: [Error 26] InvalidSessionTimeoutError (the broker "
        "refused --session-timeout-ms / SESSION_METRICS_SESSION_TIMEOUT_MS: it must lie within "
        "its group.min.session.timeout.ms, 6000 by default, and group.max.session.timeout.ms)"
    )


async def test_end_offsets_and_lag_agree_with_the_highwater_the_producer_saw(
    kafka: KafkaBroker, start_worker: WorkerFactory
) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topics(kafka.bootstrap, {topic: 3})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=2)
    await producer.start()
    try:
        stream = Stream(producer, topic, corpus(seed=151, count=1500), rate=5000)
        await stream.run()
    finally:
        await producer.stop()
    assert await end_offsets(kafka, topic) == stream.highwater

    # Kafka's own group defaults: session timeout 10 s, heartbeat 3 s.
    run = await start_worker(settings_for(kafka.bootstrap, topic))
    await eventually(lambda: run.counted() >= 1500, within=60)
    await eventually(lambda: lags(run) == dict.fromkeys(stream.highwater, 0.0))
    assert run.counted() == 1500
    await run.scrape()  # what a served scrape showed is committed
    group = run.worker.settings.group_id
    await eventually(lambda: committed_is(kafka, group, topic, stream.highwater), within=30)


async def end_offsets(kafka: KafkaBroker, topic: str) -> dict[int, int]:
    reader = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        return {tp.partition: end for tp, end in (await reader.end_offsets(tps)).items()}
    finally:
        await reader.stop()


def lags(run: Running) -> dict[int, float]:
    return {
        int(s.labels["partition"]): s.value
        for family in run.worker.metrics.registry.collect()
        if family.name == "session_consumer_lag_records"
        for s in family.samples
    }


async def committed_is(kafka: KafkaBroker, group: str, topic: str, want: dict[int, int]) -> bool:
    return await committed(kafka.bootstrap, group, topic, 3) == want
