"""BENCHMARKS.md against its committed data, and `make bench`'s defaults against the page."""

from bench import report
from bench.run import parse_args


def test_the_benchmark_page_is_what_its_committed_data_renders() -> None:
    # The chart and JSON live in docs/bench/, tracked; bench/results/ is git-ignored.
    results = report.load(report.PAGE_DATA / "latest.json")

    page = report.page_text(results)

    assert report.PAGE.read_text(encoding="utf-8") == page, (
        "re-render: python -m bench --report-only"
    )
    assert "](docs/bench/throughput.png)" in page
    assert (report.PAGE_DATA / "throughput.png").is_file()


def test_a_plain_make_bench_runs_as_the_page_says_and_does_not_rewrite_it() -> None:
    published = report.load(report.PAGE_DATA / "latest.json")

    args = parse_args([])

    assert not args.write_page
    assert (args.rounds, args.events) == (published.rounds, published.events)
    assert parse_args(["--write-page"]).write_page


def test_the_two_worker_row_says_it_is_two_processes_against_a_one_process_ceiling() -> None:
    results = report.load(report.PAGE_DATA / "latest.json")

    page = report.page_text(results)

    assert "| project x2 |" in page
    assert "ceiling of **one** process: not like with like" in page
