"""Render an InferenceService into its children (pure).

- One Deployment per role (`NAME-primary`, and `NAME-canary` when a canary is set), each running
  `python -m lepton.workloads.server`. A replica is Ready only once its model is loaded and warmed
  (/v2/health/ready): the startup probe allows `runtime.startupSeconds` for that, liveness starts
  after it, and a rollout never removes a ready replica before its successor is ready. On termination
  the pod first leaves the endpoints (preStop sleep), then drains its in-flight requests.
- Service `NAME` selects the replicas of both roles: with no traffic split in front of it, each
  replica gets an equal share, so the canary's share is its share of the replicas ("replicas" mode).
- Where the cluster serves the Gateway API, an HTTPRoute attached to Service `NAME` (GAMMA, the
  in-cluster mesh mode) splits traffic by weight between Services `NAME-primary` and `NAME-canary`
  ("gateway-api" mode); the replica counts then only need to carry their share of the load.
- A HorizontalPodAutoscaler (autoscaling/v2) scales the primary on CPU, in-flight requests or
  requests/s; a PodDisruptionBudget lets node drains evict one replica at a time and never blocks them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from lepton.api.common import Lineage
from lepton.api.constants import Label
from lepton.api.contract import SERVER_CONFIG_ENV, SERVER_PORT, ServerConfig
from lepton.api.inferenceservice import TrafficMode
from lepton.api.kinds import InferenceService
from lepton.render.common import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    Mounts,
    child_metadata,
    merge_env,
    model_location,
    placement,
    resources,
    secret_env,
    selector,
)
from lepton.render.networkpolicy import NetworkSettings
from lepton.render.requestlog import request_log_config

COMPONENT = "server"
Role = Literal["primary", "canary"]
SERVICE_PORT = 80
PRESTOP_SECONDS = 5  # endpoints controllers and proxies stop routing to the pod before SIGTERM
PROBE_PERIOD = 5
SERVER_COMMAND = ("python", "-m", "lepton.workloads.server")
SERVER_ENV = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp/home", "HF_HOME": "/tmp/hf", "TOKENIZERS_PARALLELISM": "false"}
GATEWAY_API = ("gateway.networking.k8s.io/v1", "httproutes")
MONITORING_API = ("monitoring.coreos.com/v1", "servicemonitors")
# Metric names the HorizontalPodAutoscaler asks the custom metrics API for (prometheus-adapter's
# default rules serve a gauge under its own name and a counter `x_total` as the per-second rate `x`).
POD_METRICS = {"concurrency": "lepton_server_inflight_requests", "rps": "lepton_server_requests"}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # which Service an EndpointSlice serves
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"  # the endpoints controllers leave other slices alone
SLICE_MANAGER = "activator.lepton.ai"


@dataclass(frozen=True)
class ServeSettings:
    server_image: str = "lepton/server:0.1.0"
    gateway_api: bool = False  # the cluster serves gateway.networking.k8s.io/v1 HTTPRoutes
    service_monitors: bool = False  # the cluster serves monitoring.coreos.com/v1 ServiceMonitors


@dataclass(frozen=True)
class Activation:
    """Scale from zero (autoscaling.minReplicas 0), as the controller observed and decided it.

    `routed`: requests go to the activator: Service NAME loses its selector (the endpoints controller
    then leaves it alone) and an EndpointSlice of ours lists the activator's addresses; the activator
    holds each request, scales the primary up, and forwards once a replica has loaded its model.
    `idle`: the replicas' own metrics say no request came for idleSeconds: the primary goes to zero
    replicas, in the same apply that routes requests to the activator (the Service comes first)."""

    routed: bool = False
    idle: bool = False
    addresses: tuple[str, ...] = ()  # the activator's pod IPs
    port: int = 0


@dataclass(frozen=True)
class ServeResolved:
    """Model locations the controller resolved (another resource's output), by role."""

    model_uri: str | None = None
    canary_uri: str | None = None
    lineage: Lineage | None = None  # of the primary model: into the server's model metadata


def deployment_name(svc: InferenceService, role: Role) -> str:
    return f"{svc.metadata.name}-{role}"


def role_selector(svc: InferenceService, role: Role) -> dict[str, str]:
    return selector(svc) | {Label.ROLE: role}


def traffic_mode(svc: InferenceService, settings: ServeSettings) -> TrafficMode | None:
    if svc.spec.canary is None:
        return None
    return "gateway-api" if settings.gateway_api else "replicas"


def primary_replicas(svc: InferenceService) -> int:
    """Replicas of the primary the spec asks for (the HPA's current count replaces it when autoscaled)."""
    if svc.spec.suspend:
        return 0
    spec = svc.spec
    if spec.replicas is not None:
        return spec.replicas
    # minReplicas 0 is a count the idle decision reaches (render's `activation`), never a starting one
    return max(spec.autoscaling.min_replicas, 1) if spec.autoscaling is not None else 1


def canary_replicas(svc: InferenceService, primary: int, mode: TrafficMode | None) -> int:
    """Replicas of the canary for `primary` replicas of the primary.

    replicas mode: the canary's share of all replicas is its traffic share, as near as whole replicas
    allow (at least one replica whenever it gets any traffic). gateway-api mode: the route splits by
    weight, so the canary needs only its share of the load, and at least one replica.
    """
    canary = svc.spec.canary
    if canary is None or svc.spec.suspend or canary.traffic_percent == 0:
        return 0
    percent = canary.traffic_percent
    if mode == "gateway-api" or percent == 100:
        return max(1, math.ceil(primary * percent / 100)) if primary else 1
    return max(1, round(primary * percent / (100 - percent)))


def effective_primary(svc: InferenceService, mode: TrafficMode | None, wanted: int) -> int:
    """A canary at 100% in replicas mode takes all traffic only when the primary has no replicas."""
    canary = svc.spec.canary
    if canary is not None and canary.traffic_percent == 100 and mode == "replicas":
        return 0
    return wanted


def server_config(
    svc: InferenceService, role: Role, model_path: str, lineage_of: Lineage | None = None
) -> ServerConfig:
    spec, runtime = svc.spec, svc.spec.runtime
    device = runtime.device if runtime.device != "auto" else ("cuda" if spec.gpus else "cpu")
    source = spec.canary.model if role == "canary" and spec.canary else spec.model
    lineage: dict[str, str] = {
        "inferenceService": f"{svc.metadata.namespace or 'default'}/{svc.metadata.name}",
        "role": role,
    }
    for key, ref in (("trainingJob", source.training_job), ("tuningStudy", source.tuning_study)):
        if ref is not None:
            lineage[key] = ref.name
    if lineage_of is not None and role == "primary":  # the chain its references recorded, as strings
        lineage |= {k: str(v) for k, v in lineage_of.to_wire().items()}
    return ServerConfig(
        name=svc.metadata.name,
        task=spec.task,
        model_path=model_path,
        role=role,
        port=SERVER_PORT,
        protocols=list(spec.protocols),
        device=device,
        dtype=runtime.dtype,
        max_batch_size=runtime.max_batch_size,
        max_batch_delay_ms=runtime.max_batch_delay_ms,
        max_batch_tokens=runtime.max_batch_tokens,
        max_input_tokens=runtime.max_input_tokens,
        max_output_tokens=runtime.max_output_tokens,
        request_timeout_seconds=runtime.request_timeout_seconds,
        max_queue_length=runtime.max_queue_length,
        max_request_bytes=runtime.max_request_bytes,
        drain_seconds=runtime.drain_seconds,
        metadata=lineage | {"modelPath": model_path},
        drift=spec.drift,
    )


def model_path(svc: InferenceService, role: Role, resolved: ServeResolved, mounts: Mounts) -> str:
    source = svc.spec.canary.model if role == "canary" and svc.spec.canary else svc.spec.model
    uri = resolved.canary_uri if role == "canary" else resolved.model_uri
    if uri:
        return model_location(uri, mounts)
    if source.pvc is not None:
        return mounts.path(source.pvc.claim_name, source.pvc.path, read_only=True)
    if source.hub is not None:
        return source.hub.id
    return model_location(source.uri or "", mounts)


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def render_deployment(
    svc: InferenceService, role: Role, replicas: int, settings: ServeSettings, resolved: ServeResolved
) -> dict[str, Any]:
    """The Deployment of one role with `replicas` replicas."""
    spec, runtime = svc.spec, svc.spec.runtime
    mounts = Mounts()
    config = server_config(svc, role, model_path(svc, role, resolved, mounts), resolved.lineage)
    if spec.logging is not None:  # the request log: its directory mounted read-write
        config = config.model_copy(update={"request_log": request_log_config(spec.logging, mounts)})
    ours = [{"name": SERVER_CONFIG_ENV, "value": json.dumps(config.to_wire(), sort_keys=True)}]
    source = spec.canary.model if role == "canary" and spec.canary else spec.model
    if source.hub is not None and source.hub.token_secret_ref is not None:
        ours.append(secret_env("HF_TOKEN", source.hub.token_secret_ref.name, source.hub.token_secret_ref.key))
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": spec.image or settings.server_image,
        "command": list(SERVER_COMMAND),
        "env": merge_env(SERVER_ENV, ours, user=spec.env),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        # Started (and so live-checked) only once the model is loaded and warmed; a load that takes
        # longer than startupSeconds restarts the container.
        "startupProbe": _probe("/v2/health/ready", PROBE_PERIOD, math.ceil(runtime.startup_seconds / PROBE_PERIOD)),
        "readinessProbe": _probe("/v2/health/ready", PROBE_PERIOD, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "resources": resources(spec.resources, spec.gpus),
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a failed model load tells why
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts.volume_mounts()],
    }
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # the server never talks to the API
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + runtime.drain_seconds + 5,
        "securityContext": RESTRICTED_POD,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}}, *mounts.volumes()],
    }
    pod_spec |= placement(spec.scheduling, spec.gpus)
    labels = role_selector(svc, role)
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        # Never fewer ready replicas during a rollout: a new replica must load its model first.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": runtime.startup_seconds + 120,
        "template": {
            "metadata": {"labels": child_metadata(svc, "", COMPONENT, **{Label.ROLE: role})["labels"]},
            "spec": pod_spec,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(svc, deployment_name(svc, role), COMPONENT, **{Label.ROLE: role}),
        "spec": deployment_spec,
    }


