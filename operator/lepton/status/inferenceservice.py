"""InferenceService status, computed purely from the service, its Deployments, their pods and (in
gateway-api mode) its HTTPRoute.

A replica is ready only once its model is loaded and warmed (the readiness probe is the server's
/v2/health/ready), so `ModelLoaded` is read from the primary's ready replicas, never from the
Deployment's availability alone. `Ready` (what `kubectl wait`, Flux and Argo CD read) is true when
the primary and (when it gets traffic) the canary serve, and every replica runs the current spec.
When a replica is not ready the pods tell why: the image cannot be pulled, it crash-loops, it ran
out of memory, it cannot be scheduled, or the model failed to load (with the server's own message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lepton.api.conditions import ConditionType, Reason, get_condition
from lepton.api.constants import Label, Phase
from lepton.api.inferenceservice import InferenceServiceStatus, TrafficMode, TrafficSplit
from lepton.api.kinds import InferenceService
from lepton.status import scaling as scaled_to_zero
from lepton.status.drift import Scores, drift_condition
from lepton.status.pods import PodView
from lepton.status.scaling import Scaling
from lepton.status.story import Story

PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")


@dataclass(frozen=True)
class Wanted:
    """What the render asks for: replicas per role and the traffic split's mode."""

    primary: int
    canary: int = 0
    mode: TrafficMode | None = None


@dataclass(frozen=True)
class DeploymentView:
    """What the status needs of one Deployment, as the apiserver returns it."""

    generation: int = 0
    observed_generation: int = 0
    spec_replicas: int = 1
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    deadline_exceeded: str | None = None  # the Progressing condition's message once the deadline passed
    replica_failure: str | None = None  # e.g. a quota or an admission webhook refusing pods

    @classmethod
    def of(cls, obj: Mapping[str, Any] | None) -> DeploymentView | None:
        if obj is None:
            return None
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        deadline = failure = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                deadline = str(cond.get("message") or "")
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                failure = str(cond.get("message") or cond.get("reason") or "")
        return cls(
            generation=_int(meta.get("generation")),
            observed_generation=_int(status.get("observedGeneration")),
            spec_replicas=_int(spec.get("replicas"), 1),
            replicas=_int(status.get("replicas")),
            ready=_int(status.get("readyReplicas")),
            updated=_int(status.get("updatedReplicas")),
            deadline_exceeded=deadline,
            replica_failure=failure,
        )

    @property
    def rolled_out(self) -> bool:
        """Every replica runs the current template and there are as many as wanted."""
        return (
            self.observed_generation >= self.generation
            and self.updated == self.spec_replicas
            and self.replicas == self.updated
        )


@dataclass(frozen=True)
class RouteView:
    accepted: bool | None  # None: no mesh or gateway controller has looked at the route
    message: str = ""

    @classmethod
    def of(cls, obj: Mapping[str, Any] | None) -> RouteView | None:
        if obj is None:
            return None
        for parent in (obj.get("status") or {}).get("parents") or []:
            for cond in parent.get("conditions") or []:
                if cond.get("type") == "Accepted":
                    return cls(cond.get("status") == "True", str(cond.get("message") or ""))
        return cls(None)


@dataclass(frozen=True)
class Serving:
    """The children as observed."""

    primary: DeploymentView | None = None
    canary: DeploymentView | None = None
    pods: Sequence[PodView] = ()
    route: RouteView | None = None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def primary_selector(svc: InferenceService) -> str:
    """The primary's pods as a label selector string (the scale subresource's, for `kubectl scale`)."""
    labels = {Label.KIND: svc.kind, Label.NAME: svc.metadata.name, Label.ROLE: "primary"}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def url(svc: InferenceService) -> str:
    return f"http://{svc.metadata.name}.{svc.metadata.namespace or 'default'}.svc"


