"""Shared fixtures: the real brokers (Tansu, and Apache Kafka for the `kafka` tests), started
once per session, a fresh topic per test, worker factory."""

import argparse
import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from consumer.broker import EmbeddedBroker, create_topics
from consumer.http import HttpServer
from consumer.service import serve
from consumer.settings import Settings, run_settings
from consumer.worker import Worker
from tests.kafkabroker import KafkaBroker
from tests.pki import Pki, make_pki


class Broker(Protocol):
    @property
    def bootstrap(self) -> str: ...


@pytest.fixture(scope="session")
def tansu() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def broker(tansu: EmbeddedBroker) -> Broker:
    """The broker of broker-facing tests: Tansu, unless a module overrides this fixture with
    `any_broker` to run its tests on both."""
    return tansu


@pytest.fixture(scope="session")
def kafka_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("kafka-pki"))


@pytest.fixture(scope="session")
def kafka(kafka_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka (one KRaft node), shared by the session's `kafka` tests."""
    with KafkaBroker(Path(tmp_path_factory.mktemp("kafka")), kafka_pki) as k:
        yield k


@pytest.fixture(params=["tansu", pytest.param("kafka", marks=pytest.mark.kafka)])
def any_broker(request: pytest.FixtureRequest) -> Broker:
    """Each broker in turn: a test module says `broker = any_broker`-style override
    (see tests/test_pipeline.py) to run its tests on Tansu and on Apache Kafka."""
    found: Broker = request.getfixturevalue(request.param)
    return found


def settings_for(bootstrap: str, topic: str, **overrides: Any) -> Settings:
    """Settings as `session-metrics run` would build them from these flags."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "metrics_host": "127.0.0.1",
        "metrics_port": "0",
    }
    values.update({k: str(v) for k, v in overrides.items()})
    return run_settings(argparse.Namespace(**values), environ={})


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_topic(broker: Broker) -> TopicFactory:
    async def make(partitions: int = 3) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        await create_topics(broker.bootstrap, {name: partitions})
        return name

    return make


@pytest.fixture
async def producer(broker: Broker) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=2)
    await p.start()
    yield p
    await p.stop()


@dataclass
class Running:
    worker: Worker
    server: HttpServer
    task: "asyncio.Task[None]"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 30)

    def counted(self) -> float:
        """session_consumer_messages_total{outcome="counted"} of this worker."""
        registry = self.worker.metrics.registry
        value = registry.get_sample_value("session_consumer_messages_total", {"outcome": "counted"})
        return value or 0.0

    async def scrape(self) -> str:
        """GET /metrics as Prometheus does: publishes what was counted, commits after."""
        async with aiohttp.ClientSession() as http, http.get(self.url + "/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def status(self, path: str) -> int:
        """HTTP status of GET `path` on this worker's server."""
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            return response.status

    async def is_ready(self) -> bool:
        return await self.status("/readyz") == 200


WorkerFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_worker(broker: Broker) -> AsyncIterator[WorkerFactory]:
    """Start `serve()` (worker + HTTP on a free port) in the background; stopped at teardown."""
    running: list[Running] = []

    async def start(settings: Settings) -> Running:
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()

        async def on_started(worker: Worker, server: HttpServer) -> None:
            started.set_result(Running(worker, server, task))

        task = asyncio.create_task(serve(settings, on_started=on_started, handle_signals=False))
        waiting: set[asyncio.Future[Any]] = {started, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        run = started.result()
        running.append(run)
        return run

    yield start
    for run in running:
        if run.task.done():  # stopped, crashed or cancelled by the test itself
            continue
        run.worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run.task, 30)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 30.0) -> None:
    """Wait until `check()` (sync or async) is true; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.1)
