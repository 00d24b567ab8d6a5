"""A real Prometheus server (Debian's package) for the tests that scrape the worker."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from consumer.broker import free_port


@contextmanager
def prometheus_server(config_text: str, workdir: Path) -> Iterator[str]:
    """Run Prometheus with `config_text` in `workdir`; yields its base URL, stops it after."""
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
