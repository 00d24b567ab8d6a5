"""The Helm chart in deploy/chart: the same objects as the Kustomize kit, held to its checks.

The chart keeps no manifest of its own: it reads the kit's files through symlinks. What it
does on top (labels, the generated ConfigMap, components/redis's patches, values) could
still drift from what Kustomize makes, so every kit target is rendered both ways, with the
same settings, and the parsed objects must be equal. Then the kit's own checks (hardening,
probes, resources, policies, autoscaling, settings the pods parse) run on the chart's
objects, and the values the chart takes are held to values.schema.json.
"""

import argparse
import base64
import copy
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import tests.test_deploy as kit
from consumer import __version__
from consumer.settings import all_options, run_settings
from tests import helm
from tests.test_deploy_monitoring import documented_runbook_links, promtool, runbook_urls

Object = dict[str, Any]

CHART = helm.CHART
PROD_VALUES = CHART / "ci" / "prod-values.yaml"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())

# Each kit target and the chart settings that stand for it: (values files, --set). The
# chart installs the alerts and dashboard too, so its objects are compared with the
# target's plus deploy/monitoring's (with the runbook links for the last one).
SAME_SETTINGS: dict[str, tuple[tuple[Path, ...], tuple[str, ...], tuple[str, ...]]] = {
    "base": ((), (), ("base", "monitoring")),
    "dev": (
        (),
        ("config.bootstrap-servers=kafka:9092", "config.security-protocol=PLAINTEXT"),
        ("dev", "monitoring"),
    ),
    "prod": ((PROD_VALUES,), (), ("prod", "monitoring")),
    "prod+podmonitor": (
        (PROD_VALUES,),
        ("podMonitor.enabled=true",),
        ("prod+podmonitor", "monitoring"),
    ),
    "monitoring+runbook-links": (
        (),
        (f"prometheusRule.runbookBaseUrl={kit.RUNBOOK_BASE}",),
        ("base", "monitoring+runbook-links"),
    ),
}

# Only what Helm adds to say whose an object is, never part of what a pod runs with.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
# The chart's ConfigMap keeps its name and rolls the pods by this annotation instead of
# Kustomize's hash suffix (the suffix alphabet kustomize encodes its hash in).
CHECKSUM = "checksum/config"
KUSTOMIZE_HASH = re.compile(r"^(.+)-[2456789bcdfghkmt]{10}$")


@pytest.fixture(scope="module")
def kustomized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    """The kit's targets, rendered as tests/test_deploy.py renders them."""
    out = {name: kit.kustomize(kit.DEPLOY / path) for name, path in kit.TARGETS.items()}
    for name, (overlay, component) in kit.COMPONENTS.items():
        work = tmp_path_factory.mktemp(name.replace("+", "-"))
        (work / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(kit.DEPLOY / overlay, work)],
                    "components": [os.path.relpath(kit.DEPLOY / component, work)],
                    **kit.COMPONENT_INPUTS.get(name, {}),
                }
            )
        )
        out[name] = kit.kustomize(work)
    return out


@pytest.fixture(scope="module")
def charted() -> dict[str, list[Object]]:
    return {
        target: helm.render(*values, sets=sets)
        for target, (values, sets, _) in SAME_SETTINGS.items()
    }


def comparable_chart(objects: list[Object]) -> dict[tuple[str, str], Object]:
    out = {}
    for obj in copy.deepcopy(objects):
        labels = obj["metadata"].get("labels", {})
        for key in HELM_LABELS:
            labels.pop(key, None)
        if "labels" in obj["metadata"] and not labels:
            del obj["metadata"]["labels"]
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]["metadata"]
            template.get("annotations", {}).pop(CHECKSUM, None)
            if template.get("annotations") == {}:
                del template["annotations"]
        out[obj["kind"], obj["metadata"]["name"]] = obj
    return out


