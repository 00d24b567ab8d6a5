"""The Kubernetes kit in deploy/: it renders, validates offline and agrees with the service.

Every kustomization is rendered with `kubectl kustomize` or `kustomize build`; built-in
objects are checked against the Kubernetes schemas that kubernetes-validate bundles, custom
resources against small schemas of their required fields, and the settings the pods would
run with are parsed by the service's own settings code. overlays/prod adds a Redis for the
claim store (components/redis), held to the same checks as the workers.
"""

import argparse
import itertools
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
# component, rendered through a kustomization written at test time, with what
# COMPONENT_INPUTS adds to it (the runbook links need their base URL).
TARGETS = {
    "base": "base",
    "dev": "overlays/dev",
    "prod": "overlays/prod",
    "monitoring": "monitoring",
}
COMPONENTS = {
    "prod+podmonitor": ("overlays/prod", "components/podmonitor"),
    "monitoring+runbook-links": ("monitoring", "components/runbook-links"),
}
RUNBOOK_BASE = "https://git.internal/platform/session-metrics/blob/main/docs/operations.md"
COMPONENT_INPUTS: dict[str, dict[str, Any]] = {
    "monitoring+runbook-links": {
        "configMapGenerator": [
            {"name": "session-metrics-runbooks", "literals": [f"base_url={RUNBOOK_BASE}"]}
        ]
    }
}

WORKLOAD = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
# The workers' objects are named after the service; components/redis adds its own.
WORKER = "session-metrics"
REDIS = "session-metrics-redis"

EXPECTED_KINDS = {
    "base": WORKLOAD | {"ServiceMonitor"},
    "dev": WORKLOAD | {"ServiceMonitor"},
    "prod": WORKLOAD | {"ServiceMonitor", "ScaledObject"},
    "prod+podmonitor": WORKLOAD | {"PodMonitor", "ScaledObject"},
    "monitoring": {"PrometheusRule", "ConfigMap"},
    "monitoring+runbook-links": {"PrometheusRule", "ConfigMap"},
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
                    **COMPONENT_INPUTS.get(name, {}),
                }
            )
        )
        out[name] = kustomize(work)
    return out


