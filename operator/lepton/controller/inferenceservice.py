"""InferenceService on the skeleton: the children it watches (Deployments, Services, the autoscaler,
the disruption budget, and the Deployments' pods read for status), the HTTPRoute it reads by name
where the cluster serves the Gateway API, and its plan (the pure `decide` composed with `render`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton.api import KINDS, InferenceService
from lepton.api.contract import SERVER_PORT
from lepton.controller.kube import KubeClient, KubeError, api_path
from lepton.controller.progress import fetch_text
from lepton.controller.reconciler import IDLE_SECONDS, Binding, ChildKind, Key
from lepton.render.inferenceservice import (
    GATEWAY_API,
    MONITORING_API,
    SERVICE_NAME_LABEL,
    Activation,
    ServeResolved,
    ServeSettings,
    render,
)
from lepton.render.networkpolicy import NetworkSettings
from lepton.status.clock import rfc3339
from lepton.status.drift import Scores, merge, scores_from_metrics
from lepton.status.events import inferenceservice_events
from lepton.status.inferenceservice import DeploymentView, RouteView, Serving, Wanted, decide
from lepton.status.plan import ChildKey, Observed, Plan
from lepton.status.pods import PodView
from lepton.status.references import Resolution, references, source_location
from lepton.status.scaling import ScaleView, ServingSample, decide_scaling, parse_metrics, routed_now

REFERENCE_LOOK_SECONDS = 5.0  # while waiting for a model from another resource
ROUTE_LOOK_SECONDS = 30.0  # a mesh accepting the route writes only the route's status: look for it
ACTIVATOR_LOOK_SECONDS = 10.0  # how often the activator's endpoints are read again
MAX_SCRAPE_SECONDS = 10.0  # how often a service with minReplicas 0 reads its replicas' request metrics
DRIFT_SCRAPE_SECONDS = 30.0  # how often drift scores are read (the window moves slowly)
log = logging.getLogger("lepton.inferenceservice")


class InferenceServiceBinding(Binding[InferenceService]):
    info = KINDS["InferenceService"]
    children = (
        ChildKind("apps/v1", "Deployment", "deployments", pruned=True),
        ChildKind("v1", "Service", "services", pruned=True),
        ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", pruned=True),
        ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", pruned=True),
        ChildKind("v1", "Pod", "pods", read_only=True),
    )
    fetched = (
        ChildKind(GATEWAY_API[0], "HTTPRoute", GATEWAY_API[1], pruned=True),
        ChildKind(MONITORING_API[0], "ServiceMonitor", MONITORING_API[1], pruned=True),
        # Read by name, not watched: a watch of EndpointSlices (kopf filters labels on its side) would bring
        # every endpoint change of the cluster to the operator. Services at zero have passes every few seconds.
        ChildKind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", pruned=True),  # routes to the activator
    )

    def __init__(self, server_image: str, network: NetworkSettings | None = None, *,
                 discovery_seconds: float = 60.0, activator: tuple[str, str] | None = None) -> None:  # fmt: skip
        self.server_image, self.network = server_image, network
        self.discovery_seconds = discovery_seconds  # the Gateway API may be installed after the operator started
        self.activator = activator  # (namespace, Service name) of the activator; None: no scale to zero
        self._gateway: bool = False
        self._monitoring: bool | None = None
        self._asked = float("-inf")
        self._endpoints: tuple[tuple[str, ...], int] = ((), 0)  # the activator's ready addresses, its port
        self._endpoints_asked = float("-inf")
        self._samples: dict[Key, Scraped] = {}

    async def prepare(self, client: KubeClient) -> None:
        if time.monotonic() - self._asked >= self.discovery_seconds:
            gateway, monitoring = await client.serves(*GATEWAY_API), await client.serves(*MONITORING_API)
            if gateway is not None and monitoring is not None:  # a failed discovery keeps the last answers
                self._gateway, self._monitoring, self._asked = gateway, monitoring, time.monotonic()
        if self.activator is not None and time.monotonic() - self._endpoints_asked >= ACTIVATOR_LOOK_SECONDS:
            self._endpoints_asked = time.monotonic()
            try:
                self._endpoints = await activator_endpoints(client, *self.activator)
            except KubeError as exc:  # the last answer stands; the next look asks again
                log.warning("cannot read the activator's endpoints (%s/%s): %s", *self.activator, exc)

    def learned(self) -> Hashable:
        return self._gateway, self._monitoring, self._endpoints

    async def observe_extra(self, key: Key, body: Mapping[str, Any], observed: Observed) -> Scraped | None:
        """For minReplicas 0 or spec.drift: every ready replica's /metrics, once per scrape interval (the
        request metrics of the primary for the idle decision, the drift scores of all)."""
        every = look_seconds(body)
        if every is None:
            self._samples.pop(key, None)
            return None
        ready = [(str(p["metadata"]["name"]), str((p.get("status") or {}).get("podIP") or ""), PodView.of(p).role)
                 for p in observed.of("Pod") if _ready(p)]  # fmt: skip
        last = self._samples.get(key)
        covered = {name for name, _, role in ready if role == "primary"}
        # A sample counts only for the replicas it read: a replica that became ready since (a scale-up
        # from zero) is read at once, never judged by its predecessor's idleness.
        if last is not None and time.time() - last.sample.at < every and last.sample.pods() == covered:
            return last
        texts = await asyncio.gather(*(fetch_text(f"http://{ip}:{SERVER_PORT}/metrics") for _, ip, _ in ready))
        primary = [(name, text) for (name, _, role), text in zip(ready, texts, strict=True) if role == "primary"]
        sample = ServingSample(
            at=time.time(),
            replicas=tuple(parse_metrics(name, text) for name, text in primary if text),
            unreachable=tuple(name for name, text in primary if not text),
        )
        scraped = Scraped(sample, merge(scores_from_metrics(text) for text in texts if text))
        self._samples[key] = scraped
        return scraped

    def forget(self, key: Key) -> None:
        self._samples.pop(key, None)

    async def fetch_children(self, client: KubeClient, key: Key, body: Mapping[str, Any]) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for served, (api_version, _), kind in ((self._gateway, GATEWAY_API, "HTTPRoute"),
                                                (self._monitoring, MONITORING_API, "ServiceMonitor")):  # fmt: skip
            if served:
                obj = await client.get(api_version, kind, key[0], key[1])
                found[kind] = [obj] if obj is not None else []
        if _scales_to_zero(body):  # or did until this pass: its slice, if any, is pruned now
            obj = await client.get("discovery.k8s.io/v1", "EndpointSlice", key[0], f"{key[1]}-activator")
            found["EndpointSlice"] = [obj] if obj is not None else []
        return found

    def plan(self, resource: InferenceService, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        name = resource.metadata.name
        deployments = {d["metadata"]["name"]: d for d in observed.of("Deployment")}
        primary = DeploymentView.of(deployments.get(f"{name}-primary"))
        routes = observed.of("HTTPRoute")
        serving = Serving(
            primary=primary,
            canary=DeploymentView.of(deployments.get(f"{name}-canary")),
            pods=[PodView.of(p) for p in observed.of("Pod")],
            route=RouteView.of(routes[0]) if routes else None,
        )
        stamp, has_refs = rfc3339(now), bool(references(resource))
        if not resolution.ready:
            # Nothing to serve yet, or a new reference not ready: what already serves keeps serving.
            status = decide(resource, serving, None, waiting=resolution.waiting, has_references=has_refs, now=stamp)
            keep = frozenset(
                (kind, str(o["metadata"]["name"]))
                for kind, objs in observed.children.items() if kind != "Pod" for o in objs
            )  # fmt: skip
            return Plan(
                status=status,
                keep=keep,
                events=inferenceservice_events(resource.status, status),
                requeue_after=REFERENCE_LOOK_SECONDS,
            )  # nothing wakes us when the reference changes
        uris = resolution.uris
        autoscaled = resource.spec.autoscaling is not None
        services = {s["metadata"]["name"]: s for s in observed.of("Service")}
        addresses, port = self._endpoints
        view = ScaleView(
            spec_replicas=primary.spec_replicas if primary is not None else None,
            ready=primary.ready if primary is not None else 0,
            routed=routed_now(services.get(name)),
            sample=extra.sample if isinstance(extra, Scraped) else None,
            addresses=addresses,
            port=port,
        )
        scaling = decide_scaling(resource, view)
        activation = None
        if scaling is not None and scaling.active:
            activation = Activation(scaling.routed, scaling.idle, addresses, port)
        rendered = render(
            resource,
            ServeSettings(self.server_image, self._gateway, bool(self._monitoring)),
            ServeResolved(model_uri=uris.get("model"), canary_uri=uris.get("canary"), lineage=resolution.lineage),
            current_primary=primary.spec_replicas if primary is not None and autoscaled else None,
            network=self.network,
            activation=activation,
        )
        models = {"model": uris.get("model") or source_location(resource.spec.model)}
        if resource.spec.canary is not None:
            models["canary"] = uris.get("canary") or source_location(resource.spec.canary.model)
        wanted = Wanted(rendered.primary_replicas, rendered.canary_replicas, rendered.mode)
        status = decide(resource, serving, wanted, models=models, has_references=has_refs,
                        monitoring_api=self._monitoring, scaling=scaling,
                        drift=extra.drift if isinstance(extra, Scraped) else None, now=stamp)  # fmt: skip
        return Plan(
            status=status,
            children=rendered.children,
            keep=frozenset[ChildKey](),
            events=inferenceservice_events(resource.status, status),
        )

    def next_look(self, body: Mapping[str, Any]) -> tuple[float, bool]:
        spec = body.get("spec") or {}
        if (every := look_seconds(body)) is not None:
            return every, True
        if self._gateway and spec.get("canary"):
            return ROUTE_LOOK_SECONDS, True
        if (spec.get("canary") and not self._gateway) or (spec.get("serviceMonitor") and not self._monitoring):
            # An API it would use may be installed any time: a forced pass asks discovery again.
            return max(self.discovery_seconds, 1.0), True
        return IDLE_SECONDS, False


@dataclass(frozen=True)
class Scraped:
    """What the replicas' /metrics said: request metrics of the primary, drift scores of all."""

    sample: ServingSample
    drift: Scores | None = None


