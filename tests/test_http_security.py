"""HTTPS and basic auth on /metrics, checked with real clients: aiohttp and a Prometheus server."""

import argparse
import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from consumer.broker import EmbeddedBroker, free_port
from consumer.http import CHALLENGE, Credentials, HttpServer, Probes, make_app, parse_basic
from consumer.produce import produce
from consumer.security import metrics_credentials, metrics_tls_context
from consumer.settings import HttpSettings, http_settings
from tests.conftest import TopicFactory, WorkerFactory, settings_for
from tests.pki import Pki, make_pki
from tests.promserver import prometheus_server
from tests.test_prometheus import fetch, query, scalar

PASSWORD = "Scrape-Pa55word"
USER = "prometheus"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def http_config(env: dict[str, str] | None = None, /, **flags: Any) -> HttpSettings:
    """HttpSettings as `session-metrics run` builds them from these flags and environment."""
    return http_settings(argparse.Namespace(**flags), environ=env or {})


async def serve_registry(h: HttpSettings) -> HttpServer:
    """The real app and server on a free port, over a registry holding one known counter."""
    registry = CollectorRegistry()
    Counter("probe_events", "events seen by the test", registry=registry).inc(7)
    probes = Probes(healthy=lambda: True, ready=lambda: False)
    server = HttpServer(
        make_app(registry, probes, metrics_credentials(h)),
        "127.0.0.1",
        0,
        metrics_tls_context(h),
    )
    await server.start()
    return server


@pytest.fixture
async def secured(pki: Pki) -> AsyncIterator[str]:
    """Base URL of a server with TLS and basic auth, the password from the environment."""
    h = http_config(
        {"SESSION_METRICS_METRICS_AUTH_PASSWORD": PASSWORD},
        metrics_tls_certfile=str(pki.cert),
        metrics_tls_keyfile=str(pki.key),
        metrics_auth_username=USER,
    )
    server = await serve_registry(h)
    yield f"https://127.0.0.1:{server.port}"
    await server.stop()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