def render_service(svc: InferenceService, role: Role | None = None, *, routed: bool = False) -> dict[str, Any]:
    """Service `NAME` (both roles) or, for an HTTPRoute's backends, `NAME-primary` / `NAME-canary`.
    `routed`: Service NAME without a selector, its endpoints being the activator's (`render_activator_slice`)."""
    name = svc.metadata.name if role is None else f"{svc.metadata.name}-{role}"
    port = {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    spec: dict[str, Any] = {"type": "ClusterIP", "ports": [port]}
    # routed: the selector must go (None: removed, whoever set it), or the endpoints controller would keep
    # managing the Service's endpoints alongside ours
    spec["selector"] = None if routed else (selector(svc) if role is None else role_selector(svc, role))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        # A role Service carries its role, so that a ServiceMonitor selects Service NAME alone.
        "metadata": child_metadata(svc, name, COMPONENT, **({Label.ROLE: role} if role else {})),
        "spec": spec,
    }


def render_activator_slice(svc: InferenceService, activation: Activation) -> dict[str, Any]:
    """The endpoints of Service NAME while it has no ready replica: the activator's addresses."""
    metadata = child_metadata(svc, f"{svc.metadata.name}-activator", COMPONENT)
    metadata["labels"] |= {SERVICE_NAME_LABEL: svc.metadata.name, SLICE_MANAGER_LABEL: SLICE_MANAGER}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in activation.addresses],
        "ports": [{"name": "http", "port": activation.port, "protocol": "TCP", "appProtocol": "http"}],
    }


