"""One small HTTP server: /metrics, /healthz (loop alive), /readyz (connected and assigned).

It runs on the worker's event loop, so a scrape sees the metrics between
batches, never half a batch.
"""

import gzip
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


@dataclass(frozen=True)
class Probes:
    healthy: Callable[[], bool]
    ready: Callable[[], bool]


def make_app(registry: CollectorRegistry, probes: Probes) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        ok = probes.healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stalled\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = probes.ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    """Start/stop wrapper; `port` is the bound port (useful with port 0 in tests)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        # aiohttp has no public accessor for the bound port (needed with port 0).
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
