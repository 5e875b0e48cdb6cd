"""InferenceService rendering, golden-tested for each shape of service, plus what every rendering must
hold whatever the shape: restricted pods, readiness on the model, read-only models, a real split."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from lepton.api.constants import Label
from lepton.api.contract import SERVER_CONFIG_ENV, ServerConfig
from lepton.api.validation import parse
from lepton.render.common import RESTRICTED_CONTAINER, RESTRICTED_POD
from lepton.render.inferenceservice import (
    ServeResolved,
    ServeSettings,
    canary_replicas,
    render,
    traffic_mode,
)
from lepton.render.networkpolicy import NetworkSettings
from tests.conftest import assert_golden

UID = "7c1e2d3f-0a4b-4c5d-8e9f-a0b1c2d3e4f5"
CANARY = {"model": {"pvc": {"claimName": "models", "path": "candidate"}}, "trafficPercent": 20}


def service(**spec: Any) -> Any:
    doc: dict[str, Any] = {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": UID},
        "spec": {"model": {"trainingJob": {"name": "tuned"}}, "resources": {"requests": {"cpu": "2"}}} | spec,
    }
    return parse(doc)


RESOLVED = ServeResolved(model_uri="pvc://models/tuned")
GATEWAY = ServeSettings(gateway_api=True)

CASES: dict[str, tuple[dict[str, Any], ServeSettings]] = {
    "plain": (dict(replicas=2), ServeSettings()),
    "autoscaled-cpu": (dict(autoscaling={"minReplicas": 2, "maxReplicas": 6, "metric": "cpu", "target": 70}),
                       ServeSettings()),
    "autoscaled-concurrency": (dict(autoscaling={"maxReplicas": 4, "metric": "concurrency", "target": 16}),
                               ServeSettings()),
    "autoscaled-rps": (dict(autoscaling={"maxReplicas": 4, "metric": "rps", "target": 50}), ServeSettings()),
    "canary-replicas": (dict(replicas=4, canary=CANARY), ServeSettings()),
    "canary-gateway-api": (dict(replicas=4, canary=CANARY), GATEWAY),
    "suspended": (dict(replicas=3, canary=CANARY, suspend=True), ServeSettings()),
    "monitored": (dict(replicas=2, serviceMonitor=True), ServeSettings(service_monitors=True)),
    "gpu-embeddings": (dict(task="embeddings", protocols=["v2"], gpus=1, runtime={"dtype": "float16"},
                            scheduling={"nodeSelector": {"pool": "a100"}, "priorityClassName": "serving"}),
                       ServeSettings()),
}  # fmt: skip


def rendered(case: str) -> list[dict[str, Any]]:
    spec, settings = CASES[case]
    return render(service(**spec), settings, RESOLVED, network=NetworkSettings("lepton-system")).children


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    assert_golden(f"inferenceservice-{case}.yaml", yaml.safe_dump_all(rendered(case), sort_keys=True, width=120))


def deployments(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in children if c["kind"] == "Deployment"]


def config_of(deployment: dict[str, Any]) -> ServerConfig:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return ServerConfig.model_validate_json(next(e["value"] for e in env if e["name"] == SERVER_CONFIG_ENV))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_child_is_owned_and_labelled(case: str) -> None:
    for child in rendered(case):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert [r["uid"] for r in meta["ownerReferences"] if r["controller"]] == [UID]
        assert meta["labels"][Label.KIND] == "InferenceService" and meta["labels"][Label.NAME] == "chat"


@pytest.mark.parametrize("case", sorted(CASES))
def test_replicas_are_restricted_and_ready_only_with_the_model(case: str) -> None:
    for deployment in deployments(rendered(case)):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"] == RESTRICTED_POD and container["securityContext"] == RESTRICTED_CONTAINER
        assert pod["automountServiceAccountToken"] is False
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        # A rollout never removes a ready replica before its successor has loaded its model.
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        # Drain: out of the endpoints first, then the in-flight requests get their time.
        assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"]
        for mount in container["volumeMounts"]:
            assert mount["mountPath"] == "/tmp" or mount["readOnly"] is True, mount
        for volume in pod["volumes"]:
            assert "persistentVolumeClaim" not in volume or volume["persistentVolumeClaim"]["readOnly"] is True
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_model_from_a_training_job_is_mounted_from_its_claim() -> None:
    (primary, canary) = deployments(rendered("canary-replicas"))
    assert config_of(primary).model_path == "/mnt/pvc/models/tuned"
    assert config_of(canary).model_path == "/mnt/pvc/models/candidate"
    assert config_of(primary).metadata["trainingJob"] == "tuned"
    assert (config_of(primary).role, config_of(canary).role) == ("primary", "canary")


def test_server_config_carries_the_runtime() -> None:
    runtime = {"maxBatchSize": 32, "maxBatchDelayMs": 2, "maxBatchTokens": 4096, "maxInputTokens": 512,
               "maxOutputTokens": 64, "requestTimeoutSeconds": 9, "maxQueueLength": 99, "maxRequestBytes": 2048,
               "drainSeconds": 7, "device": "cpu", "dtype": "bfloat16"}  # fmt: skip
    (deployment,) = deployments(render(service(runtime=runtime), ServeSettings(), RESOLVED).children)
    wire = config_of(deployment).to_wire()
    assert {k: wire[k] for k in runtime} == runtime
    assert json.loads(json.dumps(wire))["task"] == "causal-lm"


@pytest.mark.parametrize(("current", "expected"), [(None, 2), (0, 2), (3, 3), (6, 6), (9, 6)])
def test_autoscaled_primary_keeps_the_count_the_autoscaler_chose(current: int | None, expected: int) -> None:
    """Within min..max the count now is stated as it is (an apply never undoes a scaling decision);
    from zero (a resumed service, which no autoscaler scales) it starts at minReplicas."""
    spec, settings = CASES["autoscaled-cpu"]  # minReplicas 2, maxReplicas 6
    children = render(service(**spec), settings, RESOLVED, current_primary=current).children
    (deployment,) = deployments(children)
    assert deployment["spec"]["replicas"] == expected
    (hpa,) = [c for c in children if c["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_suspended_has_no_replicas_and_no_autoscaler() -> None:
    spec = dict(autoscaling={"maxReplicas": 4}, canary=CANARY, suspend=True)
    children = render(service(**spec), ServeSettings(), RESOLVED).children
    assert [d["spec"]["replicas"] for d in deployments(children)] == [0, 0]
    assert {c["kind"] for c in children} == {"Service", "Deployment"}


# (primary replicas, traffic percent, mode) -> canary replicas
SPLITS = [
    (4, 20, "replicas", 1),  # 1 of 5 replicas = 20%
    (3, 50, "replicas", 3),
    (9, 10, "replicas", 1),
    (2, 10, "replicas", 1),  # at least one replica while it gets traffic: 33% in force, status says so
    (4, 0, "replicas", 0),
    (4, 100, "replicas", 4),
    (4, 20, "gateway-api", 1),
    (10, 25, "gateway-api", 3),
    (0, 30, "gateway-api", 1),
]


@pytest.mark.parametrize(("primary", "percent", "mode", "expected"), SPLITS)
def test_canary_replicas(primary: int, percent: int, mode: str, expected: int) -> None:
    svc = service(replicas=primary, canary=CANARY | {"trafficPercent": percent})
    assert canary_replicas(svc, primary, mode) == expected  # type: ignore[arg-type]


def test_canary_at_100_percent_in_replicas_mode_takes_the_primary_down() -> None:
    svc = service(replicas=3, canary=CANARY | {"trafficPercent": 100})
    out = render(svc, ServeSettings(), RESOLVED)
    assert (out.primary_replicas, out.canary_replicas) == (0, 3)


def test_traffic_mode_follows_the_cluster() -> None:
    assert traffic_mode(service(), GATEWAY) is None
    assert traffic_mode(service(canary=CANARY), GATEWAY) == "gateway-api"
    assert traffic_mode(service(canary=CANARY), ServeSettings()) == "replicas"


def test_gateway_route_weights_sum_to_100_and_name_the_role_services() -> None:
    children = rendered("canary-gateway-api")
    (route,) = [c for c in children if c["kind"] == "HTTPRoute"]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("chat-primary", 80), ("chat-canary", 20)]
    services = {c["metadata"]["name"]: c for c in children if c["kind"] == "Service"}
    assert services["chat-canary"]["spec"]["selector"][Label.ROLE] == "canary"
    assert Label.ROLE not in services["chat"]["spec"]["selector"]  # the parent Service: both roles


def test_a_service_monitor_only_where_asked_and_served() -> None:
    def kinds(asked: bool, served: bool) -> set[str]:
        children = render(service(serviceMonitor=asked), ServeSettings(service_monitors=served), RESOLVED).children
        return {c["kind"] for c in children}

    cases = [(asked, served) for asked in (True, False) for served in (True, False)]
    assert [c for c in cases if "ServiceMonitor" in kinds(*c)] == [(True, True)]


def test_the_service_monitor_scrapes_each_replica_once() -> None:
    """Service NAME selects both roles; the role Services (gateway-api mode) are left out."""
    settings = ServeSettings(gateway_api=True, service_monitors=True)
    children = render(service(serviceMonitor=True, canary=CANARY), settings, RESOLVED).children
    (monitor,) = [c for c in children if c["kind"] == "ServiceMonitor"]
    selector = monitor["spec"]["selector"]
    picked = [
        c["metadata"]["name"] for c in children if c["kind"] == "Service"
        and selector["matchLabels"].items() <= c["metadata"]["labels"].items()
        and Label.ROLE not in c["metadata"]["labels"]
    ]  # fmt: skip
    assert picked == ["chat"] and selector["matchExpressions"] == [{"key": Label.ROLE, "operator": "DoesNotExist"}]
