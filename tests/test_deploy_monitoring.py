"""Alerts and dashboard in deploy/monitoring: PromQL that parses, fires when it should, and
names only metrics a running worker really exports; each alert's first steps, and runbook
links only where the user says where the runbooks live (components/runbook-links)."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from consumer.broker import EmbeddedBroker
from consumer.produce import produce
from consumer.settings import all_options
from tests.conftest import TopicFactory, WorkerFactory, eventually, settings_for
from tests.kustomize import command as kustomize_command
from tests.kustomize import render

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"

# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = {"up"}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
CLAUSES = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"

# Grafana's variables and what stands in for them when promtool checks a panel's query.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}


def rule_groups() -> list[dict[str, Any]]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return board


def dashboard_queries() -> list[str]:
    """Every panel query, with Grafana's variables replaced by values promtool accepts."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, duration in GRAFANA_DURATIONS.items():
                expr = expr.replace(variable, duration)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $workspace, $project: any value
            out.append(expr)
    return out


def variable_metrics() -> set[str]:
    """Metrics named by the dashboard's `label_values(metric, label)` variables."""
    names = set()
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*[{,].*\)", query)
            assert match, query
            names.add(match.group(1))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left of the identifiers once strings,
    label matchers, ranges, grouping clauses, function calls and keywords are gone."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(CLAUSES, " ", text)
    names = set()
    # Not after a digit or a dot, so the `m` of `5m` or the `e` of `1e3` is no name.
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.groups()
        if call is None and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    # `make test` installs Debian's prometheus package; CI must not silently skip this.
    assert binary, "promtool not on PATH: run the tests with `make test`"
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=60)


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# --- the name extraction itself ----------------------------------------------------


