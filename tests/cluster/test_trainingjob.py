"""TrainingJob on the real control plane with kwok GPU nodes: gang placement, the scheduler's words,
gang restarts, backoffLimit, suspend/resume, deadlines, TTL, garbage collection, operator restarts.
kwok stands in for the container runtime: a test ends a pod by annotating it (lepton.ai/fake-outcome)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import FAST, OperatorProcess, start_operator, stop_operator
from tests.cluster.kube import Kube, eventually

# The two ways a TrainingJob runs code: the built-in trainer, and your own program (custom mode). The
# gang, restart, elastic and TTL tests run for both: the gang around the code is the same.
MODES: dict[str, dict[str, Any]] = {
    "builtin": {
        "model": {"uri": "/models/tiny-gpt2"},
        "data": {"uri": "/data/tickets.jsonl"},
        "hyperparameters": {"maxSteps": 100},
    },
    "custom": {
        "trainer": {"image": "registry.example.com/team/mnist:1", "command": ["python", "mnist.py"],
                    "hyperparameters": {"lr": 0.1, "epochs": 2}},
        "data": {"uri": "/data/mnist"},
    },
}  # fmt: skip


def trainingjob(name: str, mode: str = "builtin", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**MODES[mode], "nodes": 2, "gpusPerNode": 1, "output": {"uri": "/models/out"}}
    body.update(spec)
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("trainingjob", name, ns).get("status", {}))


def pods(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    return list(kube.get("pods", namespace=ns)["items"]) if name else []


def live_pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return [p for p in pods(kube, ns, "x") if not p["metadata"].get("deletionTimestamp")]


def phase_is(kube: Kube, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    return st if st.get("phase") == phase else None


def finish(kube: Kube, ns: str, pod: str, outcome: str, **extra: str) -> None:
    notes = {"lepton.ai/fake-outcome": outcome, "lepton.ai/fake-after": "1s", **extra}
    kube.run("annotate", "pod", pod, "-n", ns, *[f"{k}={v}" for k, v in notes.items()])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_nodes_of_eight_gpus_run_then_succeed(
    mode: str, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("big", mode, gpusPerNode=8), namespace)
    st = eventually(lambda: phase_is(kube, namespace, "big", "Running"), timeout=60, what="Running")
    assert st["ready"] == "2/2" and st["startTime"]
    running = live_pods(kube, namespace)
    assert len(running) == 2
    nodes = {p["spec"]["nodeName"] for p in running}
    assert len(nodes) == 2 and all(n.startswith("gpu-node-") for n in nodes)
    if mode == "custom":  # the program runs under the gang's torchrun
        for p in running:
            command = p["spec"]["containers"][0]["command"]
            assert "--nnodes=2" in command and command[-2:] == ["python", "mnist.py"]
    group = kube.get("podgroup", "big-gang-0", namespace)
    assert group["spec"]["schedulingPolicy"]["gang"]["minCount"] == 2
    for p in running:
        finish(kube, namespace, p["metadata"]["name"], "Succeeded")
    st = eventually(lambda: phase_is(kube, namespace, "big", "Succeeded"), timeout=60, what="Succeeded")
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Succeeded"] == "True" and conds["Ready"] == "True" and st["completionTime"]


def test_more_gpus_than_exist_start_no_pod_and_say_unschedulable(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("huge", nodes=5, gpusPerNode=8), namespace)

    def unschedulable() -> dict[str, Any] | None:
        st = status(kube, namespace, "huge")
        ready = {c["type"]: c for c in st.get("conditions", [])}.get("Ready", {})
        return st if ready.get("reason") == "Unschedulable" else None

    st = eventually(unschedulable, timeout=60, what="Unschedulable")
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert "minCount (5) cannot be satisfied" in ready["message"]  # the scheduler's own words
    assert st["phase"] == "Pending"
    time.sleep(3)
    assert all(not p["spec"].get("nodeName") for p in pods(kube, namespace, "huge")), "no pod may start alone"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_one_failed_rank_restarts_the_whole_gang(
    mode: str, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("flaky", mode), namespace)
    eventually(lambda: phase_is(kube, namespace, "flaky", "Running"), timeout=60, what="Running")
    first = {p["metadata"]["name"]: p["metadata"]["annotations"]["lepton.ai/rendezvous-id"]
             for p in live_pods(kube, namespace)}  # fmt: skip
    if mode == "builtin":
        finish(kube, namespace, "flaky-0-1", "Failed", **{"lepton.ai/fake-exit-code": "137",
                                                         "lepton.ai/fake-reason": "OOMKilled"})  # fmt: skip
    else:  # torchrun exits 1 whatever the program did; its report in the log's tail says 3, and why
        report = (Path(__file__).parents[1] / "unit" / "data" / "torchrun-exit3-quiet.log").read_text()
        finish(kube, namespace, "flaky-0-1", "Failed", **{"lepton.ai/fake-exit-code": "1",
                                                         "lepton.ai/fake-message": report})  # fmt: skip

    def restarted() -> dict[str, Any] | None:
        st = status(kube, namespace, "flaky")
        return st if st.get("restarts") == 1 and st.get("phase") == "Running" else None

    st = eventually(restarted, timeout=150, what="the gang running again")
    failure = st["failures"][0]
    if mode == "builtin":
        assert failure["reason"] == "OOMKilled" and failure["exitCode"] == 137
    else:
        assert failure["reason"] == "Error" and failure["exitCode"] == 3
        assert failure["message"].splitlines()[-1] == "something went wrong: bad column 'x'"
    second = {p["metadata"]["name"]: p["metadata"]["annotations"]["lepton.ai/rendezvous-id"]
              for p in live_pods(kube, namespace)}  # fmt: skip
    assert set(second) == {"flaky-1-0", "flaky-1-1"}
    assert not set(first.values()) & set(second.values()), "a new gang needs a new rendezvous id"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_elastic_job_goes_on_without_a_lost_node_and_replaces_it(
    mode: str, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("stretchy", mode, nodes=None, minNodes=2, maxNodes=3), namespace)
    eventually(lambda: phase_is(kube, namespace, "stretchy", "Running"), timeout=60, what="Running")
    eventually(lambda: all(p["status"].get("phase") == "Running" for p in live_pods(kube, namespace))
               and len(live_pods(kube, namespace)) == 3, timeout=60, what="all 3 pods Running")  # fmt: skip
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in live_pods(kube, namespace)}
    finish(kube, namespace, "stretchy-0-2", "Failed", **{"lepton.ai/fake-reason": "NodeShutdown"})

    def replaced() -> dict[str, Any] | None:
        now = {p["metadata"]["name"]: p for p in live_pods(kube, namespace)}
        fresh = now.get("stretchy-0-2")
        if fresh is None or fresh["metadata"]["uid"] == before["stretchy-0-2"]:
            return None
        return now if fresh["status"].get("phase") == "Running" else None

    now = eventually(replaced, timeout=120, what="the lost pod replaced and running")
    for name in ("stretchy-0-0", "stretchy-0-1"):  # the survivors were never touched
        assert now[name]["metadata"]["uid"] == before[name], f"{name} was restarted"
    st = status(kube, namespace, "stretchy")
    assert st["phase"] == "Running" and st["attempt"] == 0 and st["restarts"] == 1
    (failure,) = st["failures"]
    assert failure["pod"] == "stretchy-0-2" and failure["elastic"] is True and failure["reason"] == "NodeShutdown"
    assert failure["podUID"] == before["stretchy-0-2"]


def test_backoff_limit_fails_the_job_with_the_first_reason(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("doomed", backoffLimit=1), namespace)
    for attempt, reason in ((0, "OOMKilled"), (1, "Error")):

        def running(attempt: int = attempt) -> bool:
            st = status(kube, namespace, "doomed")
            return st.get("phase") == "Running" and st.get("restarts") == attempt

        eventually(running, timeout=150, what=f"attempt {attempt} running")
        finish(kube, namespace, f"doomed-{attempt}-0", "Failed", **{"lepton.ai/fake-reason": reason})
    st = eventually(lambda: phase_is(kube, namespace, "doomed", "Failed"), timeout=60, what="Failed")
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded" and "first failure: doomed-0-0: OOMKilled" in failed["message"]
    eventually(lambda: not [p for p in live_pods(kube, namespace) if p["status"].get("phase") == "Running"],
               what="no pod left running")  # fmt: skip


def test_suspend_deletes_pods_and_resume_starts_them_again(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(trainingjob("pausable"), namespace)
    eventually(lambda: phase_is(kube, namespace, "pausable", "Running"), timeout=60, what="Running")
    kube.patch("trainingjob", "pausable", namespace, {"spec": {"suspend": True}})
    eventually(lambda: phase_is(kube, namespace, "pausable", "Suspended"), what="Suspended")
    eventually(lambda: not live_pods(kube, namespace), what="pods deleted")
    kube.patch("trainingjob", "pausable", namespace, {"spec": {"suspend": False}})
    # Generous: the new gang waits for kwok to finish deleting the old pods (seconds, more under load).
    st = eventually(lambda: phase_is(kube, namespace, "pausable", "Running"), timeout=150, what="Running again")
    assert st["restarts"] == 0 and st["attempt"] == 1, "resuming starts a new gang; it is not a failure"


def test_active_deadline_fails_the_job(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("slow", activeDeadlineSeconds=3), namespace)
    st = eventually(lambda: phase_is(kube, namespace, "slow", "Failed"), timeout=60, what="Failed")
    assert {c["type"]: c for c in st["conditions"]}["Failed"]["reason"] == "DeadlineExceeded"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_ttl_deletes_the_finished_job_on_time(mode: str, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("short-lived", mode, nodes=1, ttlSecondsAfterFinished=3), namespace)
    eventually(lambda: phase_is(kube, namespace, "short-lived", "Running"), timeout=60, what="Running")
    finish(kube, namespace, "short-lived-0-0", "Succeeded")
    eventually(lambda: phase_is(kube, namespace, "short-lived", "Succeeded"), timeout=30, what="Succeeded")
    finished = time.monotonic()
    eventually(lambda: "short-lived" not in kube.run("get", "trainingjobs", "-n", namespace, "-o", "name").stdout,
               timeout=30, what="deleted after its TTL")  # fmt: skip
    assert time.monotonic() - finished < 10, "a timer, not the next event, deletes it"


def test_deleting_the_job_leaves_no_children(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("temp"), namespace)
    eventually(lambda: phase_is(kube, namespace, "temp", "Running"), timeout=60, what="Running")
    kube.run("delete", "trainingjob", "temp", "-n", namespace, "--wait=true", "--timeout=60s")

    def gone() -> bool:
        left = kube.run("get", "pods,services,podgroups", "-n", namespace, "-o", "name").stdout.split()
        return not left

    eventually(gone, timeout=60, what="garbage collection of pods, Service and PodGroup")


def test_drift_of_owned_objects_is_corrected(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(trainingjob("kept", nodes=1), namespace)
    eventually(lambda: phase_is(kube, namespace, "kept", "Running"), timeout=60, what="Running")
    kube.patch("service", "kept", namespace, {"spec": {"publishNotReadyAddresses": False}})

    def restored() -> bool:
        return bool(kube.get("service", "kept", namespace)["spec"].get("publishNotReadyAddresses"))

    eventually(restored, timeout=30, what="the operator to restore its Service")
    kube.run("delete", "service", "kept", "-n", namespace)
    eventually(lambda: kube.run("get", "service", "kept", "-n", namespace, check=False).returncode == 0,
               timeout=30, what="the Service recreated")  # fmt: skip


def test_operator_restarted_midway_converges_without_duplicates(
    dev_cluster: DevCluster, kube: Kube, tmp_path: Path
) -> None:
    ns = f"lepton-restart-{uuid.uuid4().hex[:6]}"  # outside the session operator's glob
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    env = FAST
    op = start_operator(dev_cluster.kubeconfig, tmp_path / "op1.log", ns, env)
    try:
        kube.apply(trainingjob("steady", nodes=3), ns)
        eventually(lambda: len(live_pods(kube, ns)) == 3, timeout=60, what="3 pods")
        op.proc.kill()  # no goodbye: as if the node died
        op.proc.wait()
        kube.patch("trainingjob", "steady", ns, {"metadata": {"labels": {"touched": "yes"}}})
        op = start_operator(dev_cluster.kubeconfig, tmp_path / "op2.log", ns, env)
        st = eventually(lambda: phase_is(kube, ns, "steady", "Running"), timeout=60, what="Running")
        time.sleep(3)
        names = sorted(p["metadata"]["name"] for p in live_pods(kube, ns))
        assert names == ["steady-0-0", "steady-0-1", "steady-0-2"] and st["restarts"] == 0
    finally:
        stop_operator(op)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