def look_seconds(body: Mapping[str, Any]) -> float | None:
    """How often the replicas' metrics are read: a few times per idle period for minReplicas 0 (so the
    decision lags it by a fraction), every DRIFT_SCRAPE_SECONDS for drift; None: never."""
    spec = body.get("spec") or {}
    if spec.get("suspend"):
        return None
    scaling = spec.get("autoscaling") or {}
    if scaling.get("minReplicas") == 0:
        return min(max(int(scaling.get("idleSeconds") or 300) / 4, 1.0), MAX_SCRAPE_SECONDS)
    return DRIFT_SCRAPE_SECONDS if spec.get("drift") else None


def _scales_to_zero(body: Mapping[str, Any]) -> bool:
    """minReplicas 0 now, or a ScaledToZero condition from when it was."""
    scaling = (body.get("spec") or {}).get("autoscaling") or {}
    conditions = (body.get("status") or {}).get("conditions") or []
    return scaling.get("minReplicas") == 0 or any(c.get("type") == "ScaledToZero" for c in conditions)


def _ready(pod: Mapping[str, Any]) -> bool:
    view = PodView.of(pod)
    return view.ready and not view.deleting and bool((pod.get("status") or {}).get("podIP"))


async def activator_endpoints(client: KubeClient, namespace: str, service: str) -> tuple[tuple[str, ...], int]:
    """The ready addresses behind the activator's Service and their port, from its EndpointSlices."""
    found = await client.request(
        "GET", api_path("discovery.k8s.io/v1", "endpointslices", namespace),
        params={"labelSelector": f"{SERVICE_NAME_LABEL}={service}"},
    )  # fmt: skip
    addresses: set[str] = set()
    port = 0
    for item in (found or {}).get("items") or []:
        ports = [p for p in item.get("ports") or [] if isinstance(p.get("port"), int)]
        if not ports:
            continue
        port = port or int(next((p for p in ports if p.get("name") == "http"), ports[0])["port"])
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                addresses.update(str(a) for a in endpoint.get("addresses") or [])
    return tuple(sorted(addresses)), port