async def get(url: str, trust: Path, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Status, headers and body of GET `url`, trusting only the CA in `trust`."""
    context = ssl.create_default_context(cafile=trust)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=context, headers=headers or {}) as response,
    ):
        return response.status, (response.headers, await response.text())


# --- basic auth -----------------------------------------------------------------------------------


async def test_metrics_without_credentials_is_401_with_a_basic_challenge(
    secured: str, pki: Pki
) -> None:
    status, (headers, body) = await get(secured + "/metrics", pki.ca)

    assert status == 401
    assert headers["WWW-Authenticate"] == CHALLENGE
    assert "probe_events" not in body


def raw(value: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(value).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(basic(USER, "wrong"), id="wrong-password"),
        pytest.param(basic(USER, PASSWORD + "x"), id="password-plus-one"),
        pytest.param(basic(USER, PASSWORD[:-1]), id="password-minus-one"),
        pytest.param(basic(USER, ""), id="empty-password"),
        pytest.param(basic("grafana", PASSWORD), id="wrong-user"),
        pytest.param(basic(USER.upper(), PASSWORD), id="user-case"),
        pytest.param({"Authorization": "Bearer " + PASSWORD}, id="bearer"),
        pytest.param({"Authorization": "Basic !!!"}, id="not-base64"),
        pytest.param(raw(f"{USER}{PASSWORD}".encode()), id="no-colon"),
        pytest.param(raw(b"prometheus:\xff"), id="not-utf8"),
    ],
)
async def test_metrics_with_wrong_credentials_is_401(
    secured: str, pki: Pki, headers: dict[str, str]
) -> None:
    status, (response_headers, body) = await get(secured + "/metrics", pki.ca, headers)

    assert status == 401
    assert response_headers["WWW-Authenticate"] == CHALLENGE
    assert "probe_events" not in body


async def test_metrics_with_the_right_credentials_is_200(secured: str, pki: Pki) -> None:
    status, (_, body) = await get(secured + "/metrics", pki.ca, basic(USER, PASSWORD))

    assert status == 200
    assert "probe_events_total 7.0" in body


async def test_probes_answer_without_credentials(secured: str, pki: Pki) -> None:
    # kubelet probes carry no credentials; they get the real answers, not 401.
    assert (await get(secured + "/healthz", pki.ca))[0] == 200
    assert (await get(secured + "/readyz", pki.ca))[0] == 503


async def test_password_file_trailing_newline_is_not_part_of_the_password(
    pki: Pki, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    server = await serve_registry(
        http_config(metrics_auth_username=USER, metrics_auth_password_file=str(secret))
    )
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert (await get(url, pki.ca, basic(USER, PASSWORD)))[0] == 200
        assert (await get(url, pki.ca, basic(USER, PASSWORD + "\n")))[0] == 401
        assert (await get(url, pki.ca))[0] == 401
    finally:
        await server.stop()


def test_credentials_match_only_the_exact_pair_and_hide_the_password() -> None:
    c = Credentials(USER, PASSWORD)

    assert c.match(USER, PASSWORD)
    assert not c.match(USER, PASSWORD + " ")
    assert not c.match(USER + " ", PASSWORD)
    assert not c.match(PASSWORD, USER)
    assert PASSWORD not in repr(c)


def test_parse_basic_splits_at_the_first_colon_only() -> None:
    # RFC 7617: the user-id has no colon, the password may have some.
    assert parse_basic(aiohttp.encode_basic_auth("u", "a:b:c")) == ("u", "a:b:c")
    assert parse_basic("basic " + base64.b64encode(b"u:p").decode()) == ("u", "p")
    assert parse_basic("Digest u=p") is None


# --- TLS ------------------------------------------------------------------------------------------


async def test_client_that_does_not_trust_the_ca_cannot_connect(secured: str, pki: Pki) -> None:
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(secured + "/healthz", pki.other_ca)


async def test_plain_http_on_the_tls_port_gets_no_metrics(secured: str) -> None:
    plain = secured.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(plain + "/metrics") as response:
            await response.read()


async def test_without_the_options_metrics_is_plain_http_and_open(pki: Pki) -> None:
    server = await serve_registry(http_config())
    try:
        status, (_, body) = await get(f"http://127.0.0.1:{server.port}/metrics", pki.ca)
    finally:
        await server.stop()

    assert status == 200
    assert "probe_events_total 7.0" in body


def test_command_line_rejects_a_certificate_without_its_key(pki: Pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--bootstrap-servers", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={
            **os.environ,
            "SESSION_METRICS_TOPIC": "t",
            "SESSION_METRICS_METRICS_TLS_CERTFILE": str(pki.cert),
        },
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "session-metrics: configuration error: --metrics-tls-keyfile / "
        "SESSION_METRICS_METRICS_TLS_KEYFILE: --metrics-tls-certfile and "
        "--metrics-tls-keyfile go together"
    ]


# --- a real Prometheus scrapes through TLS and basic auth ----------------------------------------

WORKER_PORT = free_port()

SCRAPE_JOB = """\
  - job_name: {name}
    scheme: https
    {tls}
    basic_auth: {{username: {user}, {password}}}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
"""


@dataclass(frozen=True)
class Scraper:
    url: str
    """Prometheus' base URL."""
    password_file: Path
    pki: Pki


@pytest.fixture(scope="module")
def scraper(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraper]:
    """Prometheus with three jobs on the worker: right settings, wrong password, untrusted CA."""
    workdir = tmp_path_factory.mktemp("prometheus-tls")
    (workdir / "password").write_text(PASSWORD)
    trusted = f"tls_config: {{ca_file: {pki.ca}}}"
    jobs = [
        ("secured", trusted, f"password_file: {workdir / 'password'}"),
        ("wrong-password", trusted, "password: not-it"),
        ("untrusted", f"tls_config: {{ca_file: {pki.other_ca}}}", f"password: {PASSWORD}"),
    ]
    config = "global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n" + "".join(
        SCRAPE_JOB.format(name=n, tls=t, user=USER, password=p, port=WORKER_PORT)
        for n, t, p in jobs
    )
    with prometheus_server(config, workdir) as url:
        yield Scraper(url, workdir / "password", pki)


@pytest.mark.broker
@pytest.mark.prometheus
async def test_prometheus_scrapes_metrics_through_tls_and_basic_auth(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
    scraper: Scraper,
) -> None:
    topic = await new_topic(partitions=2)
    await produce(producer, topic, count=300, rate=None, seed=9)
    await start_worker(
        settings_for(
            broker.bootstrap,
            topic,
            metrics_port=WORKER_PORT,
            metrics_tls_certfile=scraper.pki.cert,
            metrics_tls_keyfile=scraper.pki.key,
            metrics_auth_username=USER,
            metrics_auth_password_file=scraper.password_file,
        )
    )

    async def value(promql: str) -> float | None:
        rows = await asyncio.to_thread(query, scraper.url, promql)
        return scalar(rows) if rows else None

    deadline = asyncio.get_running_loop().time() + 45
    while await value('sum(llm_sessions_total{job="secured"})') != 300:
        assert asyncio.get_running_loop().time() < deadline, "Prometheus never saw all sessions"
        await asyncio.sleep(0.5)
    while None in {await value(f'up{{job="{job}"}}') for job in ("wrong-password", "untrusted")}:
        assert asyncio.get_running_loop().time() < deadline, "the other jobs never scraped"
        await asyncio.sleep(0.5)

    assert await value('up{job="secured"}') == 1
    assert await value('up{job="wrong-password"}') == 0
    assert await value('up{job="untrusted"}') == 0
    assert await value('count(llm_sessions_total{job!="secured"})') is None
    targets = json.loads(await asyncio.to_thread(fetch, scraper.url + "/api/v1/targets"))
    errors = {t["labels"]["job"]: t["lastError"] for t in targets["data"]["activeTargets"]}
    assert errors["secured"] == ""
    assert "401 Unauthorized" in errors["wrong-password"]
    assert "certificate signed by unknown authority" in errors["untrusted"]
