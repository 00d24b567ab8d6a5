"""How long one /metrics scrape takes when the project exports many series."""

import asyncio
import statistics
from pathlib import Path

import aiohttp

from bench import corpus
from bench.observe import Process, project, watch
from consumer.broker import free_port

TOPIC = "bench-series"
PER_SERIES = 2


async def measure(bootstrap: str, logs: Path, series: int) -> dict[str, float]:
    await corpus.many_series(bootstrap, TOPIC, series, PER_SERIES)
    flags = ["--group-id", "bench-scrape", "--max-series", str(max(series, 10_000))]
    process = Process(project(bootstrap, TOPIC, *flags), free_port(), logs, "scrape")
    await process.start()
    try:
        await watch([process], series * PER_SERIES, within=600)
        cold, size = await _get(process.url, "identity")
        plain = [(await _get(process.url, "identity"))[0] for _ in range(10)]
        gzipped = [(await _get(process.url, "gzip"))[0] for _ in range(5)]
        async with aiohttp.ClientSession() as http:
            lines = await _sample_lines(http, process.url)
    finally:
        await process.stop()
    result = {
        "series": series,
        "samples": lines,
        "body_mb": size / 1e6,
        "first_scrape_ms": cold * 1000,
        "scrape_ms": statistics.median(plain) * 1000,
        "scrape_gzip_ms": statistics.median(gzipped) * 1000,
    }
    print(
        f"  scrape at {series:,} series ({lines:,} samples, {size / 1e6:.1f} MB): "
        f"first {result['first_scrape_ms']:.0f} ms, then {result['scrape_ms']:.0f} ms "
        f"(gzip {result['scrape_gzip_ms']:.0f} ms)",
        flush=True,
    )
    return result


async def _get(url: str, encoding: str) -> tuple[float, int]:
    """Seconds and bytes of one scrape, timed by curl: a C client, as Prometheus' is
    Go; a Python client would mostly measure its own reading of 50 MB."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-H", f"Accept-Encoding: {encoding}",
        "-w", "%{time_total} %{size_download} %{http_code}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    seconds, size, status = out.decode().split()
    if status != "200":
        raise RuntimeError(f"scrape of {url} answered {status}")
    return float(seconds), int(size)


async def _sample_lines(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url, headers={"Accept-Encoding": "identity"}) as response:
        text = await response.text()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
