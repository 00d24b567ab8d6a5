"""`python -m bench.reconcile`: how fast `session-metrics reconcile` reads a log, and its memory,
next to `session-metrics run` counting the same log on the same machine in the same run.

On the embedded broker (Tansu): produce `--events` realistic sessions into 6 partitions,
then (1) `reconcile` offline over every partition, as a process: wall time, records/s and
peak RSS (ru_maxrss); (2) `run` in a fresh group over the same topic until it has counted
every record (read from its own `session_consumer_messages_total` through `name[]` polls,
which publish and commit nothing): time from its first counted record to the last, and its
peak RSS (VmHWM). Prints one JSON line. Not part of the test suite.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.corpus import realistic
from consumer.broker import EmbeddedBroker, create_topics, free_port

PARTITIONS = 6
CLI = [sys.executable, "-m", "consumer"]


def reconcile(bootstrap: str, topic: str) -> dict[str, float]:
    ranges = ",".join(f"{topic}:{p}=0-" for p in range(PARTITIONS))
    args = [*CLI, "reconcile", "--bootstrap-servers", bootstrap, "--topic", topic]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*args, "--offsets", ranges, "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SESSION_METRICS_LOG_LEVEL": "warning"},
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    assert os.waitstatus_to_exitcode(status) == 0, "reconcile failed"
    sessions = sum(i["log"] for i in json.loads(out) if i["metric"] == "llm_sessions_total")
    return {"seconds": seconds, "sessions": sessions, "peak_rss_mb": usage.ru_maxrss / 1024}


def counted(port: int) -> int:
    url = f"http://127.0.0.1:{port}/metrics?name[]=session_consumer_messages_total"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0
    found = re.search(r'session_consumer_messages_total\{outcome="counted"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def run(bootstrap: str, topic: str, events: int, logs: Path) -> dict[str, float]:
    port = free_port()
    args = [*CLI, "run", "--bootstrap-servers", bootstrap, "--topic", topic]
    args += ["--group-id", f"bench-{port}", "--metrics-host", "127.0.0.1"]
    with (logs / "run.log").open("wb") as log:
        proc = subprocess.Popen([*args, "--metrics-port", str(port)], stderr=log)
    try:
        while (n := counted(port)) == 0:
            time.sleep(0.01)
        first, at_first = time.monotonic(), n
        while (n := counted(port)) < events:
            time.sleep(0.05)
        seconds = time.monotonic() - first
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"seconds": seconds, "records": n - at_first, "peak_rss_mb": peak / 1024}


async def produce(bootstrap: str, topic: str, events: int) -> float:
    await create_topics(bootstrap, {topic: PARTITIONS})
    started = time.monotonic()
    await realistic(bootstrap, topic, events)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-run", action="store_true", help="measure reconcile only")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_file=Path(tmp) / "tansu.log") as b,
    ):
        produced = asyncio.run(produce(b.bootstrap, "bench", args.events))
        r = reconcile(b.bootstrap, "bench")
        assert r["sessions"] == args.events, r
        figures: dict[str, object] = {
            "events": args.events,
            "produce_seconds": round(produced, 1),
            "reconcile_seconds": round(r["seconds"], 2),
            "reconcile_records_per_s": round(args.events / r["seconds"]),
            "reconcile_peak_rss_mb": round(r["peak_rss_mb"], 1),
        }
        if not args.no_run:
            w = run(b.bootstrap, "bench", args.events, Path(tmp))
            figures |= {
                "run_seconds_first_to_last": round(w["seconds"], 2),
                "run_records_per_s": round(w["records"] / w["seconds"]),
                "run_peak_rss_mb": round(w["peak_rss_mb"], 1),
            }
    print(json.dumps({"figures": figures}))


if __name__ == "__main__":
    main()