def test_metric_names_are_found_past_functions_labels_clauses_and_durations() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, workspace_id) (rate(a_bucket{b="c d", le!="1"}'
        "[5m] offset 1h))) > 1e3 and on (topic) deriv(sum without (x) (lag)[15m:1m]) "
        '> bool 0 or absent(up{job="j"}) unless count(x_total) * inf'
    )
    assert metric_names(expr) == {"a_bucket", "lag", "up", "x_total"}


# --- alert rules -------------------------------------------------------------------


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    done = promtool("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_alerts_cover_what_an_operator_must_hear_about() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert names == {
        "SessionMetricsDown",
        "SessionMetricsNotReady",
        "SessionMetricsLagHighAndGrowing",
        "SessionMetricsNoNewEvents",
        "SessionMetricsDeadLettering",
        "SessionMetricsDeadLetterFailures",
        "SessionMetricsSeriesOverflow",
        "SessionMetricsCommitFailures",
    }


def guide_anchors() -> set[str]:
    guide = (ROOT / "docs" / "operations.md").read_text()
    return {github_anchor(h) for h in re.findall(r"^#{2,6} (.+)$", guide, re.MULTILINE)}


def test_every_alert_says_what_it_means_and_what_to_check_first() -> None:
    anchors = guide_anchors()
    for rule in alerts():
        notes = rule["annotations"]
        # No runbook_url here: only components/runbook-links adds one, from the user's URL.
        assert set(notes) == {"summary", "description", "first_steps"}, rule["alert"]
        assert all(text.strip() for text in notes.values()), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        # Something to run: a query, or a kubectl command.
        assert runbook_queries(rule) or "`kubectl " in notes["first_steps"], rule["alert"]
        assert github_anchor(rule["alert"]) in anchors, f"no runbook for {rule['alert']}"


def runbook_queries(rule: dict[str, Any]) -> list[str]:
    """The PromQL quoted in an alert's first steps (a quoted snippet that names a metric),
    its `{{ $labels.x }}` templates filled in as Prometheus would."""
    snippets = re.findall(r"`([^`]+)`", rule["annotations"]["first_steps"])
    queries = [re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", r"\1", s) for s in snippets]
    return [q for q in queries if re.search(r"\b(?:session_consumer|llm_session)", q)]


def test_the_queries_in_the_first_steps_parse(tmp_path: Path) -> None:
    queries = [q for rule in alerts() for q in runbook_queries(rule)]
    assert len(queries) >= 8
    rules = [{"record": f"runbook:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "runbook-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_first_steps_name_real_options_and_log_lines() -> None:
    options = {o.env for o in all_options()}
    code = "\n".join(p.read_text() for p in (ROOT / "consumer").glob("*.py"))
    for rule in alerts():
        steps = rule["annotations"]["first_steps"]
        assert set(re.findall(r"SESSION_METRICS_\w+", steps)) <= options, rule["alert"]
        # Outside the quoted commands and queries, "..." is a line of the workers' logs.
        for line in re.findall(r'"([^"]+)"', re.sub(r"`[^`]*`", " ", steps)):
            assert f'"{line}"' in code, f"{rule['alert']}: no log line {line!r}"


RUNBOOK_LINKS = ROOT / "deploy" / "components" / "runbook-links"


def documented_runbook_links() -> dict[str, Any]:
    """The lines docs/operations.md has the user add to turn the links on."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("\n## Alert runbooks\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL) if "runbook" in b]
    lines: dict[str, Any] = yaml.safe_load(block)
    return lines


def runbook_urls(objects: list[dict[str, Any]]) -> dict[str, str | None]:
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return {
        r["alert"]: r["annotations"].get("runbook_url")
        for g in rule["spec"]["groups"]
        for r in g["rules"]
    }


def test_alerts_have_no_runbook_url_unless_the_user_sets_where_runbooks_live() -> None:
    urls = runbook_urls(render(MONITORING))
    assert urls == {rule["alert"]: None for rule in alerts()}


def with_runbook_links(tmp_path: Path, placement: str, lines: dict[str, Any]) -> Path:
    """A kustomization with the documented lines: in a copy of deploy/monitoring's own
    kustomization.yaml, or in an overlay of the user's over deploy/monitoring."""
    if placement == "in deploy/monitoring":
        monitoring = tmp_path / "deploy" / "monitoring"
        shutil.copytree(MONITORING, monitoring)
        shutil.copytree(RUNBOOK_LINKS, tmp_path / "deploy" / "components" / "runbook-links")
        kustomization = yaml.safe_load((monitoring / "kustomization.yaml").read_text())
        kustomization["components"] = lines["components"]
        kustomization["configMapGenerator"] += lines["configMapGenerator"]
        (monitoring / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return monitoring
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {
        **lines,
        "resources": [os.path.relpath(MONITORING, overlay)],
        "components": [os.path.relpath(RUNBOOK_LINKS, overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


@pytest.mark.parametrize("placement", ["in deploy/monitoring", "in an overlay of your own"])
def test_the_documented_base_url_gives_every_alert_a_link_to_its_runbook(
    tmp_path: Path, placement: str
) -> None:
    lines = documented_runbook_links()
    assert lines["components"] == ["../components/runbook-links"]
    (generator,) = lines["configMapGenerator"]
    (literal,) = generator["literals"]
    key, _, base = literal.partition("=")
    assert key == "base_url"
    assert base.endswith("/docs/operations.md")

    objects = render(with_runbook_links(tmp_path, placement, lines))

    anchors = guide_anchors()
    for alert, url in runbook_urls(objects).items():
        assert url == f"{base}#{github_anchor(alert)}"
        assert github_anchor(alert) in anchors
    # The base URL is an input of the build, never an object applied to the cluster.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"] == [
        "session-metrics-dashboard"
    ]
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def build_fails(directory: Path) -> str:
    done = subprocess.run(
        [*kustomize_command(), str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def test_runbook_links_without_a_base_url_stop_the_build(tmp_path: Path) -> None:
    lines = {**documented_runbook_links(), "configMapGenerator": []}
    error = build_fails(with_runbook_links(tmp_path, "in an overlay of your own", lines))
    assert "no resource matches" in error
    assert "session-metrics-runbooks" in error


def test_runbook_links_refuse_alerts_that_moved_rather_than_link_the_wrong_runbook(
    tmp_path: Path,
) -> None:
    """The anchors are added by position: a rule file in another order must not build."""
    directory = with_runbook_links(tmp_path, "in deploy/monitoring", documented_runbook_links())
    path = directory / "prometheusrule.yaml"
    rule = yaml.safe_load(path.read_text())
    rules = rule["spec"]["groups"][0]["rules"]
    rules[0], rules[1] = rules[1], rules[0]
    path.write_text(yaml.safe_dump(rule))
    assert "test" in build_fails(directory).lower()


# Each alert against series that should fire it, and against healthy series that should
# not. Annotations are left out of the copy under test: `check rules` already parses them.
ALERT_CASES: list[tuple[str, dict[str, str], dict[str, str]]] = [
    (
        "SessionMetricsDown",
        {"up{job='session-metrics',pod='p'}": "0x40"},
        {"job": "session-metrics", "pod": "p"},
    ),
    # No target at all: absent() fires with the job label only.
    ("SessionMetricsDown", {"up{job='other',pod='p'}": "1x40"}, {"job": "session-metrics"}),
    (
        "SessionMetricsNotReady",
        {"session_consumer_assigned_partitions{pod='p'}": "0x40"},
        {"pod": "p"},
    ),
    (
        "SessionMetricsLagHighAndGrowing",
        {"session_consumer_lag_records{topic='t',partition='0'}": "200000+1000x40"},
        {"topic": "t"},
    ),
    (
        "SessionMetricsLagHighAndGrowing",
        {
            "session_consumer_lag_seconds{topic='t',partition='0'}": "600+10x40",
            "session_consumer_lag_records{topic='t',partition='0'}": "10+10x40",
        },
        {"topic": "t"},
    ),
    (
        "SessionMetricsNoNewEvents",
        {"session_consumer_messages_total{outcome='counted',pod='p'}": "100x40"},
        {},
    ),
    ("SessionMetricsDeadLettering", {"session_consumer_dead_lettered_total": "0+1x40"}, {}),
    (
        "SessionMetricsDeadLetterFailures",
        {"session_consumer_dead_letter_failures_total": "0+1x40"},
        {},
    ),
    (
        "SessionMetricsSeriesOverflow",
        {"session_consumer_series_overflow_total": "0+5x40"},
        {},
    ),
    (
        "SessionMetricsCommitFailures",
        {"session_consumer_commit_failures_total{namespace='n',pod='p'}": "0+1x40"},
        {"namespace": "n", "pod": "p"},
    ),
]

# Healthy series: none of the alerts may fire on them.
HEALTHY = {
    "up{job='session-metrics',pod='p'}": "1x40",
    "session_consumer_assigned_partitions{pod='p'}": "3x40",
    "session_consumer_lag_records{topic='t',partition='0'}": "200000-1000x40",
    "session_consumer_lag_seconds{topic='t',partition='0'}": "2x40",
    "session_consumer_messages_total{outcome='counted',pod='p'}": "0+100x40",
    "session_consumer_dead_lettered_total": "7x40",
    "session_consumer_dead_letter_failures_total": "0x40",
    "session_consumer_series_overflow_total": "0x40",
    "session_consumer_commit_failures_total{namespace='n',pod='p'}": "2x40",
}


def test_alerts_fire_on_the_conditions_they_describe_and_not_on_healthy_series(
    tmp_path: Path,
) -> None:
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule_groups()
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    severity = {r["alert"]: r["labels"]["severity"] for r in alerts()}
    tests = []
    for alert, series, labels in ALERT_CASES:
        fires = [{"exp_labels": {**labels, "severity": severity[alert]}}]
        tests.append(_case(series, alert, fires))
    tests += [_case(HEALTHY, alert, []) for alert in severity]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    done = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _case(series: dict[str, str], alert: str, fires: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [
            {"series": name.replace("'", '"'), "values": values} for name, values in series.items()
        ],
        "alert_rule_test": [{"eval_time": "35m", "alertname": alert, "exp_alerts": fires}],
    }


# --- dashboard ---------------------------------------------------------------------


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    assert not any("$" in q for q in queries)
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for words in (
        "cost per hour by workspace",
        "by project",
        "tokens",
        "duration p50, p95, p99",
        "events per second",
        "lag",
        "invalid",
        "dead-letter",
    ):
        assert words in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]


# --- against a running worker ------------------------------------------------------


def referenced_metrics() -> set[str]:
    names = variable_metrics()
    for rule in alerts():
        names |= metric_names(rule["expr"])
        for query in runbook_queries(rule):
            names |= metric_names(query)
    for query in dashboard_queries():
        names |= metric_names(query)
    return names | metric_names(autoscaling_query())


def autoscaling_query() -> str:
    """The prod overlay's KEDA query: it scales on what a worker exports."""
    path = MONITORING.parent / "overlays" / "prod" / "scaledobject.yaml"
    (trigger,) = yaml.safe_load(path.read_text())["spec"]["triggers"]
    query: str = trigger["metadata"]["query"]
    return query


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


@pytest.mark.broker
async def test_every_metric_the_alerts_and_dashboard_use_is_exported_by_a_worker(
    broker: EmbeddedBroker,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    start_worker: WorkerFactory,
) -> None:
    topic, dlq = await new_topic(partitions=2), await new_topic(partitions=1)
    await produce(
        producer, topic, count=400, rate=None, seed=44, invalid_ratio=0.05, duplicate_ratio=0.05
    )
    run = await start_worker(settings_for(broker.bootstrap, topic, dlq_topic=dlq))
    await eventually(lambda: run.counted() == 400)

    async def scrape() -> str:
        # The worker serves on this event loop: fetch from a thread.
        return await asyncio.to_thread(fetch, run.url + "/metrics")

    async def lag_is_reported() -> bool:
        return "session_consumer_lag_seconds{" in await scrape()

    await eventually(lag_is_reported, within=20)
    exported = {
        sample.name
        for family in text_string_to_metric_families(await scrape())
        for sample in family.samples
    }
    assert "session_consumer_dead_lettered_total" in exported
    # A histogram's own name is what a query of its native form selects (the dashboard
    # has a native twin of each quantile: --native-histograms).
    exported |= {name.removesuffix("_bucket") for name in exported if name.endswith("_bucket")}
    referenced = referenced_metrics()
    assert len(referenced) >= 15  # the extraction found real names, not nothing
    assert referenced - SYNTHETIC <= exported, sorted(referenced - SYNTHETIC - exported)