def comparable_kit(objects: list[Object]) -> dict[tuple[str, str], Object]:
    objects = copy.deepcopy(objects)
    renamed = {}
    for obj in objects:
        found = KUSTOMIZE_HASH.match(obj["metadata"]["name"])
        if obj["kind"] == "ConfigMap" and found:
            renamed[obj["metadata"]["name"]] = obj["metadata"]["name"] = found[1]
    for obj in objects:
        for value in kit.walk(obj):
            if isinstance(value, dict) and value.get("name") in renamed:
                value["name"] = renamed[value["name"]]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def differences(chart: list[Object], kustomized: list[Object]) -> list[str]:
    """How the chart's objects differ from the kit's, one line per object; [] when equal."""
    ours, theirs = comparable_chart(chart), comparable_kit(kustomized)
    out = [f"only the chart makes {key}" for key in ours.keys() - theirs.keys()]
    out += [f"only the kit makes {key}" for key in theirs.keys() - ours.keys()]
    for key in sorted(ours.keys() & theirs.keys()):
        out += [f"{key} {where}" for where in _diff(ours[key], theirs[key], "")]
    return out


def _diff(chart: Any, kit_value: Any, path: str) -> list[str]:
    """Where two parsed values differ, as `.path: chart X, kit Y` lines."""
    if isinstance(chart, dict) and isinstance(kit_value, dict):
        return [
            line
            for key in sorted(chart.keys() | kit_value.keys())
            for line in _diff(chart.get(key), kit_value.get(key), f"{path}.{key}")
        ]
    if isinstance(chart, list) and isinstance(kit_value, list) and len(chart) == len(kit_value):
        return [
            line
            for i, (a, b) in enumerate(zip(chart, kit_value, strict=True))
            for line in _diff(a, b, f"{path}[{i}]")
        ]
    return [] if chart == kit_value else [f"{path}: chart {chart!r}, kit {kit_value!r}"]


# --- one source of truth ------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(SAME_SETTINGS))
def test_chart_makes_the_very_objects_the_kit_makes_with_the_same_settings(
    kustomized: dict[str, list[Object]], charted: dict[str, list[Object]], target: str
) -> None:
    expected = [o for name in SAME_SETTINGS[target][2] for o in kustomized[name]]
    assert differences(charted[target], expected) == []


