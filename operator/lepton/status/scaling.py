"""Scale to zero and back (autoscaling.minReplicas 0), decided purely from what was observed.

The cycle, one state per row; each arrow is one operator pass or the activator's one write:

    serving ──idle──▶ at zero ──a request──▶ activating ──a replica ready──▶ serving
    (selector)        (slice → activator,    (the activator scaled the        (selector again;
                       replicas 0)            Deployment to 1; still routed)   slice pruned)

- Idle comes from the replicas' own metrics (`lepton_server_last_request_timestamp_seconds`, and no
  request in flight), read from every ready replica: one that does not answer means no decision, since
  a replica that cannot be read may be the busy one.
- While routed, Service NAME has no selector and our EndpointSlice lists the activator. Routing is
  handed back only once a primary replica is ready (its model loaded: the readiness probe); until then
  the activator holds and forwards.
- Without activator endpoints nothing goes to zero (requests would find no one), and a service at
  zero is scaled back to one replica: staying up is the safe failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lepton.api.conditions import ConditionType, Reason
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.kinds import InferenceService
from lepton.status.story import Story

LAST_REQUEST = "lepton_server_last_request_timestamp_seconds"
INFLIGHT = "lepton_server_inflight_requests"


@dataclass(frozen=True)
class ReplicaSample:
    """What one ready replica's /metrics said."""

    pod: str
    last_request: float | None  # unix seconds; None when the metric is missing (an older server)
    inflight: float = 0.0


@dataclass(frozen=True)
class ServingSample:
    """The ready primary replicas' request metrics, read at `at` (unix seconds)."""

    at: float
    replicas: tuple[ReplicaSample, ...] = ()
    unreachable: tuple[str, ...] = ()  # ready replicas that did not answer

    def pods(self) -> set[str]:
        return {r.pod for r in self.replicas} | set(self.unreachable)


@dataclass(frozen=True)
class ScaleView:
    """What the scale-to-zero decision read: the primary Deployment's counts and our own routing."""

    spec_replicas: int | None  # None: no primary Deployment yet
    ready: int
    routed: bool  # Service NAME has no selector now: requests go to the activator
    sample: ServingSample | None = None
    addresses: tuple[str, ...] = ()  # the activator's endpoints
    port: int = 0


@dataclass(frozen=True)
class Scaling:
    """The decision and the words for it."""

    active: bool  # False: serve as with minReplicas 1 (no activator endpoints)
    routed: bool  # requests go to the activator (Service NAME without selector, our EndpointSlice)
    idle: bool  # scale the primary to zero in this pass
    at_zero: bool  # no replica now, or going to none in this pass
    reason: str
    message: str


def enabled(svc: InferenceService) -> bool:
    scaling = svc.spec.autoscaling
    return scaling is not None and scaling.min_replicas == 0 and not svc.spec.suspend


def idle_seconds(sample: ServingSample | None) -> float | None:
    """Seconds since the newest request over all ready replicas, or None when that is not known
    (a replica did not answer, its metric is missing, or a request is in flight)."""
    if sample is None or sample.unreachable or not sample.replicas:
        return None
    if any(r.last_request is None or r.inflight > 0 for r in sample.replicas):
        return None
    newest = max(r.last_request or 0.0 for r in sample.replicas)
    return max(sample.at - newest, 0.0)


def parse_metrics(pod: str, text: str) -> ReplicaSample:
    """The two samples the decision needs, from a Prometheus text exposition (unlabelled gauges)."""
    last: float | None = None
    inflight = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name not in (LAST_REQUEST, INFLIGHT):
            continue
        try:
            number = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if not math.isfinite(number):
            continue
        if name == LAST_REQUEST:
            last = number if number > 0 else None
        else:
            inflight = number
    return ReplicaSample(pod, last, inflight)


def decide_scaling(svc: InferenceService, view: ScaleView) -> Scaling | None:
    """None when the service does not scale to zero (minReplicas > 0, suspended)."""
    if not enabled(svc) or svc.spec.autoscaling is None:
        return None
    idle_after = svc.spec.autoscaling.idle_seconds
    at_zero = view.spec_replicas == 0
    if not view.addresses:
        message = ("no activator endpoints (the chart's activator.enabled, Service lepton-activator): it "
                   "keeps at least one replica, since requests at zero would find no one")  # fmt: skip
        return Scaling(False, False, False, False, Reason.ACTIVATOR_UNAVAILABLE, message)
    idle = idle_seconds(view.sample)
    going = not at_zero and view.ready > 0 and idle is not None and idle >= idle_after
    routed = going or at_zero or (view.routed and view.ready == 0)
    if going or at_zero:
        message = (f"no replica: scaled to zero after {idle_after}s without a request; the activator holds "
                   "requests and scales it up on the first")  # fmt: skip
        return Scaling(True, routed, going, True, Reason.IDLE, message)
    if routed:
        message = ("a request arrived at zero: scaling up; the activator holds requests until a replica has "
                   "loaded its model")  # fmt: skip
        return Scaling(True, routed, going, False, Reason.ACTIVATING, message)
    if view.sample is not None and view.sample.unreachable:
        message = (f"the request metrics of {', '.join(view.sample.unreachable[:3])} could not be read: it does "
                   "not scale to zero until every ready replica answers")  # fmt: skip
        return Scaling(True, routed, going, False, Reason.METRICS_UNAVAILABLE, message)
    shown = f"; idle for {idle:.0f}s" if idle is not None else ""
    return Scaling(True, routed, going, False, Reason.SERVING,
                   f"serving; scales to zero after {idle_after}s without a request{shown}")  # fmt: skip


def tell(s: Story[InferenceServiceStatus], scaling: Scaling | None) -> None:
    """The ScaledToZero condition (absent when the service does not scale to zero)."""
    if scaling is None:
        s.update(conditions=[c for c in s.status.conditions if c.type != ConditionType.SCALED_TO_ZERO])
        return
    s.set(ConditionType.SCALED_TO_ZERO, scaling.at_zero, scaling.reason, scaling.message)


def routed_now(service: Mapping[str, Any] | None) -> bool:
    """Whether our Service NAME routes to the activator now (it has no selector)."""
    if service is None:
        return False
    spec = service.get("spec")
    return isinstance(spec, Mapping) and not spec.get("selector")


__all__: Sequence[str] = ["ReplicaSample", "ScaleView", "Scaling", "ServingSample", "decide_scaling", "tell"]
