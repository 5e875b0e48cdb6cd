"""InferenceService status, table-tested: each not-ready reason read off the pods as the apiserver
returns them, the traffic split in force, suspend, references, rollouts, and the events told."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from lepton.api.conditions import get_condition
from lepton.api.constants import Label
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.validation import parse
from lepton.status.events import inferenceservice_events
from lepton.status.inferenceservice import DeploymentView, RouteView, Serving, Wanted, decide, why_not_ready
from lepton.status.pods import PodView

NOW = "2026-11-24T00:00:00Z"
CANARY = {"model": {"uri": "/models/candidate"}, "trafficPercent": 20}


def service(**spec: Any) -> Any:
    return parse({
        "apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1", "generation": 3},
        "spec": {"model": {"uri": "/models/chat"}} | spec,
    })  # fmt: skip


def deployment(
    ready: int, replicas: int | None = None, *, spec: int | None = None, updated: int | None = None,
    generation: int = 2, observed: int = 2, conditions: list[dict[str, Any]] | None = None,
) -> DeploymentView:  # fmt: skip
    replicas = ready if replicas is None else replicas
    view = DeploymentView.of({
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas if spec is None else spec},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                   "updatedReplicas": replicas if updated is None else updated, "conditions": conditions or []},
    })  # fmt: skip
    assert view is not None
    return view


def pod(name: str, role: str = "primary", *, ready: bool = False, phase: str = "Running",
        waiting: tuple[str, str] | None = None, last: dict[str, Any] | None = None,
        unschedulable: str | None = None) -> PodView:  # fmt: skip
    cs: dict[str, Any] = {"name": "server", "state": {"running": {}} if phase == "Running" else {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if last:
        cs["lastState"] = {"terminated": last}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": unschedulable})  # fmt: skip
    return PodView.of({
        "metadata": {"name": name, "labels": {Label.ROLE: role}},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": [cs]},
    })  # fmt: skip


@dataclass
class Case:
    spec: dict[str, Any] = field(default_factory=dict)
    serving: Serving = field(default_factory=Serving)
    wanted: Wanted | None = field(default_factory=lambda: Wanted(2))
    waiting: list[str] = field(default_factory=list)
    # expected
    phase: str = "Running"
    ready: tuple[str, str] = ("True", "Serving")
    model_loaded: tuple[str, str] | None = ("True", "ModelLoaded")
    stalled: str = "False"
    message_has: str = ""
    canary: tuple[str, str] | None = None
    traffic: tuple[str, int] | None = None


LOAD_FAILED = {"exitCode": 1, "reason": "Error", "message": "model failed to load: /models/chat: no config.json"}
CASES = {
    "waiting-for-training-job": Case(
        spec={"model": {"trainingJob": {"name": "tuned"}}}, wanted=None,
        waiting=["TrainingJob 'tuned' has not produced its model yet (phase Running)"],
        phase="Pending", ready=("False", "ReferenceNotReady"), model_loaded=("False", "ReferenceNotReady"),
        message_has="TrainingJob 'tuned' has not produced its model yet"),
    "nothing-created-yet": Case(
        phase="Pending", ready=("False", "Pending"), model_loaded=("False", "Pending")),
    "loading-the-model": Case(
        serving=Serving(primary=deployment(0, 2), pods=[pod("p-1"), pod("p-2")]),
        phase="Starting", ready=("False", "ModelLoading"), model_loaded=("False", "ModelLoading")),
    "image-pull": Case(
        serving=Serving(primary=deployment(0, 1), pods=[pod("p-1", phase="Pending",
                        waiting=("ImagePullBackOff", 'Back-off pulling image "lepton/server:typo"'))]),
        phase="Starting", ready=("False", "ImagePullBackOff"), model_loaded=("False", "ImagePullBackOff"),
        message_has="lepton/server:typo"),
    "model-failed-to-load": Case(
        serving=Serving(primary=deployment(0, 1), pods=[pod("p-1", waiting=("CrashLoopBackOff", "back-off 40s"),
                                                             last=LOAD_FAILED)]),
        phase="Starting", ready=("False", "ModelLoadFailed"), model_loaded=("False", "ModelLoadFailed"),
        message_has="no config.json"),
    "out-of-memory": Case(
        serving=Serving(primary=deployment(0, 1), pods=[pod("p-1", waiting=("CrashLoopBackOff", "back-off"),
                                                             last={"exitCode": 137, "reason": "OOMKilled"})]),
        phase="Starting", ready=("False", "OOMKilled"), model_loaded=("False", "OOMKilled"),
        message_has="resources.limits.memory"),
    "crash-loop-without-a-message": Case(
        serving=Serving(primary=deployment(0, 1), pods=[pod("p-1", waiting=("CrashLoopBackOff", "back-off 10s"))]),
        phase="Starting", ready=("False", "CrashLoopBackOff"), model_loaded=("False", "CrashLoopBackOff")),
    "unschedulable": Case(
        serving=Serving(primary=deployment(0, 1), pods=[pod("p-1", phase="Pending",
                        unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")]),
        phase="Starting", ready=("False", "Unschedulable"), model_loaded=("False", "Unschedulable"),
        message_has="Insufficient nvidia.com/gpu"),
    "quota-refuses-pods": Case(
        serving=Serving(primary=deployment(0, 0, spec=2, updated=0, conditions=[
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": 'pods "chat-primary-x" is forbidden: exceeded quota'}])),
        phase="Pending", ready=("False", "ReplicaFailure"), model_loaded=("False", "ReplicaFailure"),
        message_has="exceeded quota"),
    "serving": Case(serving=Serving(primary=deployment(2), pods=[pod("p-1", ready=True), pod("p-2", ready=True)]),
                    message_has="http://chat.team-a.svc"),
    "one-replica-of-two-still-loading": Case(
        serving=Serving(primary=deployment(1, 2), pods=[pod("p-1", ready=True), pod("p-2")]),
        ready=("False", "ModelLoading"), message_has="1 more replicas to go"),
    "rolling-out-a-new-model": Case(
        serving=Serving(primary=deployment(2, 3, spec=2, updated=1), pods=[pod("p-3")]),
        ready=("False", "RollingOut")),
    "rollout-gave-up": Case(
        serving=Serving(primary=deployment(1, 2, spec=2, updated=1, conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "chat-primary-7d" has timed out progressing.'}]),
            pods=[pod("p-1", ready=True), pod("p-2", waiting=("CrashLoopBackOff", "b"), last=LOAD_FAILED)]),
        phase="Stalled", ready=("False", "ProgressDeadlineExceeded"), stalled="True",
        message_has="no config.json"),
    "canary-by-replicas": Case(
        spec={"canary": CANARY}, wanted=Wanted(4, 1, "replicas"),
        serving=Serving(primary=deployment(4), canary=deployment(1)),
        canary=("True", "ModelLoaded"), traffic=("replicas", 20)),
    "canary-not-ready-yet": Case(
        spec={"canary": CANARY}, wanted=Wanted(4, 1, "replicas"),
        serving=Serving(primary=deployment(4), canary=deployment(0, 1), pods=[pod("c-1", "canary")]),
        ready=("False", "ModelLoading"), canary=("False", "ModelLoading"), traffic=("replicas", 0)),
    "canary-by-accepted-route": Case(
        spec={"canary": CANARY}, wanted=Wanted(4, 1, "gateway-api"),
        serving=Serving(primary=deployment(4), canary=deployment(1), route=RouteView(True)),
        canary=("True", "ModelLoaded"), traffic=("gateway-api", 20)),
    "canary-route-nobody-accepted": Case(
        spec={"canary": CANARY | {"trafficPercent": 50}}, wanted=Wanted(3, 2, "gateway-api"),
        serving=Serving(primary=deployment(3), canary=deployment(2), route=RouteView(None)),
        canary=("True", "ModelLoaded"), traffic=("replicas", 40)),
    "canary-takes-all": Case(
        spec={"canary": CANARY | {"trafficPercent": 100}}, wanted=Wanted(0, 2, "replicas"),
        serving=Serving(primary=deployment(0, 0), canary=deployment(2)),
        model_loaded=("False", "NoReplicas"), canary=("True", "ModelLoaded"), traffic=("replicas", 100)),
    "suspended": Case(
        spec={"suspend": True, "canary": CANARY}, wanted=Wanted(0, 0, "replicas"),
        serving=Serving(primary=deployment(0, 0), canary=deployment(0, 0)),
        phase="Suspended", ready=("False", "Suspended"), model_loaded=("False", "Suspended"),
        canary=("False", "Suspended")),
}  # fmt: skip


def condition(status: InferenceServiceStatus, type_: str) -> tuple[str, str] | None:
    cond = get_condition(status.conditions, type_)
    return (cond.status, cond.reason) if cond is not None else None


@pytest.mark.parametrize("name", sorted(CASES))
def test_status(name: str) -> None:
    case = CASES[name]
    svc = service(**case.spec)
    refs = "trainingJob" in case.spec.get("model", {})
    status = decide(svc, case.serving, case.wanted, waiting=case.waiting, has_references=refs, now=NOW)
    assert status.phase == case.phase
    assert condition(status, "Ready") == case.ready
    assert condition(status, "ModelLoaded") == case.model_loaded
    assert condition(status, "Stalled") == (case.stalled, condition(status, "Stalled")[1])  # type: ignore[index]
    assert condition(status, "CanaryReady") == case.canary
    assert ((status.traffic.mode, status.traffic.canary_percent) if status.traffic else None) == case.traffic
    ready = get_condition(status.conditions, "Ready")
    assert ready is not None and case.message_has in ready.message
    # Whatever the state, what kubectl and the scale subresource read is there.
    assert status.url == "http://chat.team-a.svc"
    assert status.selector == "lepton.ai/kind=InferenceService,lepton.ai/name=chat,lepton.ai/role=primary"
    assert status.observed_generation == 3
    # kstatus: one story at a time.
    flags = [condition(status, t)[0] for t in ("Ready", "Reconciling", "Stalled")]  # type: ignore[index]
    assert flags.count("True") == 1 or (status.phase == "Suspended" and flags.count("True") == 0)


def test_a_reference_resolved_is_recorded() -> None:
    svc = service(model={"trainingJob": {"name": "tuned"}})
    serving = Serving(primary=deployment(1))
    status = decide(svc, serving, Wanted(1), models={"model": "pvc://models/tuned"}, has_references=True, now=NOW)
    assert condition(status, "ReferencesResolved") == ("True", "ReferencesReady")
    assert status.model == "pvc://models/tuned"


def test_removing_the_canary_drops_its_condition() -> None:
    with_canary = decide(service(canary=CANARY), Serving(primary=deployment(4), canary=deployment(1)),
                         Wanted(4, 1, "replicas"), now=NOW)  # fmt: skip
    svc = service().model_copy(update={"status": with_canary})
    status = decide(svc, Serving(primary=deployment(4)), Wanted(4), now=NOW)
    assert condition(status, "CanaryReady") is None and status.traffic is None and status.canary_model is None


def test_ready_replicas_counts_both_roles() -> None:
    status = decide(service(canary=CANARY), Serving(primary=deployment(3, 4), canary=deployment(1)),
                    Wanted(4, 1, "replicas"), now=NOW)  # fmt: skip
    assert (status.ready, status.replicas, status.ready_replicas, status.canary_ready_replicas) == ("4/5", 4, 3, 1)


def test_pods_being_deleted_tell_nothing() -> None:
    leaving = PodView.of({"metadata": {"name": "old", "deletionTimestamp": NOW, "labels": {Label.ROLE: "primary"}},
                          "status": {"phase": "Running"}})  # fmt: skip
    assert why_not_ready([leaving]) is None


def _events(old_case: str, new_case: str) -> list[tuple[str, str]]:
    def run(name: str, previous: InferenceServiceStatus) -> InferenceServiceStatus:
        case = CASES[name]
        svc = service(**case.spec).model_copy(update={"status": previous})
        return decide(svc, case.serving, case.wanted, waiting=case.waiting, now=NOW)

    old = run(old_case, InferenceServiceStatus())
    new = run(new_case, old)
    return [(e.reason, e.type) for e in inferenceservice_events(old, new)]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("loading-the-model", "serving", [("ModelLoaded", "Normal"), ("Serving", "Normal")]),
        ("loading-the-model", "model-failed-to-load", [("ModelLoadFailed", "Warning")]),
        ("serving", "serving", []),
        ("canary-not-ready-yet", "canary-by-replicas", [("Serving", "Normal"), ("TrafficShifted", "Normal")]),
        ("serving", "suspended", [("Suspended", "Normal")]),
        ("suspended", "loading-the-model", [("Resumed", "Normal")]),
        ("loading-the-model", "rollout-gave-up", [("Stalled", "Warning"), ("ModelLoaded", "Normal")]),
    ],
)
def test_events(old: str, new: str, expected: list[tuple[str, str]]) -> None:
    assert _events(old, new) == expected


@pytest.mark.parametrize(
    ("asked", "served", "expected"),
    [(True, True, ("True", "ServiceMonitorCreated")), (True, False, ("False", "APINotServed")),
     (True, None, None), (False, True, None)],
)  # fmt: skip
def test_monitored_condition(asked: bool, served: bool | None, expected: tuple[str, str] | None) -> None:
    svc = service(serviceMonitor=asked)
    status = decide(svc, Serving(primary=deployment(2)), Wanted(2), monitoring_api=served, now=NOW)
    assert condition(status, "Monitored") == expected
    assert condition(status, "Ready") == ("True", "Serving")  # monitoring never holds serving back
    if asked and served is False:
        dropped = decide(service().model_copy(update={"status": status}), Serving(primary=deployment(2)), Wanted(2),
                         monitoring_api=False, now=NOW)  # fmt: skip
        assert condition(dropped, "Monitored") is None  # turned off: the condition goes
