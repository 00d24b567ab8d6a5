"""Wire a Worker and the HTTP server together for the lifetime of one run."""

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from consumer.exposition import BusinessText
from consumer.http import HttpServer, Probes, make_app, scraper_identity
from consumer.security import metrics_credentials, metrics_tls_context
from consumer.settings import Settings
from consumer.worker import Worker

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    *,
    on_started: Callable[[Worker, HttpServer], Awaitable[None]] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run until SIGTERM/SIGINT (or `worker.stop()`): drain, commit, close."""
    worker = Worker(settings=settings)
    worker.metrics.register_process()
    app = make_app(
        worker.metrics.operational,
        Probes(healthy=worker.healthy, ready=lambda: worker.ready),
        metrics_credentials(settings.http),
        BusinessText(worker.metrics.business),
        worker,
        identify=scraper_identity(settings.scraper_param, settings.scraper_header),
    )
    server = HttpServer(
        app, settings.metrics_host, settings.metrics_port, metrics_tls_context(settings.http)
    )
    await server.start()
    log.info(
        "http server listening",
        extra={"host": settings.metrics_host, "port": server.port, "scheme": server.scheme},
    )
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # The handler only flips state; the worker drains and commits.
            loop.add_signal_handler(sig, worker.stop)
    try:
        if on_started is not None:
            await on_started(worker, server)
        tune_gc()
        await worker.run()
        # Out of the group now; the HTTP server still serves the final totals.
        await worker.final_scrapes()
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await server.stop()


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the per-record path.

    A batch and aiokafka's prefetched records hold tens of thousands of
    container objects at once. With the default gen0 threshold (700) they
    triggered collections that rescanned them many times per batch; at 50k
    still ~0.6 us per event. Refcounting frees all of it (after 300k events a
    full collection found 14 unreachable objects), so: freeze what start-up
    created and collect only after a million net new container objects.
    Measured in-process: 129k -> 175-190k events/s.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


GC_THRESHOLD = 1_000_000