def test_the_comparison_sees_a_changed_field_a_missing_object_and_an_extra_one(
    kustomized: dict[str, list[Object]], charted: dict[str, list[Object]]
) -> None:
    """The check above is not vacuous: normalising must not hide what a pod runs with."""
    expected = [*kustomized["prod"], *kustomized["monitoring"]]
    chart = copy.deepcopy(charted["prod"])
    kit.named(chart, "Deployment")["spec"]["replicas"] = 4
    kit.container(chart)["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "other"
    kit.named(chart, "ConfigMap")["data"]["SESSION_METRICS_LOG_LEVEL"] = "debug"
    found = differences(chart, expected)
    assert [line.split(": chart")[0] for line in found] == [
        "('ConfigMap', 'session-metrics') .data.SESSION_METRICS_LOG_LEVEL",
        "('Deployment', 'session-metrics') .spec.replicas",
        "('Deployment', 'session-metrics') .spec.template.spec.containers[0].env[0].valueFrom"
        ".secretKeyRef.name",
    ]
    assert differences([*chart, {"kind": "Secret", "metadata": {"name": "x"}}], expected)[0] == (
        "only the chart makes ('Secret', 'x')"
    )
    assert differences(chart[1:], expected)[0].startswith("only the kit makes")


def test_chart_reads_the_kit_through_symlinks_and_holds_no_manifest_of_its_own() -> None:
    links = {p.name: os.readlink(p) for p in (CHART / "files").iterdir()}
    assert links == {
        "base": "../../../base",
        "components": "../../../components",
        "monitoring": "../../../monitoring",
        "scaledobject.yaml": "../../../overlays/prod/scaledobject.yaml",
    }
    for path in (CHART / "files").iterdir():
        assert path.exists(), f"{path} leads nowhere"
    for template in (CHART / "templates").glob("*.yaml"):
        assert "apiVersion:" not in template.read_text(), f"{template.name} writes a manifest"


def test_chart_versions_are_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    image: str = kit.container(helm.render())["image"]
    assert image == f"session-metrics:{__version__}"


# --- the kit's checks on the chart's objects -----------------------------------------

KIT_CHECKS: list[tuple[Callable[..., None], tuple[str, ...]]] = [
    (kit.test_every_pod_runs_locked_down_with_probes_and_resources, ("dev", "prod")),
    (kit.test_worker_pods_run_as_the_image_user_with_no_token_spread_over_zones, ("dev", "prod")),
    (kit.test_probes_ports_and_scrape_path_match_the_http_server, ("dev", "prod")),
    (kit.test_selectors_pick_the_pods_of_the_deployment, ("dev", "prod")),
    (kit.test_network_policy_lets_out_only_dns_the_kafka_ports_and_redis, ("dev", "prod")),
    (kit.test_termination_grace_period_outlasts_the_drain_and_the_hand_over, ("dev", "prod")),
    (kit.test_a_terminating_worker_stays_a_scrape_target_until_it_exits, ("prod",)),
    (kit.test_every_session_metrics_variable_is_a_real_option, ("base", "dev", "prod")),
    (kit.test_image_tag_is_the_package_version, ("base", "prod")),
    (kit.test_no_password_is_written_in_any_manifest, ("base", "dev", "prod")),
]
WHOLE_KIT_CHECKS = [
    kit.test_worker_and_redis_selectors_never_pick_each_others_pods,
    kit.test_prod_autoscaling_follows_the_workers_own_lag_and_stays_within_the_partitions,
    kit.test_pod_disruption_budget_never_blocks_a_drain_on_unready_workers,
    kit.test_prod_pods_start_with_sasl_ssl_and_fail_fast_without_the_secret,
    kit.test_prod_workers_claim_sessions_in_the_kits_redis_with_its_password,
    kit.test_redis_is_one_pod_in_memory_that_refuses_claims_when_full,
    kit.test_only_the_workers_may_reach_redis_and_redis_reaches_nothing,
    kit.test_dev_pods_start_with_a_valid_plaintext_configuration,
]


@pytest.mark.parametrize(
    ("check", "target"),
    [(check, target) for check, targets in KIT_CHECKS for target in targets],
    ids=lambda v: v.__name__.removeprefix("test_") if callable(v) else v,
)
def test_the_kits_checks_pass_on_the_charts_objects(
    charted: dict[str, list[Object]], check: Callable[..., None], target: str
) -> None:
    check(charted, target)


@pytest.mark.parametrize("check", WHOLE_KIT_CHECKS, ids=lambda f: f.__name__[5:])
def test_the_kits_prod_and_dev_checks_pass_on_the_charts_objects(
    charted: dict[str, list[Object]], check: Callable[..., None]
) -> None:
    check(charted)


def test_chart_installs_every_kind_the_prod_overlay_and_monitoring_have(
    charted: dict[str, list[Object]],
) -> None:
    kinds = {o["kind"] for o in charted["prod"]}
    assert kinds == kit.EXPECTED_KINDS["prod"] | kit.EXPECTED_KINDS["monitoring"]
    assert {o["kind"] for o in charted["prod+podmonitor"]} == (
        kit.EXPECTED_KINDS["prod+podmonitor"] | kit.EXPECTED_KINDS["monitoring"]
    )


@pytest.mark.parametrize("version", kit.KUBERNETES_VERSIONS)
def test_chart_objects_validate_against_the_kubernetes_schemas(
    charted: dict[str, list[Object]], secrets_made: list[Object], version: str
) -> None:
    for obj in [*charted["prod"], *charted["prod+podmonitor"], *secrets_made]:
        if obj["kind"] in kit.CUSTOM_SCHEMAS:
            jsonschema.validate(obj, kit.CUSTOM_SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} {where}: {exc.message}")


def test_chart_alert_rules_pass_promtool(charted: dict[str, list[Object]], tmp_path: Path) -> None:
    for target in ("prod", "monitoring+runbook-links"):
        (rule,) = [o for o in charted[target] if o["kind"] == "PrometheusRule"]
        path = tmp_path / f"{target}.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        done = promtool("check", "rules", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


# --- helm lint, values and their schema -----------------------------------------------


@pytest.mark.parametrize("values", [(), (PROD_VALUES,)], ids=["default", "prod"])
def test_helm_lint_passes(values: tuple[Path, ...]) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", helm.KUBE_VERSION]
    for path in values:
        args += ["-f", str(path)]
    done = helm.run(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def config_schema() -> dict[str, Any]:
    properties: dict[str, Any] = SCHEMA["properties"]["config"]["properties"]
    return properties


def test_every_run_option_is_a_value_under_its_documented_name() -> None:
    flags = {o.flag.removeprefix("--"): o for o in all_options() if o.flag_allowed}
    properties = config_schema()
    assert set(properties) == set(flags)
    for name, opt in flags.items():
        assert opt.env in properties[name]["description"]
        if opt.choices:
            assert properties[name]["enum"] == list(opt.choices)
    no_flag = {o.flag.removeprefix("--") for o in all_options() if not o.flag_allowed}
    assert set(SCHEMA["properties"]["secretEnv"]["propertyNames"]["enum"]) == no_flag


def typed(schema: dict[str, Any], text: str) -> Any:
    """An option's default text as a values file would hold it."""
    kind = schema["type"]
    if kind == "boolean":
        return text == "true"
    return {"integer": int, "number": float}.get(kind, str)(text)


def test_every_option_set_in_values_reaches_the_pods_as_the_service_parses_it(
    tmp_path: Path,
) -> None:
    """Each option with a default, set to that default in values (numbers as YAML numbers):
    the ConfigMap carries text the service parses to the same settings."""
    properties = config_schema()
    config = {
        opt.flag.removeprefix("--"): typed(properties[opt.flag.removeprefix("--")], opt.default)
        for opt in all_options()
        if opt.flag_allowed and opt.default is not None
    }
    jsonschema.validate(config, SCHEMA["properties"]["config"])
    config |= {"bootstrap-servers": "kafka:9092", "topic": "sessions", "dlq-topic": ""}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": config}))
    env = kit.pod_environment(helm.render(values), {})
    assert "SESSION_METRICS_DLQ_TOPIC" not in env  # "" drops the kit's default
    defaults = {"SESSION_METRICS_BOOTSTRAP_SERVERS": "kafka:9092"}
    defaults |= {"SESSION_METRICS_TOPIC": "sessions", "SESSION_METRICS_METRICS_HOST": "0.0.0.0"}
    assert run_settings(argparse.Namespace(), environ=env) == run_settings(
        argparse.Namespace(), environ=defaults
    )


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "config.security-protocol=SASL_TLS",
            "at '/config/security-protocol': value must be one of 'PLAINTEXT', 'SSL', "
            "'SASL_PLAINTEXT', 'SASL_SSL'",
        ),
        ("config.max-series=0", "at '/config/max-series': minimum: got 0, want 1"),
        (
            "config.bootstrap-servers=kafka",
            "at '/config/bootstrap-servers': 'kafka' does not match",
        ),
        ("config.max_series=5", "at '/config': additional properties 'max_series' not allowed"),
        ("replicaCount=many", "at '/replicaCount': got string, want null or integer"),
    ],
)
def test_schema_rejects_a_wrong_value_naming_it(assignment: str, message: str) -> None:
    error = helm.refuses(sets=(assignment,))
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def test_a_grace_period_shorter_than_the_hand_over_is_refused() -> None:
    error = helm.refuses(sets=("config.handover-timeout=120",))
    assert "terminationGracePeriodSeconds 80 is shorter than" in error
    objects = helm.render(sets=("config.handover-timeout=120", "terminationGracePeriodSeconds=140"))
    assert kit.pod_spec(objects)["terminationGracePeriodSeconds"] == 140


