"""InferenceService on the skeleton: the children it watches (Deployments, Services, the autoscaler,
the disruption budget, and the Deployments' pods read for status), the HTTPRoute it reads by name
where the cluster serves the Gateway API, and its plan (the pure `decide` composed with `render`)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Any

from lepton.api import KINDS, InferenceService
from lepton.controller.kube import KubeClient
from lepton.controller.reconciler import IDLE_SECONDS, Binding, ChildKind, Key
from lepton.render.inferenceservice import GATEWAY_API, MONITORING_API, ServeResolved, ServeSettings, render
from lepton.render.networkpolicy import NetworkSettings
from lepton.status.clock import rfc3339
from lepton.status.events import inferenceservice_events
from lepton.status.inferenceservice import DeploymentView, RouteView, Serving, Wanted, decide
from lepton.status.plan import ChildKey, Observed, Plan
from lepton.status.pods import PodView
from lepton.status.references import Resolution, references, source_location

REFERENCE_LOOK_SECONDS = 5.0  # while waiting for a model from another resource
ROUTE_LOOK_SECONDS = 30.0  # a mesh accepting the route writes only the route's status: look for it


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
    )

    def __init__(self, server_image: str, network: NetworkSettings | None = None, *,
                 discovery_seconds: float = 60.0) -> None:  # fmt: skip
        self.server_image, self.network = server_image, network
        self.discovery_seconds = discovery_seconds  # the Gateway API may be installed after the operator started
        self._gateway: bool = False
        self._monitoring: bool | None = None
        self._asked = float("-inf")

    async def prepare(self, client: KubeClient) -> None:
        if time.monotonic() - self._asked >= self.discovery_seconds:
            gateway, monitoring = await client.serves(*GATEWAY_API), await client.serves(*MONITORING_API)
            if gateway is not None and monitoring is not None:  # a failed discovery keeps the last answers
                self._gateway, self._monitoring, self._asked = gateway, monitoring, time.monotonic()

    def learned(self) -> Hashable:
        return self._gateway, self._monitoring

    async def fetch_children(self, client: KubeClient, key: Key, body: Mapping[str, Any]) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for served, (api_version, _), kind in ((self._gateway, GATEWAY_API, "HTTPRoute"),
                                                (self._monitoring, MONITORING_API, "ServiceMonitor")):  # fmt: skip
            if served:
                obj = await client.get(api_version, kind, key[0], key[1])
                found[kind] = [obj] if obj is not None else []
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
        rendered = render(
            resource,
            ServeSettings(self.server_image, self._gateway, bool(self._monitoring)),
            ServeResolved(model_uri=uris.get("model"), canary_uri=uris.get("canary"), lineage=resolution.lineage),
            current_primary=primary.spec_replicas if primary is not None and autoscaled else None,
            network=self.network,
        )
        models = {"model": uris.get("model") or source_location(resource.spec.model)}
        if resource.spec.canary is not None:
            models["canary"] = uris.get("canary") or source_location(resource.spec.canary.model)
        wanted = Wanted(rendered.primary_replicas, rendered.canary_replicas, rendered.mode)
        status = decide(resource, serving, wanted, models=models, has_references=has_refs,
                        monitoring_api=self._monitoring, now=stamp)  # fmt: skip
        return Plan(
            status=status,
            children=rendered.children,
            keep=frozenset[ChildKey](),
            events=inferenceservice_events(resource.status, status),
        )

    def next_look(self, body: Mapping[str, Any]) -> tuple[float, bool]:
        spec = body.get("spec") or {}
        if self._gateway and spec.get("canary"):
            return ROUTE_LOOK_SECONDS, True
        if (spec.get("canary") and not self._gateway) or (spec.get("serviceMonitor") and not self._monitoring):
            # An API it would use may be installed any time: a forced pass asks discovery again.
            return max(self.discovery_seconds, 1.0), True
        return IDLE_SECONDS, False