def only(objects: list[Object], kind: str) -> Object:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def named(objects: list[Object], kind: str, name: str = WORKER) -> Object:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Object], name: str = WORKER) -> Object:
    spec: Object = named(objects, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def pod_labels(objects: list[Object], name: str = WORKER) -> dict[str, str]:
    template = named(objects, "Deployment", name)["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def container(objects: list[Object], name: str = WORKER) -> Object:
    containers = pod_spec(objects, name)["containers"]
    assert len(containers) == 1
    found: Object = containers[0]
    return found


class PodWontStart(Exception):
    """The kubelet's CreateContainerConfigError: a required Secret is missing."""


def pod_environment(objects: list[Object], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The SESSION_METRICS_* variables a worker pod would see, `secrets` being the Secrets
    that exist (name to data)."""
    by_name = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    c = container(objects)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(by_name[source["configMapRef"]["name"]]["data"])
    for var in c.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env[var["name"]] = var["value"]
        elif ref["name"] in secrets:
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        elif ref.get("optional") is not True:
            raise PodWontStart(f"secret {ref['name']!r} not found")
    return env


def pod_settings(objects: list[Object], secrets: dict[str, dict[str, str]]) -> Settings:
    """What `session-metrics run` parses from that environment, with no flags."""
    return run_settings(argparse.Namespace(), environ=pod_environment(objects, secrets))


KAFKA_SECRET = {"username": "session-metrics", "password": "not-a-real-password"}
REDIS_SECRET = {"password": "not-a-real-redis-password"}
# The Secrets docs/operations.md has the user create, per target.
SECRETS: dict[str, dict[str, dict[str, str]]] = {
    "base": {},
    "dev": {},
    "prod": {"session-metrics-kafka": KAFKA_SECRET, REDIS: REDIS_SECRET},
}
SECRETS["prod+podmonitor"] = SECRETS["prod"]


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
    for path in TARGETS.values():  # and the components a target takes in itself
        kustomization = yaml.safe_load((DEPLOY / path / "kustomization.yaml").read_text())
        for component in kustomization.get("components", []):
            covered.add(os.path.relpath((DEPLOY / path / component).resolve(), DEPLOY))
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


# --- no placeholder addresses ------------------------------------------------------

# Hosts under the domains reserved for examples (RFC 2606), and the project's own made-up
# address: a manifest that names one points a cluster nowhere, a link leads nowhere.
PLACEHOLDER = re.compile(
    r"[\w.-]*\bexample\.(?:com|net|org)\b|\b[\w-]+(?:\.[\w-]+)*\.example\b(?![\w-])"
    r"|github\.com/example\b",
    re.IGNORECASE,
)


def placeholders(text: str) -> set[str]:
    return {m.group(0).lower() for m in PLACEHOLDER.finditer(text)}


def test_placeholder_pattern_finds_hosts_and_the_made_up_project_address() -> None:
    text = (
        "image: registry.example.com/x:1, kafka-1.EXAMPLE.org:9093, a.b.example:80, "
        "https://github.com/example/session-metrics, example.com; not: github.com/examples, "
        "examples.md, r.invalid.reason, my-cluster-kafka-bootstrap.kafka.svc:9093"
    )
    assert placeholders(text) == {
        "registry.example.com",
        "kafka-1.example.org",
        "a.b.example",
        "github.com/example",
        "example.com",
    }


def test_no_placeholder_address_in_any_file_of_the_kit() -> None:
    found = {
        (str(path.relative_to(DEPLOY)), host)
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for host in placeholders(path.read_text())
    }
    assert found == set()


@pytest.mark.parametrize("target", sorted(EXPECTED_KINDS))
def test_no_placeholder_address_in_what_a_kustomization_renders(
    rendered: dict[str, list[Object]], target: str
) -> None:
    assert placeholders(yaml.safe_dump_all(rendered[target])) == set()


def test_no_placeholder_address_in_the_docs() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = {(str(p.relative_to(ROOT)), host) for p in docs for host in placeholders(p.read_text())}
    assert not found, sorted(found)


# --- the manifests agree with the service ----------------------------------------


@pytest.mark.parametrize("target", ["base", "dev", "prod"])
def test_every_session_metrics_variable_is_a_real_option(
    rendered: dict[str, list[Object]], target: str
) -> None:
    options = {o.env for o in all_options()}
    names = set(pod_environment(rendered[target], SECRETS[target]))
    for obj in rendered[target]:
        for value in walk(obj):
            if isinstance(value, str) and value.startswith("SESSION_METRICS_"):
                names.add(value)
    assert len(names) >= 8
    assert names <= options, names - options


def test_dev_pods_start_with_a_valid_plaintext_configuration(
    rendered: dict[str, list[Object]],
) -> None:
    settings = pod_settings(rendered["dev"], SECRETS["dev"])
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.sasl_username is None
    assert settings.store is None  # the base needs no Redis
    assert named(rendered["dev"], "Deployment")["spec"]["replicas"] == 1


def test_prod_pods_start_with_sasl_ssl_and_fail_fast_without_the_secret(
    rendered: dict[str, list[Object]],
) -> None:
    settings = pod_settings(rendered["prod"], SECRETS["prod"])
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password == KAFKA_SECRET["password"]
    with pytest.raises(ConfigError, match="SESSION_METRICS_SASL_USERNAME"):
        pod_settings(rendered["prod"], {REDIS: REDIS_SECRET})
    assert named(rendered["prod"], "Deployment")["spec"]["replicas"] == 3


def test_prod_workers_claim_sessions_in_the_kits_redis_with_its_password(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    store = pod_settings(objects, SECRETS["prod"]).store
    assert store is not None
    assert store.password() == REDIS_SECRET["password"]
    (service_port,) = named(objects, "Service", REDIS)["spec"]["ports"]
    assert store.dedup_store == f"redis://{REDIS}:{service_port['port']}"
    assert service_port["targetPort"] == container(objects, REDIS)["ports"][0]["name"]
    # Redis takes its password from the Secret the workers read; without it neither
    # starts (not optional), rather than one of them running without a password.
    redis = container(objects, REDIS)
    (server,) = [v for v in redis["env"] if f"$({v['name']})" in redis["args"]]
    assert server["valueFrom"]["secretKeyRef"] == {"name": REDIS, "key": "password"}
    with pytest.raises(PodWontStart, match=REDIS):
        pod_settings(objects, {"session-metrics-kafka": KAFKA_SECRET})


@pytest.mark.parametrize("target", ["dev", "prod", "prod+podmonitor"])
def test_termination_grace_period_outlasts_the_drain_and_the_hand_over(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    settings = pod_settings(objects, SECRETS[target])
    # The drain, a commit and leaving the group (a few seconds), then the final totals
    # served until every Prometheus has fetched them.
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    assert grace >= settings.drain_timeout + settings.handover_timeout + 5
    # Each Prometheus of an HA pair scrapes once per interval, at its own offset: two
    # intervals let both fetch, with a scrape timeout to spare.
    (endpoint,) = scrape_endpoints(objects)
    assert settings.handover_timeout >= 2 * seconds(endpoint["interval"])


def scrape_endpoints(objects: list[Object]) -> list[Object]:
    """The endpoints of the one ServiceMonitor or PodMonitor."""
    (monitor,) = [o for o in objects if o["kind"] in {"ServiceMonitor", "PodMonitor"}]
    found: list[Object] = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
    return found


def seconds(duration: str) -> float:
    """A Prometheus duration of one unit, e.g. `30s` or `1m`."""
    found = re.fullmatch(r"(\d+)(s|m)", duration)
    assert found, duration
    return int(found[1]) * {"s": 1, "m": 60}[found[2]]


@pytest.mark.parametrize("target", ["prod", "prod+podmonitor"])
def test_a_terminating_worker_stays_a_scrape_target_until_it_exits(
    rendered: dict[str, list[Object]], target: str
) -> None:
    """The hand-over serves final totals after SIGTERM: Prometheus must still list the pod.

    A ServiceMonitor scrapes the Service's endpoints: the Endpoints controller drops a
    terminating pod unless the Service publishes not-ready addresses. A PodMonitor
    discovers pods until they are deleted. Either way, a relabeling on readiness or
    termination would drop the stopping pod, so there must be none."""
    objects = rendered[target]
    if "ServiceMonitor" in {o["kind"] for o in objects}:
        service = named(objects, "Service")["spec"]
        assert service["publishNotReadyAddresses"] is True
        assert service["selector"].items() <= pod_labels(objects).items()
    for endpoint in scrape_endpoints(objects):
        assert endpoint.get("filterRunning", True) is True  # only exited pods are dropped
        for rule in endpoint.get("relabelings", []):
            sources = " ".join(rule.get("sourceLabels", []))
            assert not re.search(r"_(ready|serving|terminating|phase)\b", sources), rule


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_probes_ports_and_scrape_path_match_the_http_server(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    settings = pod_settings(objects, SECRETS[target])
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
    (service_port,) = named(objects, "Service")["spec"]["ports"]
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
    labels = pod_labels(objects)
    selectors = [
        named(objects, "Deployment")["spec"]["selector"]["matchLabels"],
        named(objects, "Service")["spec"]["selector"],
        only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        named(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        only(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector
        assert selector.items() <= labels.items()
    service_labels = named(objects, "Service")["metadata"]["labels"]
    assert selectors[-1].items() <= service_labels.items()


def test_worker_and_redis_selectors_never_pick_each_others_pods(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    pods = {WORKER: pod_labels(objects), REDIS: pod_labels(objects, REDIS)}
    for name, other in ((WORKER, REDIS), (REDIS, WORKER)):
        selectors = [
            named(objects, "Deployment", name)["spec"]["selector"]["matchLabels"],
            named(objects, "Service", name)["spec"]["selector"],
            named(objects, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"],
        ]
        for selector in selectors:
            assert selector.items() <= pods[name].items()
            assert not selector.items() <= pods[other].items()
    for selector in (
        only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        only(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= pods[REDIS].items()


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_pod_runs_locked_down_with_probes_and_resources(
    rendered: dict[str, list[Object]], target: str
) -> None:
    deployments = [o for o in rendered[target] if o["kind"] == "Deployment"]
    assert len(deployments) == {"dev": 1, "prod": 2}[target]  # the workers (and Redis)
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # only the environment written here
        assert pod.get("hostNetwork", False) is False
        for volume in pod.get("volumes", []):  # nothing of the node's
            assert volume.keys() & {"emptyDir", "secret", "configMap"}, volume
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][kind].keys()
            assert {"livenessProbe", "readinessProbe"} <= c.keys()
            assert ":" in c["image"]  # a pinned tag, never an implied `latest`


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_worker_pods_run_as_the_image_user_with_no_token_spread_over_zones(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    pod = pod_spec(objects)
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    account = only(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
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
def test_network_policy_lets_out_only_dns_the_kafka_ports_and_redis(
    rendered: dict[str, list[Object]], target: str
) -> None:
    objects = rendered[target]
    settings = pod_settings(objects, SECRETS[target])
    policy = named(objects, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    # Rules to anywhere (Kafka may be outside the cluster): DNS and the Kafka ports only.
    allowed = [
        (p["port"], p.get("endPort", p["port"]), p.get("protocol", "TCP"))
        for rule in policy["egress"]
        if "to" not in rule
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
    # Rules to a destination: Redis's pods on Redis's port, in prod only.
    to_pods = [rule for rule in policy["egress"] if "to" in rule]
    assert len(to_pods) == (1 if target == "prod" else 0)
    for rule in to_pods:
        (peer,) = rule["to"]
        assert peer.keys() == {"podSelector"}  # this namespace, these pods
        assert peer["podSelector"]["matchLabels"].items() <= pod_labels(objects, REDIS).items()
        port = container(objects, REDIS)["ports"][0]["containerPort"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]


def test_prod_autoscaling_follows_the_workers_own_lag_and_stays_within_the_partitions(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    scaled = only(objects, "ScaledObject")["spec"]
    deployment = named(objects, "Deployment")
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


# --- the claim store's Redis (overlays/prod) ---------------------------------------


def test_only_the_workers_may_reach_redis_and_redis_reaches_nothing(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    policy = named(objects, "NetworkPolicy", REDIS)["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(objects, REDIS).items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy.get("egress", []) == []
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer.keys() == {"podSelector"}  # no namespaceSelector, no ipBlock
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels(objects).items()
    assert not peer["podSelector"]["matchLabels"].items() <= pod_labels(objects, REDIS).items()
    assert rule["ports"] == [{"port": container(objects, REDIS)["ports"][0]["name"]}]


def test_redis_is_one_pod_in_memory_that_refuses_claims_when_full(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prod"]
    deployment = named(objects, "Deployment", REDIS)["spec"]
    # Two Redis pods behind the Service, even during a rollout, would each grant an id.
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    c = container(objects, REDIS)
    # SET with NX and GET, which the claim script needs, came with Redis 7.0.
    assert int(c["image"].rsplit(":", 1)[1].split(".")[0]) >= 7
    config = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert config["--save"] == ""
    assert config["--appendonly"] == "no"
    # Full, it refuses new claims (workers stop, and say so) rather than evict and
    # count repeats; its memory limit leaves room above maxmemory for the process itself.
    assert config["--maxmemory-policy"] == "noeviction"
    limit = c["resources"]["limits"]["memory"]
    assert c["resources"]["requests"]["memory"] == limit
    assert quantity(config["--maxmemory"]) * 1.25 <= quantity(limit)
    # Writable /data only, and not on the node's disk beyond a small emptyDir.
    (mount,) = c["volumeMounts"]
    (volume,) = pod_spec(objects, REDIS)["volumes"]
    assert (mount["mountPath"], mount["name"]) == ("/data", volume["name"])
    assert "emptyDir" in volume


def quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity (`512Mi`) or a Redis size (`384mb`: also 2**20)."""
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi|kb|mb|gb)", text)
    assert found, text
    return int(found[1]) << 10 * ("kmg".index(found[2][0].lower()) + 1)


# SESSION_METRICS_*_PASSWORD, REDISCLI_AUTH, --requirepass; not *_PASSWORD_FILE (a path).
SECRET_NAME = re.compile(r"PASS(WORD)?$|AUTH$|TOKEN$|SECRET", re.IGNORECASE)


@pytest.mark.parametrize("target", sorted(EXPECTED_KINDS))
def test_no_password_is_written_in_any_manifest(
    rendered: dict[str, list[Object]], target: str
) -> None:
    """Passwords come from Secrets the user creates: as environment variables, referenced
    by name where a program takes them as an argument, never as a literal."""
    objects = rendered[target]
    assert "Secret" not in {o["kind"] for o in objects}
    for obj in objects:
        for value in walk(obj):
            if isinstance(value, str):
                assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), value  # user:pass@
    for config_map in (o for o in objects if o["kind"] == "ConfigMap"):
        assert not [k for k in config_map.get("data", {}) if SECRET_NAME.search(k)]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            check_secrets_by_reference(c)


def check_secrets_by_reference(c: Object) -> None:
    """Secret-looking variables come from Secrets; secret-looking options take `$(VAR)`."""
    from_secrets = set()
    for var in c.get("env", []):
        if SECRET_NAME.search(var["name"]):
            assert "value" not in var, var["name"]
            assert "secretKeyRef" in var["valueFrom"], var["name"]
            from_secrets.add(var["name"])
    arguments = [*c.get("command", []), *c.get("args", [])]
    for option, value in itertools.pairwise(arguments):
        if option.startswith("-") and SECRET_NAME.search(option):
            assert re.fullmatch(r"\$\((\w+)\)", value), option
            assert value[2:-1] in from_secrets, option