def render_http_route(svc: InferenceService) -> dict[str, Any]:
    """GAMMA: a route attached to the Service itself splits in-cluster traffic by weight."""
    percent = svc.spec.canary.traffic_percent if svc.spec.canary else 0
    name = svc.metadata.name
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": child_metadata(svc, name, COMPONENT),
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": SERVICE_PORT}],
            "rules": [{"backendRefs": [
                {"name": f"{name}-primary", "port": SERVICE_PORT, "weight": 100 - percent},
                {"name": f"{name}-canary", "port": SERVICE_PORT, "weight": percent},
            ]}],
        },
    }  # fmt: skip


def render_service_monitor(svc: InferenceService) -> dict[str, Any]:
    """Prometheus Operator: scrape /metrics of every replica behind Service NAME (both roles, each
    pod once: the role Services are left out)."""
    return {
        "apiVersion": MONITORING_API[0],
        "kind": "ServiceMonitor",
        "metadata": child_metadata(svc, svc.metadata.name, COMPONENT),
        "spec": {
            "selector": {
                "matchLabels": selector(svc),
                "matchExpressions": [{"key": Label.ROLE, "operator": "DoesNotExist"}],
            },
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }


def render_autoscaler(svc: InferenceService) -> dict[str, Any]:
    scaling = svc.spec.autoscaling
    assert scaling is not None
    metric: dict[str, Any]
    if scaling.metric == "cpu":
        target: dict[str, Any] = {"type": "Utilization", "averageUtilization": scaling.target}
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": target}}
    else:
        target = {"type": "AverageValue", "averageValue": str(scaling.target)}
        metric = {"type": "Pods", "pods": {"metric": {"name": POD_METRICS[scaling.metric]}, "target": target}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(svc, svc.metadata.name, COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(svc, "primary")},
            # autoscaling/v2 takes at least 1 (0 needs an alpha gate): from 1 to 0 is the operator's idle
            # decision, and a target at zero is left alone by the autoscaler
            "minReplicas": max(scaling.min_replicas, 1),
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
        },
    }


