"""`session-metrics reconcile` run from a test, and its JSON read back keyed as
tests/corpus.py keys samples."""

import asyncio
import io
import json
import math
import os
import sys
from dataclasses import dataclass

from consumer.cli import build_parser
from consumer.reconcile_cmd import reconcile_or_explain
from consumer.settings import reconcile_settings
from tests.corpus import SampleKey

CLI = [sys.executable, "-m", "consumer", "reconcile"]


@dataclass
class Reconciled:
    code: int
    out: str
    err: str

    def rows(self) -> dict[SampleKey, tuple[float, float | None]]:
        """(log, prometheus) per sample of a `--format json` run."""
        out = {}
        for item in json.loads(self.out):
            le = item.get("le", "")
            key = (
                item["metric"],
                item["workspace_id"],
                item["project_id"],
                le if le in ("", "+Inf") else repr(float(le)),
            )
            out[key] = (item["log"], item.get("prometheus"))
        return out


async def reconcile(*args: str) -> Reconciled:
    """In this process (a subprocess costs a second of imports): the command's own
    function, from its own argument parser, with the exit code `main` would return."""
    parsed = build_parser().parse_args(["reconcile", *args])
    out, err = io.StringIO(), io.StringIO()
    code = await reconcile_or_explain(reconcile_settings(parsed, environ={}), out, err)
    return Reconciled(code, out.getvalue(), err.getvalue())


async def reconcile_process(*args: str, env: dict[str, str] | None = None) -> Reconciled:
    """As a user runs it: `python -m consumer reconcile ...`."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SESSION_METRICS_LOG_LEVEL": "warning", **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Reconciled(proc.returncode, out.decode(), err.decode())


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def disagreements(
    rows: dict[SampleKey, tuple[float, float | None]],
    log: dict[SampleKey, float],
    prometheus: dict[SampleKey, float] | None = None,
) -> list[str]:
    """Where reconcile's log side differs from `log` (computed independently) or its
    Prometheus side from `prometheus` (queried by the test itself); absent means 0."""
    keys = rows.keys() | log.keys() | (prometheus.keys() if prometheus else set())
    out = []
    for key in sorted(keys):
        mine, held = rows.get(key, (0.0, 0.0))
        if not close(mine, log.get(key, 0.0)):
            out.append(f"{key}: log {mine!r}, expected {log.get(key, 0.0)!r}")
        if prometheus is not None and not close(held or 0.0, prometheus.get(key, 0.0)):
            out.append(f"{key}: prometheus {held!r}, the test's query {prometheus.get(key, 0.0)!r}")
    return out
