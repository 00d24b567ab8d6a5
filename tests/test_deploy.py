"""The Kubernetes kit in deploy/: it renders, validates offline and agrees with the service.

Every kustomization is rendered with `kubectl kustomize` or `kustomize build`; built-in
objects are checked against the Kubernetes schemas that kubernetes-validate bundles, custom
resources against small schemas of their required fields, and the settings the pods would
run with are parsed by the service's own settings code.
"""

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.http import Probes, make_app
from consumer.settings import ConfigError, Settings, all_options, run_settings
from tests.kustomize import render

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# The oldest Kubernetes the kit supports (PDB unhealthyPodEvictionPolicy, topology spread
# matchLabelKeys) and the newest the bundled schemas know.
KUBERNETES_VERSIONS = ("1.29", "1.37")

Object = dict[str, Any]

# Kustomizations a user applies, by name; "prod+podmonitor" is prod with the PodMonitor
# component, rendered through a kustomization written at test time.
TARGETS = {
    "base": "base",
    "dev": "overlays/dev",
    "prod": "overlays/prod",
    "monitoring": "monitoring",
}
COMPONENTS = {"prod+podmonitor": ("overlays/prod", "components/podmonitor")}

WORKLOAD = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
EXPECTED_KINDS = {
    "base": WORKLOAD | {"ServiceMonitor"},
    "dev": WORKLOAD | {"ServiceMonitor"},
    "prod": WORKLOAD | {"ServiceMonitor", "ScaledObject"},
    "prod+podmonitor": WORKLOAD | {"PodMonitor", "ScaledObject"},
    "monitoring": {"PrometheusRule", "ConfigMap"},
}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STR = {"type": "string", "minLength": 1}
_SELECTOR = _obj([], matchLabels={"type": "object", "minProperties": 1})
_METADATA = _obj(["name"], name=_STR)

# Required fields of each custom resource, from the CRDs of Prometheus Operator (v1) and
# KEDA (v1alpha1), plus the fields this kit relies on (a port by name, a kafka trigger).
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _obj(
        ["apiVersion", "metadata", "spec"],
        apiVersion={"const": "monitoring.coreos.com/v1"},
        metadata=_METADATA,
        spec=_obj(
            ["selector", "endpoints"],
            selector=_SELECTOR,
            endpoints={"type": "array", "minItems": 1, "items": _obj(["port"], port=_STR)},
        ),
    ),
    "PodMonitor": _obj(
        ["apiVersion", "metadata", "spec"],
        apiVersion={"const": "monitoring.coreos.com/v1"},
        metadata=_METADATA,
        spec=_obj(
            ["selector", "podMetricsEndpoints"],
            selector=_SELECTOR,
            podMetricsEndpoints={
                "type": "array",
                "minItems": 1,
                "items": _obj(["port"], port=_STR),
            },
        ),
    ),
    "PrometheusRule": _obj(
        ["apiVersion", "metadata", "spec"],
        apiVersion={"const": "monitoring.coreos.com/v1"},
        metadata=_METADATA,
        spec=_obj(
            ["groups"],
            groups={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["name", "rules"],
                    name=_STR,
                    rules={
                        "type": "array",
                        "minItems": 1,
                        "items": _obj(["alert", "expr"], alert=_STR, expr=_STR),
                    },
                ),
            },
        ),
    ),
    "ScaledObject": _obj(
        ["apiVersion", "metadata", "spec"],
        apiVersion={"const": "keda.sh/v1alpha1"},
        metadata=_METADATA,
        spec=_obj(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=_obj(["name"], name=_STR),
            minReplicaCount={"type": "integer", "minimum": 0},
            maxReplicaCount={"type": "integer", "minimum": 1},
            triggers={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["type", "metadata"],
                    type=_STR,
                    metadata={"type": "object", "additionalProperties": {"type": "string"}},
                ),
            },
        ),
    ),
}


def kustomize(directory: Path) -> list[Object]:
    return render(directory)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    out = {name: kustomize(DEPLOY / path) for name, path in TARGETS.items()}
    for name, (overlay, component) in COMPONENTS.items():
        work = tmp_path_factory.mktemp(name.replace("+", "-"))
        # kustomize takes only relative paths to other kustomizations.
        (work / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(DEPLOY / overlay, work)],
                    "components": [os.path.relpath(DEPLOY / component, work)],
                }
            )
        )
        out[name] = kustomize(work)
    return out