def render_disruption_budget(svc: InferenceService) -> dict[str, Any]:
    """One replica at a time through voluntary disruptions; never blocks a drain (a one-replica
    service, or replicas that are not ready, can always be evicted)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(svc, svc.metadata.name, COMPONENT),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(svc)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_network_policy(svc: InferenceService) -> dict[str, Any]:
    """Only the serving port is reachable, from any namespace: ingress gateways, callers and
    Prometheus live anywhere. Kubelet probes are not subject to NetworkPolicy."""
    port = {"protocol": "TCP", "port": SERVER_PORT}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(svc, svc.metadata.name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector(svc)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [port]}],
        },
    }


@dataclass(frozen=True)
class Rendered:
    children: list[dict[str, Any]]
    mode: TrafficMode | None
    primary_replicas: int  # what the spec asks for (None-replicas Deployments: the HPA's floor)
    canary_replicas: int


def render(
    svc: InferenceService,
    settings: ServeSettings,
    resolved: ServeResolved,
    *,
    current_primary: int | None = None,
    network: NetworkSettings | None = None,
    activation: Activation | None = None,
) -> Rendered:
    """Every child, in creation order. `current_primary` is the primary's replica count now.

    Autoscaled, the HorizontalPodAutoscaler moves the primary's count; the Deployment states the count
    it has now, kept within minReplicas..maxReplicas, so an apply never undoes a scaling decision and a
    service resumed from zero (which the autoscaler leaves alone) starts at minReplicas. A replicas-mode
    canary is sized from the primary's count.

    minReplicas 0 (`activation`): the count at zero stays zero until the activator scales it up (through
    the Deployment's scale subresource); a new service starts with one replica, so its model is known
    to load before it first idles; the autoscaler is there only while replicas are."""
    spec = svc.spec
    mode = traffic_mode(svc, settings)
    wanted = primary_replicas(svc)
    primary = effective_primary(svc, mode, wanted)
    autoscaled = spec.autoscaling is not None and primary > 0  # not while suspended or all on the canary
    activation = activation if spec.autoscaling is not None and spec.autoscaling.min_replicas == 0 else None
    if autoscaled and spec.autoscaling is not None:
        low, high = spec.autoscaling.min_replicas, spec.autoscaling.max_replicas
        if activation is None:  # minReplicas 0 without an activator to hold requests serves as 1 would
            low = max(low, 1)
            primary = min(max(current_primary or low, low), high)
        else:
            primary = 0 if activation.idle else min(1 if current_primary is None else current_primary, high)
            autoscaled = primary > 0
    routed = activation is not None and activation.routed and not spec.suspend
    canary = canary_replicas(svc, primary or wanted, mode)
    children = [render_service(svc, routed=routed)]
    if routed and activation is not None:
        children.append(render_activator_slice(svc, activation))
    if mode == "gateway-api":
        children += [render_service(svc, "primary"), render_service(svc, "canary"), render_http_route(svc)]
    children.append(render_deployment(svc, "primary", primary, settings, resolved))
    if spec.canary is not None:
        children.append(render_deployment(svc, "canary", canary, settings, resolved))
    if autoscaled:
        children.append(render_autoscaler(svc))
    if spec.pod_disruption_budget and not spec.suspend:
        children.append(render_disruption_budget(svc))
    if network is not None:
        children.append(render_network_policy(svc))
    if spec.service_monitor and settings.service_monitors:
        children.append(render_service_monitor(svc))
    return Rendered(children, mode, primary, canary)


__all__ = ["GATEWAY_API", "MONITORING_API", "Activation", "Rendered", "ServeResolved", "ServeSettings", "render"]
