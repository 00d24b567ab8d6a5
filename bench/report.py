"""The benchmark's outputs: a table on stdout, results/latest.json, the chart and BENCHMARKS.md."""

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench import narrative

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "BENCHMARKS.md"
PAGE_DATA = ROOT / "docs" / "bench"
"""The chart and the JSON that BENCHMARKS.md shows: tracked, so the page renders from a clone."""
TARGETS = {"ceiling_ratio": 0.65, "aim_ceiling_ratio": 0.80, "naive_ratio": 5.0, "store_ratio": 0.8}
STORE = narrative.STORE
"""The project with `--dedup-store` (a Redis claim round trip per batch)."""
RSS_LIMIT_MB, SCRAPE_LIMIT_MS = 150.0, 100.0


@dataclass
class BrokerRuns:
    """The contenders' rounds on another broker than the first, on the same corpus."""

    broker: str
    contenders: dict[str, dict[str, float]]
    runs: dict[str, list[float]]


@dataclass
class Results:
    events: int
    partitions: int
    rounds: int
    contenders: dict[str, dict[str, float]]
    runs: dict[str, list[float]]
    scrape: dict[str, float]
    profile: dict[str, float]
    machine: dict[str, str]
    others: dict[str, BrokerRuns] = field(default_factory=dict)
    """By broker name: the same rounds on the other brokers of the run."""
    store: dict[str, float] = field(default_factory=dict)
    """What the store contender's last round left in Redis (claims, used_mb, claim_bytes);
    empty when the run had no store contender."""
    dedup_memory: dict[str, float] = field(default_factory=dict)
    """bench/dedupmem.py's figures at the defaults."""

    def rate(self, name: str) -> float:
        return self.contenders[name]["events_per_second"]

    def ratios(self) -> tuple[float, float]:
        """Project's median rate over the ceiling's and over the naive consumer's."""
        project = self.rate("project")
        return project / self.rate("ceiling"), project / self.rate("naive")


def load(path: Path) -> Results:
    data = json.loads(path.read_text())
    others = {k: BrokerRuns(**v) for k, v in data.pop("others", {}).items()}
    return Results(**data, others=others)


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kb / 1024 / 1024:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiokafka": version("aiokafka"),
        "msgspec": version("msgspec"),
        "prometheus-client": version("prometheus-client"),
    }


def table(contenders: dict[str, dict[str, float]]) -> list[str]:
    ceiling = contenders["ceiling"]["events_per_second"]
    naive = contenders["naive"]["events_per_second"]
    project = contenders["project"]["events_per_second"]
    rows = [
        "| contender | events/s (median) | x ceiling | x naive | x project | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in contenders.items():
        rate = c["events_per_second"]
        rows.append(
            f"| {name} | {rate:,.0f} | {rate / ceiling:.2f} | {rate / naive:.1f} "
            f"| {rate / project:.2f} | {c['peak_rss_mb']:.0f} MB |"
        )
    return rows


def store_ratio(contenders: dict[str, dict[str, float]]) -> float | None:
    """The store contender's median rate over the project's; None without it."""
    if STORE not in contenders:
        return None
    return contenders[STORE]["events_per_second"] / contenders["project"]["events_per_second"]


def verdicts(r: Results) -> list[str]:
    to_ceiling, to_naive = r.ratios()
    rss = r.contenders["project"]["peak_rss_mb"]
    scrape = r.scrape["scrape_ms"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    with_store = store_ratio(r.contenders)
    store = (
        []
        if with_store is None
        else [
            f"- {STORE} / project = {with_store:.2f} (target >= {TARGETS['store_ratio']}): "
            f"{mark(with_store >= TARGETS['store_ratio'])}"
        ]
    )
    return [
        f"- project / ceiling = {to_ceiling:.2f} (target >= {TARGETS['ceiling_ratio']}, "
        f"aim {TARGETS['aim_ceiling_ratio']}): {mark(to_ceiling >= TARGETS['ceiling_ratio'])}",
        f"- project / naive = {to_naive:.1f} (target >= {TARGETS['naive_ratio']:.0f}): "
        f"{mark(to_naive >= TARGETS['naive_ratio'])}",
        f"- project peak RSS = {rss:.0f} MB after {r.events:,} events (target <= "
        f"{RSS_LIMIT_MB:.0f} MB): {mark(rss <= RSS_LIMIT_MB)}",
        f"- /metrics at {r.scrape['series']:,.0f} series = {scrape:.0f} ms "
        f"(first scrape {r.scrape['first_scrape_ms']:.0f} ms; target < {SCRAPE_LIMIT_MS:.0f} ms): "
        f"{mark(scrape < SCRAPE_LIMIT_MS)}",
        *store,
    ]


COLOURS = {"ceiling": "#777", "naive": "#c44", "project": "#2a7", STORE: "#3a8fb7"}
"""Bar colours by contender; any other (project x2) is grey."""


def chart(r: Results, path: Path) -> None:
    import matplotlib  # noqa: PLC0415  # only the benchmark needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(r.contenders)
    rates = [r.contenders[n]["events_per_second"] / 1000 for n in names]
    fig, ax = plt.subplots(figsize=(7, 2.2 + 0.25 * len(names)), dpi=120)
    labels = [_label(n) for n in names]
    colours = [COLOURS.get(n, "#888") for n in names]
    bars = ax.barh(labels[::-1], rates[::-1], color=colours[::-1])
    ax.bar_label(bars, labels=[f"{v:,.0f}k/s" for v in rates[::-1]], padding=3)
    ax.set_xlabel(f"events/s (thousands), median of {r.rounds} rounds, {r.events:,} events")
    ax.set_xlim(0, max(rates) * 1.25)
    ax.set_title("session-metrics vs raw aiokafka ceiling vs naive consumer")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _label(name: str) -> str:
    """`project x2` is several processes: say so where it stands next to one-process bars."""
    if name == STORE:
        return f"{name}\n(Redis claims)"
    _, _, count = name.partition(" x")
    return f"{name}\n({count} processes)" if count else name


def write(r: Results, results_dir: Path, *, page: bool) -> None:
    """The run's JSON and chart into `results_dir`; with `page`, into BENCHMARKS.md too."""
    lines = table(r.contenders)
    for kind, other in r.others.items():
        lines += ["", f"On {kind}:", *table(other.contenders)]
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(verdicts(r)), flush=True)
    written = save(r, results_dir)
    if page:
        written += save(r, PAGE_DATA)
        PAGE.write_text(page_text(r))
        written.append(PAGE)
    print("\nwrote " + ", ".join(str(p) for p in written), flush=True)


def page_text(r: Results) -> str:
    """BENCHMARKS.md for the run `r`: a table per broker."""
    tables = {kind: table(other.contenders) for kind, other in r.others.items()}
    return narrative.render(r, table(r.contenders), verdicts(r), tables)


def save(r: Results, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data, picture = directory / "latest.json", directory / "throughput.png"
    data.write_text(json.dumps(asdict(r), indent=2) + "\n")
    chart(r, picture)
    return [data, picture]
