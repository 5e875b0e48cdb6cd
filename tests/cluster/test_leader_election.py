"""High availability: two operator replicas on one Lease. One acts; SIGKILLed, the other takes over within
the stated time; and at no moment did both write, as the apiserver's own audit log tells (every write
with its user agent, which names the replica)."""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

from lepton.cli.devcluster import DevCluster
from lepton.controller.leader import LeaseTimings
from tests.cluster.conftest import FAST, OperatorProcess, start_operator, stop_operator
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_trainingjob import finish, live_pods, phase_is, status, trainingjob

LEASE_SECONDS = 6
START_SECONDS = 10  # a new leader's start: kopf lists what it watches before its first pass
WRITES = ("create", "update", "patch", "delete", "deletecollection")
AGENT = re.compile(r"^lepton-operator \((?P<identity>[^)]+)\)$")


def holder(kube: Kube, ns: str) -> str | None:
    return kube.lease_holder("lepton-ha", ns)


def leading(op: OperatorProcess) -> float:
    found = re.search(r"^lepton_operator_leader (\S+)$", op.metrics(), re.M)
    assert found, "the leader gauge is exported"
    return float(found.group(1))


def writes(cluster: DevCluster, ns: str) -> dict[str, list[tuple[str, str]]]:
    """Every write into `ns` by an operator replica, by the replica's identity: (time, what)."""
    by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for event in cluster.audit_events(ns):
        ref = event.get("objectRef") or {}
        agent = AGENT.match(event.get("userAgent", ""))
        if agent and event["verb"] in WRITES:
            what = f"{event['verb']} {ref.get('resource')}/{ref.get('subresource') or ''}{ref.get('name', '')}"
            by[agent["identity"]].append((event["requestReceivedTimestamp"], what))
    return by


def test_two_replicas_one_acts_and_a_killed_leader_is_replaced_in_time(
    dev_cluster: DevCluster, kube: Kube, tmp_path: Path
) -> None:
    assert dev_cluster.audit_log.exists(), "the dev cluster keeps an audit log: recreate an older reused cluster"
    ns = f"lepton-ha-{uuid.uuid4().hex[:6]}"  # outside the session operator's glob
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    env = {**FAST, "LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": ns,
           "LEPTON_LEASE_NAME": "lepton-ha", "LEPTON_LEASE_SECONDS": str(LEASE_SECONDS)}  # fmt: skip
    ops = {name: start_operator(dev_cluster.kubeconfig, tmp_path / f"{name}.log", ns, {**env, "LEPTON_POD_NAME": name})
           for name in ("replica-a", "replica-b")}  # fmt: skip
    try:
        first = eventually(lambda: holder(kube, ns), timeout=30, what="one replica holding the Lease")
        lead, standby = (ops["replica-a"], ops["replica-b"]) if first.startswith("replica-a_") else (
            ops["replica-b"], ops["replica-a"])  # fmt: skip
        assert (leading(lead), leading(standby)) == (1.0, 0.0)

        kube.apply(trainingjob("ha-job", nodes=2, backoffLimit=3), ns)
        eventually(lambda: phase_is(kube, ns, "ha-job", "Running"), timeout=60, what="Running, by the leader")
        lead.proc.kill()  # no goodbye: the Lease is not released, it must run out
        lead.proc.wait()
        killed = time.monotonic()
        finish(kube, ns, "ha-job-0-1", "Failed")  # only a leader can restart the gang

        second = eventually(lambda: (h := holder(kube, ns)) != first and h, timeout=60, what="a new Lease holder")
        took_over = time.monotonic() - killed
        restarted = eventually(lambda: (st := status(kube, ns, "ha-job")).get("restarts") == 1 and
                               st.get("phase") == "Running" and st, timeout=60, what="the gang restarted")  # fmt: skip
        acted = time.monotonic() - killed
        timings = LeaseTimings.of(LEASE_SECONDS)
        print(f"leader SIGKILLed: Lease taken over in {took_over:.1f}s, the gang restarted by the new leader "
              f"{acted:.1f}s after the kill (lease {LEASE_SECONDS}s, retry {timings.retry:.1f}s)")  # fmt: skip
        assert second.startswith("replica-"), second
        assert took_over <= LEASE_SECONDS + timings.retry + 2, "a standby takes over once the lease runs out"
        assert acted <= LEASE_SECONDS + timings.retry + START_SECONDS + 20, "and acts right after"
        assert leading(standby) == 1.0 and restarted["failures"], restarted
        names = sorted(p["metadata"]["name"] for p in live_pods(kube, ns))
        assert names == ["ha-job-1-0", "ha-job-1-1"], "one gang, of the next attempt: nothing duplicated"

        # A third replica (the killed one, restarted) stands by and writes nothing.
        ops["replica-c"] = start_operator(dev_cluster.kubeconfig, tmp_path / "replica-c.log", ns,
                                          {**env, "LEPTON_POD_NAME": "replica-c"})  # fmt: skip
        time.sleep(LEASE_SECONDS)
        assert leading(ops["replica-c"]) == 0.0 and holder(kube, ns) == second

        def audited() -> dict[str, list[tuple[str, str]]] | None:
            found = writes(dev_cluster, ns)
            return found if any("pods/ha-job-1-" in w for _, w in found.get(second, [])) else None

        by = eventually(audited, timeout=30, what="the new leader's writes in the audit log")
        print({who: len(done) for who, done in by.items()}, "writes by replica")
        assert set(by) == {first, second}, f"only the two leaders wrote: {set(by)}"
        assert max(t for t, _ in by[first]) < min(t for t, _ in by[second]), "never both at once"
        assert any("pods/ha-job-0-" in w and w.startswith("create") for _, w in by[first])
    finally:
        for op in ops.values():
            if op.proc.poll() is None:
                stop_operator(op)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_a_cleanly_stopped_leader_hands_over_at_once(dev_cluster: DevCluster, kube: Kube, tmp_path: Path) -> None:
    """A rollout or a drain stops the leader with SIGTERM: it releases the Lease, and the standby need not
    wait for it to run out."""
    ns = f"lepton-ha-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    env = {**FAST, "LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": ns,
           "LEPTON_LEASE_NAME": "lepton-ha", "LEPTON_LEASE_SECONDS": "30"}  # fmt: skip
    ops = [start_operator(dev_cluster.kubeconfig, tmp_path / f"{n}.log", ns, {**env, "LEPTON_POD_NAME": n})
           for n in ("replica-a", "replica-b")]  # fmt: skip
    try:
        first = eventually(lambda: holder(kube, ns), timeout=30, what="one replica holding the Lease")
        lead = next(op for op in ops if leading(op) == 1.0)
        stop_operator(lead)  # SIGTERM
        stopped = time.monotonic()
        eventually(lambda: (h := holder(kube, ns)) and h != first, timeout=15, what="the standby leading")
        assert time.monotonic() - stopped < 10, "far sooner than the 30 s lease"
        assert "released Lease" in lead.log.read_text()
    finally:
        for op in ops:
            if op.proc.poll() is None:
                stop_operator(op)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