# --- what only the chart does ---------------------------------------------------------


@pytest.fixture(scope="module")
def secrets_made() -> list[Object]:
    """The Secrets the chart makes when given their contents."""
    objects = helm.render(
        PROD_VALUES,
        sets=(
            "kafka.sasl.username=session-metrics",
            f"kafka.sasl.password={kit.KAFKA_SECRET['password']}",
            f"redis.auth.password={kit.REDIS_SECRET['password']}",
            "kafka.tls.ca=-----BEGIN CERTIFICATE-----",
        ),
    )
    return [o for o in objects if o["kind"] == "Secret"]


def test_chart_makes_the_secrets_the_pods_read_when_given_their_contents(
    secrets_made: list[Object],
) -> None:
    data = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in secrets_made
    }
    assert data == {
        "session-metrics-kafka": kit.KAFKA_SECRET,
        kit.REDIS: kit.REDIS_SECRET,
        "session-metrics-kafka-tls": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
    }


def test_existing_secrets_and_a_private_ca_reach_the_pods() -> None:
    objects = helm.render(
        PROD_VALUES,
        sets=(
            "kafka.sasl.existingSecret=kafka-user",
            "redis.auth.existingSecret=redis-auth",
            "kafka.tls.existingSecret=my-cluster-cluster-ca-cert",
            "secretEnv.metrics-auth-password.secret=scrape",
            "secretEnv.metrics-auth-password.key=password",
        ),
    )
    assert "Secret" not in {o["kind"] for o in objects}
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"] for v in kit.container(objects)["env"]
    }
    assert refs == {
        "SESSION_METRICS_DEDUP_STORE_PASSWORD": "redis-auth",
        "SESSION_METRICS_SASL_USERNAME": "kafka-user",
        "SESSION_METRICS_SASL_PASSWORD": "kafka-user",
        "SESSION_METRICS_METRICS_AUTH_PASSWORD": "scrape",
    }
    (server,) = kit.container(objects, kit.REDIS)["env"]
    assert server["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    (volume,) = kit.pod_spec(objects)["volumes"]
    assert volume["secret"] == {"secretName": "my-cluster-cluster-ca-cert"}
    (mount,) = kit.container(objects)["volumeMounts"]
    assert mount["readOnly"] is True
    env = kit.pod_environment(
        objects,
        {
            "kafka-user": kit.KAFKA_SECRET,
            "redis-auth": kit.REDIS_SECRET,
            "scrape": {"password": "p"},
        },
    )
    assert env["SESSION_METRICS_SSL_CAFILE"] == f"{mount['mountPath']}/ca.crt"


def test_a_packaged_chart_carries_the_kit_and_renders_the_same(
    charted: dict[str, list[Object]], tmp_path: Path
) -> None:
    """`helm package` copies what the symlinks lead to: the .tgz stands on its own."""
    done = helm.run("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("session-metrics-*.tgz")
    args = helm.template_args(PROD_VALUES)
    args[2] = str(package)
    packaged = helm.run(*args)
    assert packaged.returncode == 0, packaged.stderr
    assert [o for o in yaml.safe_load_all(packaged.stdout) if o] == charted["prod"]


def test_redis_is_sized_from_values_and_still_refuses_claims_when_full(tmp_path: Path) -> None:
    memory = {"cpu": "1", "memory": "1Gi"}
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {"redis": {"maxmemory": "768mb", "resources": {"requests": memory, "limits": memory}}}
        )
    )
    objects = helm.render(PROD_VALUES, values)
    args = kit.container(objects, kit.REDIS)["args"]
    assert args[args.index("--maxmemory") + 1] == "768mb"
    kit.test_redis_is_one_pod_in_memory_that_refuses_claims_when_full({"prod": objects})


def test_a_runbook_base_url_set_for_kustomize_reaches_the_charts_alerts_too(
    tmp_path: Path,
) -> None:
    """Where docs/operations.md has Kustomize users set it, in deploy/monitoring itself:
    the chart reads it there, so the URL is set once for both."""
    deploy = tmp_path / "deploy"
    shutil.copytree(kit.DEPLOY, deploy, symlinks=True)
    monitoring = deploy / "monitoring"
    kustomization = yaml.safe_load((monitoring / "kustomization.yaml").read_text())
    lines = documented_runbook_links()
    kustomization["components"] = lines["components"]
    kustomization["configMapGenerator"] += lines["configMapGenerator"]
    (monitoring / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    chart = helm.render(chart=deploy / CHART.relative_to(kit.DEPLOY))
    assert differences(chart, kit.kustomize(deploy / "base") + kit.kustomize(monitoring)) == []
    assert all(runbook_urls(chart).values())
