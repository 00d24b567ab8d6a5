"""One small HTTP server: /metrics, /healthz (loop alive), /readyz (connected and assigned).

It runs on the worker's event loop, so a scrape sees the metrics between
batches, never half a batch. Optionally HTTPS, and basic auth on /metrics
only: the probes say nothing secret and kubelet probes carry no credentials.

A full scrape (no `name[]` filter, credentials accepted) publishes every
pending count before it renders, and once its whole response is written the
worker may commit the offsets it covered. A filtered request shows what is
published and commits nothing: it did not show every family.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from consumer.exposition import BusinessText, render
from consumer.ledger import Fold
from consumer.logs import RateLimit

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHALLENGE = 'Basic realm="session-metrics", charset="UTF-8"'
GZIP = 16 + zlib.MAX_WBITS
"""zlib's wbits for a gzip header and trailer."""


class Scrapes(Protocol):
    def fold(self) -> Fold: ...
    def served(self, fold: Fold, who: str) -> None: ...
    def abandoned(self, fold: Fold) -> None: ...


Identify = Callable[[web.Request], str]


def scraper_identity(param: str = "scraper", header: str | None = None) -> Identify:
    """Who a scraper is: the query parameter `param`, else the header `header` (a proxy's
    X-Forwarded-For names the client it forwards for), else the peer address."""

    def identify(request: web.Request) -> str:
        named = request.query.get(param)
        if named:
            return f"{param}={named}"
        if header is not None and (value := request.headers.get(header)):
            return f"{header}={value.split(',')[0].strip()}"
        return request.remote or "unknown"

    return identify


@dataclass(frozen=True)
class Probes:
    healthy: Callable[[], bool]
    ready: Callable[[], bool]


@dataclass(frozen=True)
class Credentials:
    """The one basic-auth user and password /metrics accepts."""

    username: str
    password: str = field(repr=False)

    def match(self, username: str, password: str) -> bool:
        # Compare fixed-length digests in constant time, user and password both
        # always, so the answer's timing says nothing about either.
        user_ok = hmac.compare_digest(_digest(username), _digest(self.username))
        password_ok = hmac.compare_digest(_digest(password), _digest(self.password))
        return user_ok & password_ok


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` value; None if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def require_auth(handler: Handler, credentials: Credentials) -> Handler:
    """Wrap `handler`: 401 with a Basic challenge unless the request carries `credentials`."""
    refusals = RateLimit()  # a scanner must not flood the log

    async def guarded(request: web.Request) -> web.StreamResponse:
        header = request.headers.get(hdrs.AUTHORIZATION)
        given = None if header is None else parse_basic(header)
        if given is not None and credentials.match(*given):
            return await handler(request)
        if refusals.allow():
            log.warning(
                "metrics request refused",
                extra={
                    "remote": request.remote,
                    "reason": "no credentials" if header is None else "wrong credentials",
                    "suppressed_since_last": refusals.take_suppressed(),
                },
            )
        return web.Response(
            status=401, text="unauthorized\n", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE}
        )

    return guarded


def make_app(
    registry: CollectorRegistry,
    probes: Probes,
    credentials: Credentials | None = None,
    business: BusinessText | None = None,
    scrapes: Scrapes | None = None,
    *,
    identify: Identify | None = None,
) -> web.Application:
    who = identify or scraper_identity()

    async def metrics(request: web.Request) -> web.StreamResponse:
        # `name[]=...` as prometheus-client's own server has it: one family, cheaply.
        names = request.query.getall("name[]", [])
        if scrapes is None or names:
            return await _answer(request, registry, business, names)
        fold = scrapes.fold()
        try:
            response = await _answer(request, registry, business, names)
        except BaseException:
            scrapes.abandoned(fold)
            raise
        scrapes.served(fold, who(request))  # the whole answer is written
        return response

    async def healthz(_: web.Request) -> web.Response:
        ok = probes.healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stalled\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = probes.ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    app = web.Application()
    app.router.add_get(
        "/metrics", metrics if credentials is None else require_auth(metrics, credentials)
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _answer(
    request: web.Request,
    registry: CollectorRegistry,
    business: BusinessText | None,
    names: list[str],
) -> web.StreamResponse:
    accept = request.headers.get(hdrs.ACCEPT, "")
    # Rendered synchronously here, so the body is one moment between batches;
    # writing it out may then await without other batches showing up in it.
    chunks, content_type = render(registry, business, accept, names)
    gzipped = "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "")
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
    if gzipped:
        response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    await response.prepare(request)
    await _write(response, chunks, gzipped)
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, chunks: Iterator[bytes], gzipped: bool) -> None:
    """Write family by family; gzip in a thread (zlib releases the GIL), so a large
    scrape neither holds the whole body twice nor stalls consuming while it compresses."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, GZIP) if gzipped else None
    for chunk in chunks:
        data = chunk if compressor is None else await asyncio.to_thread(compressor.compress, chunk)
        if data:
            await response.write(data)
    if compressor is not None:
        await response.write(compressor.flush())


class CannotListen(Exception):
    """The server's address is taken, not ours, or unknown; str() is one line naming it.

    asyncio's own error buries the reason in a traceback of the event loop's internals,
    and the reason (usually "address already in use") is what a user acts on.
    """

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host, self.port = host, port
        if isinstance(cause, socket.gaierror) or not cause.errno or cause.errno < 0:
            self.reason = cause.strerror or str(cause)
        else:
            self.reason = os.strerror(cause.errno)
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port}: {self.reason.lower()}")


class HttpServer:
    """Start/stop wrapper; `port` is the bound port (useful with port 0 in tests).

    With `ssl_context` it serves HTTPS only, on the same port.
    """

    def __init__(
        self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._ssl_context = ssl_context
        self.port = port

    @property
    def scheme(self) -> str:
        return "http" if self._ssl_context is None else "https"

    async def start(self) -> None:
        """Bind and listen; raises CannotListen when the address cannot be had."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise CannotListen(self._host, self.port, exc) from None
        # aiohttp has no public accessor for the bound port (needed with port 0).
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