def only(objects: list[Object], kind: str) -> Object:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[Object]) -> Object:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: Object = containers[0]
    return found


def pod_environment(objects: list[Object], secret: dict[str, str] | None) -> dict[str, str]:
    """The SESSION_METRICS_* variables a pod would see, `secret` being the Secret's data."""
    by_name = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    c = container(objects)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(by_name[source["configMapRef"]["name"]]["data"])
    for var in c.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env[var["name"]] = var["value"]
        elif secret is not None:
            env[var["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{var['name']} needs a Secret"
    return env


def pod_settings(objects: list[Object], secret: dict[str, str] | None = None) -> Settings:
    """What `session-metrics run` parses from that environment, with no flags."""
    return run_settings(argparse.Namespace(), environ=pod_environment(objects, secret))


# KEDA's names for the SASL mechanisms the service accepts.

FAKE_SECRET = {"username": "session-metrics", "password": "not-a-real-password"}


def walk(value: Any) -> Iterator[Any]:
    """Every value nested in a parsed manifest, containers included."""
    yield value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            yield from walk(child)


# --- rendering and schemas --------------------------------------------------------


def test_every_kustomization_in_deploy_is_rendered_by_these_tests() -> None:
    found = {str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml")}
    covered = set(TARGETS.values()) | {c for pair in COMPONENTS.values() for c in pair}
    assert found == covered


@pytest.mark.parametrize("target", sorted(EXPECTED_KINDS))
def test_each_kustomization_renders_the_objects_it_promises(
    rendered: dict[str, list[Object]], target: str
) -> None:
    kinds = [o["kind"] for o in rendered[target]]
    assert set(kinds) == EXPECTED_KINDS[target]
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered[target]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_validate_strictly_against_the_kubernetes_schemas(
    rendered: dict[str, list[Object]], version: str
) -> None:
    checked = 0
    for target, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_SCHEMAS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{target}: {obj['kind']} {where}: {exc.message}")
            checked += 1
    assert checked >= 20


def test_custom_resources_have_their_required_fields(
    rendered: dict[str, list[Object]],
) -> None:
    seen = set()
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] in CUSTOM_SCHEMAS:
                jsonschema.validate(obj, CUSTOM_SCHEMAS[obj["kind"]])
                seen.add(obj["kind"])
    assert seen == set(CUSTOM_SCHEMAS)


@pytest.mark.parametrize("kind", sorted(CUSTOM_SCHEMAS))
def test_custom_resource_schemas_reject_an_object_without_spec(kind: str) -> None:
    schema = CUSTOM_SCHEMAS[kind]
    api_version = schema["properties"]["apiVersion"]["const"]
    with pytest.raises(jsonschema.ValidationError, match="'spec' is a required property"):
        jsonschema.validate(
            {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, schema
        )


def test_the_podmonitor_component_replaces_the_servicemonitor_with_the_same_endpoint(
    rendered: dict[str, list[Object]],
) -> None:
    service_monitor = only(rendered["prod"], "ServiceMonitor")["spec"]
    pod_monitor = only(rendered["prod+podmonitor"], "PodMonitor")["spec"]
    assert pod_monitor["selector"] == service_monitor["selector"]
    assert pod_monitor["jobLabel"] == service_monitor["jobLabel"]
    assert pod_monitor["podMetricsEndpoints"] == service_monitor["endpoints"]


# --- the manifests agree with the service ----------------------------------------


@pytest.mark.parametrize("target", ["base", "dev", "prod"])
def test_every_session_metrics_variable_is_a_real_option(
    rendered: dict[str, list[Object]], target: str
) -> None:
    options = {o.env for o in all_options()}
    names = set(pod_environment(rendered[target], FAKE_SECRET))
    for obj in rendered[target]:
        for value in walk(obj):
            if isinstance(value, str) and value.startswith("SESSION_METRICS_"):
                names.add(value)
    assert len(names) >= 8
    assert names <= options, names - options


def test_dev_pods_start_with_a_valid_plaintext_configuration(
    rendered: dict[str, list[Object]],
) -> None:
    settings = pod_settings(rendered["dev"])
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.sasl_username is None
    assert only(rendered["dev"], "Deployment")["spec"]["replicas"] == 1


def test_prod_pods_start_with_sasl_ssl_and_fail_fast_without_the_secret(
    rendered: dict[str, list[Object]],
) -> None:
    settings = pod_settings(rendered["prod"], FAKE_SECRET)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password == FAKE_SECRET["password"]
    with pytest.raises(ConfigError, match="SESSION_METRICS_SASL_USERNAME"):
        pod_settings(rendered["prod"], secret=None)
    assert only(rendered["prod"], "Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_termination_grace_period_outlasts_the_drain_timeout(
    rendered: dict[str, list[Object]], target: str
) -> None:
    settings = pod_settings(rendered[target], FAKE_SECRET if target == "prod" else None)
    pod = only(rendered[target], "Deployment")["spec"]["template"]["spec"]
    # The drain, then a commit and leaving the group: keep a margin of 10 s for those.
    assert pod["terminationGracePeriodSeconds"] >= settings.drain_timeout + 10


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_probes_ports_and_scrape_path_match_the_http_server(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    settings = pod_settings(objects, FAKE_SECRET if target == "prod" else None)
    app = make_app(CollectorRegistry(), Probes(_no, _no))
    routes = {r.canonical for r in app.router.resources()}
    c = container(objects)
    (port,) = c["ports"]
    assert settings.metrics_host == "0.0.0.0"  # reachable from outside the container
    assert port["containerPort"] == settings.metrics_port
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in routes
        assert c[probe]["httpGet"]["port"] == port["name"]
    (service_port,) = only(objects, "Service")["spec"]["ports"]
    assert service_port["name"] == service_port["targetPort"] == port["name"]
    (endpoint,) = only(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] in routes


def _no() -> bool:
    return False


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_selectors_pick_the_pods_of_the_deployment(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        only(objects, "Deployment")["spec"]["selector"]["matchLabels"],
        only(objects, "Service")["spec"]["selector"],
        only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        only(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        only(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector
        assert selector.items() <= pod_labels.items()
    service_labels = only(objects, "Service")["metadata"]["labels"]
    assert selectors[-1].items() <= service_labels.items()


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_pods_run_locked_down(rendered: dict[str, list[Object]], target: str) -> None:
    objects = rendered[target]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    account = only(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()
    keys = {s["topologyKey"] for s in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert len(users) == 1, "the Dockerfile sets one numeric USER"
    return int(users[0])


@pytest.mark.parametrize("target", ["base", "prod"])
def test_image_tag_is_the_package_version(rendered: dict[str, list[Object]], target: str) -> None:
    image: str = container(rendered[target])["image"]
    assert image.rsplit(":", 1)[1] == __version__


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_network_policy_lets_out_only_dns_and_the_kafka_ports(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    settings = pod_settings(objects, FAKE_SECRET if target == "prod" else None)
    policy = only(objects, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    allowed = [
        (p["port"], p.get("endPort", p["port"]), p.get("protocol", "TCP"))
        for rule in policy["egress"]
        for p in rule["ports"]
    ]
    assert (53, 53, "UDP") in allowed
    for server in settings.kafka.bootstrap_servers.split(","):
        port = int(server.rsplit(":", 1)[1])
        assert any(low <= port <= high and proto == "TCP" for low, high, proto in allowed)
    assert len(allowed) == 3
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": container(objects)["ports"][0]["name"]}]
    (source,) = ingress["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_prod_autoscaling_follows_the_workers_own_lag_and_stays_within_the_partitions(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    scaled = only(objects, "ScaledObject")["spec"]
    deployment = only(objects, "Deployment")
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    # Not KEDA's kafka trigger: committed offsets wait for a scrape, so the group's
    # committed lag includes up to one scrape interval of events by design.
    assert trigger["type"] == "prometheus"
    assert meta["query"] == 'sum(session_consumer_lag_records{job="session-metrics"})'
    assert int(meta["threshold"]) > 0
    assert meta["ignoreNullValues"] == "false"
    assert scaled["fallback"]["replicas"] == deployment["spec"]["replicas"]
    assert scaled["minReplicaCount"] == deployment["spec"]["replicas"]
    assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_pod_disruption_budget_never_blocks_a_drain_on_unready_workers(
    rendered: dict[str, list[Object]],
) -> None:
    budget = only(rendered["prod"], "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_grafana_dashboard_is_shipped_in_a_labelled_config_map(
    rendered: dict[str, list[Object]],
) -> None:
    config_map = only(rendered["monitoring"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads((DEPLOY / "monitoring" / "dashboard.json").read_text())