def why_not_ready(pods: Sequence[PodView]) -> tuple[str, str] | None:
    """(reason, message) of the most telling problem among one role's pods that are not ready."""
    found: dict[str, str] = {}
    for pod in pods:
        if pod.ready or pod.deleting:
            continue
        if pod.last_reason == "OOMKilled" or pod.terminated_reason == "OOMKilled":
            found.setdefault(Reason.OOM_KILLED, f"{pod.name} ran out of memory: raise resources.limits.memory")
        elif pod.last_reason is not None:
            detail = pod.last_message or f"exit code {pod.last_exit_code}"
            found.setdefault(Reason.MODEL_LOAD_FAILED, f"{pod.name}: {detail}")
        elif pod.waiting_reason in PULL_REASONS:
            found.setdefault(Reason.IMAGE_PULL_BACKOFF, f"{pod.name}: {pod.waiting_reason}: {pod.waiting_message}")
        elif pod.waiting_reason in CONFIG_REASONS:
            found.setdefault(Reason.ERROR, f"{pod.name}: {pod.waiting_reason}: {pod.waiting_message}")
        elif pod.waiting_reason == "CrashLoopBackOff":
            found.setdefault(Reason.CRASH_LOOP_BACKOFF, f"{pod.name}: {pod.waiting_message}")
        elif pod.unschedulable is not None:
            found.setdefault(Reason.UNSCHEDULABLE, f"{pod.name}: {pod.unschedulable}")
        elif pod.phase == Phase.RUNNING:
            found.setdefault(Reason.MODEL_LOADING, f"{pod.name} is loading its model")
    order = (Reason.MODEL_LOAD_FAILED, Reason.OOM_KILLED, Reason.CRASH_LOOP_BACKOFF, Reason.IMAGE_PULL_BACKOFF,
             Reason.ERROR, Reason.UNSCHEDULABLE, Reason.MODEL_LOADING)  # fmt: skip
    return next(((r, found[r]) for r in order if r in found), None)


def _traffic(svc: InferenceService, wanted: Wanted, serving: Serving) -> TrafficSplit | None:
    """The split in force: the route's weights once a mesh accepted the route, else the ready replicas'
    shares (all replicas sit behind one Service)."""
    canary = svc.spec.canary
    if canary is None:
        return None
    if wanted.mode == "gateway-api" and serving.route is not None and serving.route.accepted:
        return TrafficSplit(mode="gateway-api", primary_percent=100 - canary.traffic_percent,
                            canary_percent=canary.traffic_percent)  # fmt: skip
    primary = serving.primary.ready if serving.primary else 0
    candidate = serving.canary.ready if serving.canary else 0
    if primary + candidate == 0:
        return None
    share = round(100 * candidate / (primary + candidate))
    return TrafficSplit(mode="replicas", primary_percent=100 - share, canary_percent=share)


def _role_state(
    role: str, view: DeploymentView | None, wanted: int, pods: Sequence[PodView]
) -> tuple[bool, str, str, bool]:
    """(serves, reason, message, stalled) of one role."""
    ready = view.ready if view else 0
    if wanted == 0:
        return True, Reason.NO_REPLICAS, f"the {role} has no replicas", False
    if view is not None and view.deadline_exceeded is not None:
        reason, message = why_not_ready(pods) or (Reason.PROGRESS_DEADLINE_EXCEEDED, view.deadline_exceeded)
        return ready > 0, reason, f"{message} (rollout gave up: {view.deadline_exceeded})", True
    if ready > 0:
        return True, Reason.MODEL_LOADED, f"{ready}/{wanted} {role} replicas have the model loaded", False
    if view is not None and view.replica_failure:
        return False, Reason.REPLICA_FAILURE, view.replica_failure, False
    reason, message = why_not_ready(pods) or (Reason.PENDING, f"waiting for {role} replicas to start")
    return False, reason, message, False


def _monitored(s: Story[InferenceServiceStatus], svc: InferenceService, served: bool) -> None:
    if served:
        s.set(ConditionType.MONITORED, True, Reason.SERVICE_MONITOR_CREATED,
              f"ServiceMonitor {svc.metadata.name!r} scrapes /metrics of every replica")  # fmt: skip
    else:
        s.set(ConditionType.MONITORED, False, Reason.API_NOT_SERVED,
              "the cluster does not serve monitoring.coreos.com/v1 ServiceMonitors (install the Prometheus "
              "Operator's CRDs): no ServiceMonitor was created")  # fmt: skip


