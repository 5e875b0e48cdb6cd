"""TrainingJob on the skeleton: which children it watches, what it references, how it reads rank 0's
progress, and its plan (the pure `decide` composed with the pure `render`)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Any

from lepton.api import KINDS, TrainingJob
from lepton.api.constants import Label, Phase
from lepton.api.contract import METRICS_PORT, ProgressReport
from lepton.api.tokens import PROGRESS_TOKEN_ENV, progress_token
from lepton.controller.kube import KubeClient, KubeError
from lepton.controller.progress import fetch_progress
from lepton.controller.reconciler import IDLE_SECONDS, Binding, ChildKind, Key
from lepton.render.networkpolicy import NetworkSettings, render_network_policy
from lepton.render.trainingjob import RenderSettings, Resolved, render, render_service
from lepton.status.events import trainingjob_events
from lepton.status.plan import Observed, Plan
from lepton.status.pods import PodView
from lepton.status.references import Resolution
from lepton.status.trainingjob import decide

PROGRESS_SECONDS = 10.0  # how often rank 0's progress is read while a job runs
POLL_SECONDS = 1.0  # while time-sensitive (backoff, deadlines); otherwise events wake the loop
GANG_API = ("scheduling.k8s.io/v1beta1", "podgroups")


class TrainingJobBinding(Binding[TrainingJob]):
    info = KINDS["TrainingJob"]
    children = (ChildKind("v1", "Pod", "pods", pruned=True), ChildKind("v1", "Service", "services"))
    settling = frozenset({Phase.PENDING, Phase.STARTING})  # a gang coming up: created, scheduled, starting

    def __init__(self, settings: RenderSettings, backoff_base: float, *, progress_key: bytes,
                 network: NetworkSettings | None = None) -> None:  # fmt: skip
        self.settings, self.backoff_base = settings, backoff_base
        self.progress_key, self.network = progress_key, network
        self._gang: bool | None = None
        self._progress: dict[Key, ProgressReport] = {}
        self._scraped: dict[Key, float] = {}

    async def prepare(self, client: KubeClient) -> None:
        if self._gang is None:  # native gang scheduling, when the cluster serves it; asked until answered
            self._gang = await client.serves(*GANG_API)
            if self._gang is None:
                raise KubeError(0, "discovery of scheduling.k8s.io/v1beta1 failed; pods wait until it answers")

    def learned(self) -> Hashable:
        return self._gang

    def needs_references(self, resource: TrainingJob, observed: Observed) -> bool:
        return not observed.of("Pod")  # a running gang keeps what it was started with

    async def observe_extra(self, key: Key, body: Mapping[str, Any], observed: Observed) -> ProgressReport | None:
        """Every PROGRESS_SECONDS while running, rank 0's /progress over the pod network: training pods
        need no API access and no sidecar for their progress to reach status."""
        status = body.get("status") or {}
        if status.get("phase") == Phase.RUNNING and time.monotonic() - self._scraped.get(key, 0.0) >= PROGRESS_SECONDS:
            self._scraped[key] = time.monotonic()
            attempt = str(status.get("attempt", 0))
            ip = next((p.get("status", {}).get("podIP") for p in observed.of("Pod")
                       if p["metadata"].get("labels", {}).get(Label.NODE_INDEX) == "0"
                       and p["metadata"]["labels"].get(Label.ATTEMPT) == attempt), None)  # fmt: skip
            token = progress_token(self.progress_key, str(body.get("metadata", {}).get("uid") or "-"))
            report = await fetch_progress(f"http://{ip}:{METRICS_PORT}/progress", token) if ip else None
            if report is not None:
                self._progress[key] = ProgressReport.parse(report)
        return self._progress.get(key)

    def plan(self, resource: TrainingJob, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        pods = observed.of("Pod")
        decision = decide(resource, [PodView.of(p) for p in pods], now, backoff_base=self.backoff_base,
                          waiting_for=resolution.waiting, progress=extra)  # fmt: skip
        children = [render_service(resource)]
        if self.network is not None:  # only the gang, the operator and Prometheus reach the pods
            children.append(render_network_policy(resource, self.network))
        present = {str(p["metadata"]["name"]) for p in pods}
        if decision.create and not decision.keep <= present:  # rendered only while a pod is missing
            settings = RenderSettings(self.settings.trainer_image, bool(self._gang),
                                      self.settings.termination_grace_seconds)  # fmt: skip
            token = progress_token(self.progress_key, resource.metadata.uid or "-")
            uris = resolution.uris
            resolved = Resolved(model_uri=uris.get("model"), data_uri=uris.get("data"),
                                dataset_version=resolution.dataset_version, teacher_uri=uris.get("teacher"),
                                extra_env={PROGRESS_TOKEN_ENV: token}, lineage=resolution.lineage)  # fmt: skip
            children += [c for c in render(resource, decision.attempt, settings, resolved)
                         if c["kind"] == "PodGroup" or c["metadata"]["name"] in decision.keep]  # fmt: skip
        status = decision.status
        if decision.create and resolution.dataset_version and not status.dataset_version:
            status = status.model_copy(update={"dataset_version": resolution.dataset_version})  # trains on it
        return Plan(
            status=status,
            children=children,
            keep=frozenset(("Pod", name) for name in decision.keep),
            events=trainingjob_events(resource.status, status),
            requeue_after=decision.requeue_after,
        )

    def next_look(self, body: Mapping[str, Any]) -> tuple[float, bool]:
        status, spec = body.get("status") or {}, body.get("spec") or {}
        if status.get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
            return IDLE_SECONDS, False
        if status.get("nextAttemptTime") or spec.get("activeDeadlineSeconds") or spec.get("startupDeadlineSeconds"):
            return POLL_SECONDS, True
        return PROGRESS_SECONDS, False

    def forget(self, key: Key) -> None:
        self._progress.pop(key, None)
        self._scraped.pop(key, None)
