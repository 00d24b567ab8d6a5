"""A real Prometheus server (Debian's package) for the tests that scrape the worker."""

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from consumer.broker import free_port


def one_target(port: int, job: str = "session-metrics", extra: str = "") -> str:
    """A config scraping one worker on 127.0.0.1:`port` every second; `extra`: more lines
    of the job (indented four spaces), e.g. its basic_auth."""
    return (
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        f"{extra}"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )


@contextmanager
def prometheus_server(config_text: str, workdir: Path, flags: Sequence[str] = ()) -> Iterator[str]:
    """Run Prometheus with `config_text` (and `flags`) in `workdir`; yields its base URL,
    stops it after."""
    binary = shutil.which("prometheus")
    # `make test` installs Debian's prometheus package; CI must not silently skip this.
    assert binary, "prometheus not on PATH: run the tests with `make test`"
    config = workdir / "prometheus.yml"
    config.write_text(config_text)
    port = free_port()
    with (workdir / "log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            _wait_ready(proc, port, workdir / "log")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_ready(proc: "subprocess.Popen[bytes]", port: int, log: Path) -> None:
    """Until Prometheus answers /-/ready; a config it refuses fails here, with its words."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"prometheus not ready in 30 s: {log.read_text()[-2000:]}")


def file_sd_config(targets_file: Path, interval: float, *jobs: str) -> str:
    """A config whose job(s) scrape the targets listed in `targets_file` (file_sd)."""
    names = jobs or ("session-metrics",)
    every = f"{round(interval * 1000)}ms"
    return f"global: {{scrape_interval: {every}, scrape_timeout: {every}}}\n" + (
        "scrape_configs:\n"
        + "".join(
            f"  - job_name: {name}\n"
            f"    file_sd_configs: [{{files: ['{targets_file}'], refresh_interval: 1s}}]\n"
            for name in names
        )
    )


class FileTargets:
    """The file_sd targets file: each worker lifetime gets its own address, as a new pod
    does, and Prometheus finds it by watching the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.targets: list[str] = []
        self._write()

    def add(self, address: str) -> None:
        self.targets.append(address)
        self._write()

    def _write(self) -> None:
        draft = self.path.with_suffix(".tmp")
        draft.write_text(json.dumps([{"targets": self.targets}]))
        draft.replace(self.path)  # atomic: Prometheus never reads half a file


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result rows (empty while Prometheus is not up yet)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{base}/api/v1/query", params={"query": promql}) as response,
        ):
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return []
    assert body["status"] == "success", body
    rows: list[dict[str, Any]] = body["data"]["result"]
    return rows