def _loaded(serves: bool, view: DeploymentView | None, wanted: int, reason: str, message: str) -> tuple[bool, str, str]:
    """A role's loaded-model condition: True (ModelLoaded) while any replica serves, even when others fail."""
    if serves:
        return True, Reason.MODEL_LOADED, f"{view.ready if view else 0}/{wanted} replicas have the model loaded"
    return False, reason, message


def decide(
    svc: InferenceService,
    serving: Serving,
    wanted: Wanted | None,
    *,
    waiting: Sequence[str] = (),
    models: Mapping[str, str] | None = None,
    has_references: bool = False,
    monitoring_api: bool | None = None,
    scaling: Scaling | None = None,
    drift: Scores | None = None,
    now: str,
) -> InferenceServiceStatus:
    """The status for this observation. `wanted` is None while references are unresolved;
    `monitoring_api` is whether the cluster serves ServiceMonitors (None: not known yet); `scaling` the
    scale-to-zero decision (minReplicas 0); `drift` the replicas' drift scores (spec.drift)."""
    generation = int(svc.metadata.generation or 0)
    s = Story(svc.status, generation, now)
    s.update(url=url(svc), selector=primary_selector(svc), observed_generation=generation)
    models = models or {}
    if has_references:
        if waiting:
            s.set(ConditionType.REFERENCES_RESOLVED, False, Reason.REFERENCE_NOT_READY, "; ".join(waiting))
        else:
            s.set(ConditionType.REFERENCES_RESOLVED, True, Reason.REFERENCES_READY, "")
    primary, canary = serving.primary, serving.canary
    s.update(
        replicas=primary.replicas if primary else 0,
        ready_replicas=primary.ready if primary else 0,
        canary_ready_replicas=(canary.ready if canary else 0) if svc.spec.canary else None,
        model=models.get("model", svc.status.model),
        canary_model=models.get("canary") if svc.spec.canary else None,
    )
    dropped = {ConditionType.CANARY_READY} if svc.spec.canary is None else set()
    if not svc.spec.service_monitor:
        dropped.add(ConditionType.MONITORED)
    elif monitoring_api is not None:
        _monitored(s, svc, monitoring_api)
    s.update(conditions=[c for c in s.status.conditions if c.type not in dropped])
    drift_condition(s, svc.spec.drift, *(drift or (None, None)))  # beside the story: drift never unreadies
    if waiting or wanted is None:
        message = "waiting for the model: " + "; ".join(waiting)
        s.set(ConditionType.MODEL_LOADED, False, Reason.REFERENCE_NOT_READY, message)
        s.story(ready=False, reconciling=True, stalled=False, reason=Reason.REFERENCE_NOT_READY, message=message)
        s.update(phase=Phase.PENDING, traffic=None, desired_replicas=0, ready=None)
        return s.status

    wanted_canary, wanted_primary = wanted.canary, wanted.primary
    total_ready = (primary.ready if primary else 0) + ((canary.ready if canary else 0) if svc.spec.canary else 0)
    s.update(desired_replicas=wanted_primary, ready=f"{total_ready}/{wanted_primary + wanted_canary}",
             traffic=_traffic(svc, wanted, serving))  # fmt: skip
    if svc.spec.suspend:
        message = "suspended: no replicas serve; set spec.suspend to false to serve again"
        s.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED, message)
        s.set(ConditionType.MODEL_LOADED, False, Reason.SUSPENDED, message)
        if svc.spec.canary is not None:
            s.set(ConditionType.CANARY_READY, False, Reason.SUSPENDED, message)
        s.story(ready=False, reconciling=False, stalled=False, reason=Reason.SUSPENDED, message=message)
        s.update(phase=Phase.SUSPENDED, traffic=None)
        return s.status
    if get_condition(s.status.conditions, ConditionType.SUSPENDED) is not None:
        s.set(ConditionType.SUSPENDED, False, Reason.SERVING, "")

    scaled_to_zero.tell(s, scaling)
    if scaling is not None and scaling.at_zero:
        # Ready: it does what it is for, answering through the activator (kstatus reads Current)
        s.set(ConditionType.MODEL_LOADED, False, Reason.NO_REPLICAS, scaling.message)
        s.story(ready=True, reconciling=False, stalled=False, reason=Reason.IDLE, message=scaling.message)
        s.update(phase=Phase.SCALED_TO_ZERO)
        return s.status
    _serving_story(s, svc, serving, wanted, total_ready)
    return s.status


