"""The kernel on the real control plane: ownership that cannot hurt a user, children the apiserver
rejects, Events in `kubectl describe`, and per-object loops that survive odd objects and a real
apiserver restart (the operator process keeps running through it)."""

from __future__ import annotations

from typing import Any

import pytest

from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_trainingjob import finish, live_pods, phase_is, pods, status, trainingjob


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return {c["type"]: c for c in st.get("conditions", [])}.get(type_, {})


def stalled_with(kube: Kube, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    stall = condition(st, "Stalled")
    return st if stall.get("status") == "True" and stall.get("reason") == reason else None


def restricted_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox", "securityContext": {
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
        },
    }  # fmt: skip


def test_a_name_taken_by_a_users_object_stalls_and_leaves_it_alone(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    users = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "labels": {"team": "a"}},
             "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}  # fmt: skip
    kube.apply(users, namespace)
    decoy = {"lepton.ai/kind": "TrainingJob", "lepton.ai/name": "taken", "lepton.ai/attempt": "0"}
    kube.apply(restricted_pod("taken-decoy", decoy), namespace)
    kube.apply(trainingjob("taken"), namespace)
    st = eventually(lambda: stalled_with(kube, namespace, "taken", "NameConflict"), timeout=60, what="NameConflict")
    assert "Service 'taken' already exists and is not owned by this resource" in condition(st, "Stalled")["message"]
    assert condition(st, "Ready")["status"] == "False"
    svc = kube.get("service", "taken", namespace)
    assert "ownerReferences" not in svc["metadata"] and svc["metadata"]["labels"] == {"team": "a"}
    assert svc["spec"]["selector"] == {"app": "theirs"}
    kube.run("delete", "service", "taken", "-n", namespace)
    eventually(lambda: phase_is(kube, namespace, "taken", "Running"), timeout=90, what="Running once the name is free")
    svc = kube.get("service", "taken", namespace)
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert condition(status(kube, namespace, "taken"), "Stalled")["status"] == "False"
    names = {p["metadata"]["name"] for p in live_pods(kube, namespace)}
    assert "taken-decoy" in names, "a pod with the job's labels but not owned by it is never deleted"


def test_a_child_the_apiserver_rejects_stalls_with_its_words(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("rejected", scheduling={"priorityClassName": "no-such-class"}), namespace)
    st = eventually(lambda: stalled_with(kube, namespace, "rejected", "ChildRejected"), timeout=60,
                    what="ChildRejected")  # fmt: skip
    message = condition(st, "Stalled")["message"]
    assert "the apiserver rejected" in message and "no-such-class" in message
    assert st["phase"] == "Stalled"
    described = kube.run("describe", "trainingjob", "rejected", "-n", namespace).stdout
    assert "Stalled" in described and "ChildRejected" in described


def test_events_tell_the_story_in_kubectl_describe(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("told", backoffLimit=2), namespace)
    eventually(lambda: phase_is(kube, namespace, "told", "Running"), timeout=60, what="Running")
    finish(kube, namespace, "told-0-1", "Failed", **{"lepton.ai/fake-exit-code": "137",
                                                    "lepton.ai/fake-reason": "OOMKilled"})  # fmt: skip
    eventually(lambda: (st := status(kube, namespace, "told")).get("restarts") == 1 and st.get("phase") == "Running",
               timeout=150, what="the gang running again")  # fmt: skip
    for pod in live_pods(kube, namespace):
        finish(kube, namespace, pod["metadata"]["name"], "Succeeded")
    eventually(lambda: phase_is(kube, namespace, "told", "Succeeded"), timeout=60, what="Succeeded")

    def described() -> str | None:
        text = kube.run("describe", "trainingjob", "told", "-n", namespace).stdout
        wanted = ("Started", "RankFailed", "told-0-1: OOMKilled (exit code 137)", "GangRestarted", "Succeeded")
        return text if all(w in text for w in wanted) else None

    text = eventually(described, timeout=30, what="events in kubectl describe")
    assert "lepton-operator" in text


def test_a_loop_survives_a_pod_whose_labels_were_edited(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("edited"), namespace)
    eventually(lambda: phase_is(kube, namespace, "edited", "Running"), timeout=60, what="Running")
    kube.run("label", "pod", "edited-0-1", "-n", namespace, "lepton.ai/attempt=not-a-number", "--overwrite")

    def healed() -> list[dict[str, Any]] | None:
        pods = live_pods(kube, namespace)
        good = [p for p in pods if p["metadata"]["labels"].get("lepton.ai/attempt", "").isdigit()]
        ok = len(pods) == 2 and len(good) == 2 and status(kube, namespace, "edited").get("phase") == "Running"
        return pods if ok else None

    eventually(healed, timeout=120, what="the gang whole again")
    pod = next(p["metadata"]["name"] for p in live_pods(kube, namespace) if p["metadata"]["name"].endswith("-1"))
    finish(kube, namespace, pod, "Failed")
    eventually(lambda: (status(kube, namespace, "edited").get("restarts") or 0) >= 1, timeout=120,
               what="a later failure still handled")  # fmt: skip


@pytest.mark.disruptive  # restarts the session's cluster (kwok's stages do not come back): runs last
def test_loops_carry_on_through_a_real_apiserver_restart(
    dev_cluster: DevCluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("steady"), namespace)
    eventually(lambda: phase_is(kube, namespace, "steady", "Running"), timeout=60, what="Running")
    before = dev_cluster.processes()["kube-apiserver"][0]
    dev_cluster.kwokctl("stop", "cluster")
    dev_cluster.kwokctl("start", "cluster", "--wait", "120s")
    assert dev_cluster.processes()["kube-apiserver"][0] != before, "a new apiserver process"
    assert operator.proc.poll() is None, "the operator process lives on"
    eventually(lambda: phase_is(kube, namespace, "steady", "Running"), timeout=120, what="Running after the restart")
    # kwok does not finish pods after a cluster restart, so the proof is what the operator writes:
    # a spec change after the restart reaches the job's loop (through the re-established watch), its
    # status is patched and its pods are deleted.
    kube.run("patch", "trainingjob", "steady", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    eventually(
        lambda: phase_is(kube, namespace, "steady", "Suspended"), timeout=120, what="Suspended after the restart"
    )
    eventually(lambda: all(p["metadata"].get("deletionTimestamp") for p in pods(kube, namespace, "steady")),
               timeout=60, what="the gang's pods deleted after the restart")  # fmt: skip