def _serving_story(
    s: Story[InferenceServiceStatus], svc: InferenceService, serving: Serving, wanted: Wanted, total_ready: int
) -> None:
    """ModelLoaded, CanaryReady and the Ready/Reconciling/Stalled story of a service that is not suspended."""
    primary, canary = serving.primary, serving.canary
    wanted_canary, wanted_primary = wanted.canary, wanted.primary
    pods = [p for p in serving.pods if not p.deleting]
    p_serves, p_reason, p_message, p_stalled = _role_state(
        "primary", primary, wanted_primary, [p for p in pods if p.role == "primary"]
    )
    s.set(ConditionType.MODEL_LOADED, *_loaded(p_serves and wanted_primary > 0, primary, wanted_primary,
                                                p_reason, p_message))  # fmt: skip
    c_serves, c_stalled, c_reason, c_message = True, False, "", ""
    if svc.spec.canary is not None:
        c_serves, c_reason, c_message, c_stalled = _role_state(
            "canary", canary, wanted_canary, [p for p in pods if p.role == "canary"]
        )
        _, shown_reason, shown = _loaded(c_serves and wanted_canary > 0, canary, wanted_canary, c_reason, c_message)
        if wanted.mode == "gateway-api" and serving.route is not None and not serving.route.accepted:
            shown += (
                "; the HTTPRoute is not accepted by a mesh yet "
                f"({serving.route.message or 'no controller answered'}): the split follows the ready replicas"
            )
        s.set(ConditionType.CANARY_READY, c_serves, shown_reason, shown)

    rolled = (primary is None or primary.rolled_out) and (svc.spec.canary is None or canary is None
                                                          or canary.rolled_out)  # fmt: skip
    serves = p_serves and c_serves and total_ready > 0
    # As kstatus reads a Deployment: done when every wanted replica is ready (the model loaded on each).
    missing = max(wanted_primary - (primary.ready if primary else 0), 0)
    if svc.spec.canary is not None:
        missing += max(wanted_canary - (canary.ready if canary else 0), 0)
    if p_stalled or c_stalled:
        reason, message = (p_reason, p_message) if p_stalled else (c_reason, c_message)
        s.story(ready=False, reconciling=False, stalled=True, reason=Reason.PROGRESS_DEADLINE_EXCEEDED,
                message=f"{reason}: {message}")  # fmt: skip
        s.update(phase=Phase.STALLED)
    elif serves and rolled and not missing:
        s.story(ready=True, reconciling=False, stalled=False, reason=Reason.SERVING,
                message=f"serving at {url(svc)} ({total_ready} replicas ready)")  # fmt: skip
        s.update(phase=Phase.RUNNING)
    else:
        if serves and not rolled:
            reason, message = Reason.ROLLING_OUT, "rolling out the current spec; earlier replicas still serve"
        elif serves:
            pods_say = why_not_ready(pods)
            reason, message = pods_say or (Reason.PROGRESSING, f"{missing} more replicas starting")
            message = f"serving; {missing} more replicas to go: {message}"
        elif not p_serves:
            reason, message = p_reason, p_message
        else:
            reason, message = c_reason, c_message
        s.story(ready=False, reconciling=True, stalled=False, reason=reason, message=message)
        s.update(phase=Phase.RUNNING if total_ready else (Phase.STARTING if pods else Phase.PENDING))
