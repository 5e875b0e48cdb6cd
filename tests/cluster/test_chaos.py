"""Chaos: while 200 TrainingJobs are submitted and run, the leading operator replica is SIGKILLed at
random moments, the apiserver is restarted once and rank pods are deleted at random. At the end every
job reached the phase it would have reached without faults, no pod was ever duplicated and no two gangs
of one job were ever alive at once (both from a watch kept through the whole run, not only at the end),
no job was lost, and every restart is accounted for in status.

Its own tier (`pytest -m chaos`); in the full run it goes last but one, before the test that restarts the
whole cluster (kwok's stages do not survive that). Bounded: faults for about two minutes."""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.api.constants import Label
from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import CHAOS_REPORT, FAST, OperatorProcess, start_operator, stop_operator
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_trainingjob import trainingjob

pytestmark = [pytest.mark.chaos, pytest.mark.disruptive]

JOBS = 200
LEASE_SECONDS = 5
LEADER_KILLS = 10
POD_DELETIONS = 20
GPU_NODES = 40  # 320 GPUs: every job's gang fits at once


@dataclass
class Seen:
    """One watch event: when, what, which pod (uid, job, attempt), whether it was being deleted."""

    at: float
    kind: str  # ADDED, MODIFIED, DELETED, or LISTED (the state after the watch was re-established)
    name: str
    uid: str
    job: str
    attempt: int


@dataclass
class WatchLog:
    """Every pod event in a namespace, kept by a thread from the start of the run to its end; the watch
    resumes from the last version it saw when the apiserver goes away, and relists when that is too old."""

    kubeconfig: Path
    namespace: str
    events: list[Seen] = field(default_factory=list)
    relists: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _connection(self) -> tuple[http.client.HTTPSConnection, str]:
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        host = cluster["server"].removeprefix("https://")
        return http.client.HTTPSConnection(host, context=ctx, timeout=30), f"/api/v1/namespaces/{self.namespace}/pods"

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        self.events.append(Seen(time.monotonic(), kind, meta["name"], meta["uid"], labels.get(Label.NAME, ""),
                                int(labels.get(Label.ATTEMPT, "-1"))))  # fmt: skip

    def run(self) -> None:
        rv = ""
        while not self.stop.is_set():
            try:
                conn, path = self._connection()
                if not rv:  # (re)list: the state now, then watch from there
                    conn.request("GET", path)
                    listed = json.loads(conn.getresponse().read())
                    for pod in listed["items"]:
                        self._record("LISTED", pod)
                    self.events.append(Seen(time.monotonic(), "RESYNC", "", "", "", -1))
                    rv = listed["metadata"]["resourceVersion"]
                    self.relists += 1
                conn.request("GET", f"{path}?watch=1&allowWatchBookmarks=true&timeoutSeconds=60&resourceVersion={rv}")
                rsp = conn.getresponse()
                for line in rsp:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: too old a version, relist
                        rv = ""
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], obj)
                    if self.stop.is_set():
                        return
            except (OSError, http.client.HTTPException, json.JSONDecodeError, KeyError):
                time.sleep(0.5)  # the apiserver is away: resume from the last version seen


def replay(events: list[Seen]) -> tuple[int, int, dict[str, int]]:
    """(pods duplicated: a name seen with a second UID, moments two gangs of a job were alive at once,
    the highest attempt seen per job)."""
    uids: dict[str, set[str]] = defaultdict(set)
    alive: dict[str, dict[str, int]] = defaultdict(dict)  # job -> {pod name: attempt}
    highest: dict[str, int] = defaultdict(int)
    overlaps = 0
    listing: dict[str, dict[str, int]] | None = None
    for e in events:
        if e.kind == "LISTED":
            listing = listing if listing is not None else defaultdict(dict)
            listing[e.job][e.name] = e.attempt
        elif e.kind == "RESYNC":  # the list is the truth: pods missing from it are gone
            alive, listing = listing if listing is not None else defaultdict(dict), None
            continue
        if not e.name:
            continue
        uids[e.name].add(e.uid)
        highest[e.job] = max(highest[e.job], e.attempt)
        if e.kind == "DELETED":
            alive[e.job].pop(e.name, None)
        elif e.kind != "LISTED":
            alive[e.job][e.name] = e.attempt
            overlaps += len(set(alive[e.job].values())) > 1
    duplicates = sum(len(u) > 1 for u in uids.values())
    return duplicates, overlaps, dict(highest)


class Replicas:
    """Operator replicas on one Lease, as the chart runs them; a killed one is replaced, as the kubelet
    would restart its container."""

    def __init__(self, cluster: DevCluster, kube: Kube, ns: str, logs: Path) -> None:
        self.cluster, self.kube, self.ns, self.logs = cluster, kube, ns, logs
        self.env = {**FAST, "LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": ns,
                    "LEPTON_LEASE_NAME": "chaos", "LEPTON_LEASE_SECONDS": str(LEASE_SECONDS)}  # fmt: skip
        self.live: dict[str, OperatorProcess] = {}
        self.started = 0

    def start(self) -> None:
        name = f"replica-{self.started}"
        self.started += 1
        self.live[name] = start_operator(self.cluster.kubeconfig, self.logs / f"{name}.log", self.ns,
                                         {**self.env, "LEPTON_POD_NAME": name})  # fmt: skip

    def holder(self) -> str | None:
        return self.kube.lease_holder("chaos", self.ns)

    def kill_leader(self) -> str | None:
        holder = self.holder()
        name = (holder or "").split("_")[0]
        op = self.live.pop(name, None)
        if op is None or op.proc.poll() is not None:
            return None
        op.proc.kill()  # SIGKILL: no goodbye, the Lease runs out
        op.proc.wait()
        self.start()
        return name

    def stop_all(self) -> None:
        for op in self.live.values():
            if op.proc.poll() is None:
                stop_operator(op)


@pytest.fixture
def chaos_namespace(kube: Kube) -> Iterator[str]:
    ns = f"lepton-chaos-{uuid.uuid4().hex[:6]}"  # outside the session operator's glob
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield ns
    kube.run("delete", "namespace", ns, "--wait=false", check=False)


def jobs_in(kube: Kube, ns: str) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in kube.get("trainingjobs", namespace=ns)["items"]}


@dataclass
class Chaos:
    """The run: jobs that end after their own time, and the faults at random moments."""

    cluster: DevCluster
    kube: Kube
    ns: str
    rng: random.Random
    replicas: Replicas
    hold: dict[str, float] = field(default_factory=dict)  # job -> seconds its gang runs before it ends
    running_since: dict[str, float] = field(default_factory=dict)  # job/attempt -> when seen Running
    finished: set[str] = field(default_factory=set)  # job/attempt whose pods were told to succeed
    deleted_from: set[str] = field(default_factory=set)
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("leader kills", "apiserver restarts", "rank pods deleted"), 0))  # fmt: skip
    seconds: float = 0.0  # how long the faults took to inject

    def tend(self) -> dict[str, dict[str, Any]]:
        """End the gangs that ran their time: their pods succeed (kwok's fake outcome)."""
        now, jobs = time.monotonic(), jobs_in(self.kube, self.ns)
        pods = self.kube.get("pods", namespace=self.ns)["items"]
        for name, job in jobs.items():
            st = job.get("status") or {}
            attempt = int(st.get("attempt", 0))
            if st.get("phase") != "Running" or not st.get("startTime") or f"{name}/{attempt}" in self.finished:
                continue
            if now - self.running_since.setdefault(f"{name}/{attempt}", now) < self.hold[name]:
                continue
            gang = [p["metadata"]["name"] for p in pods
                    if p["metadata"]["labels"].get(Label.NAME) == name
                    and p["metadata"]["labels"].get(Label.ATTEMPT) == str(attempt)]  # fmt: skip
            notes = ["lepton.ai/fake-outcome=Succeeded", "lepton.ai/fake-after=1s"]
            if gang and self.kube.run("annotate", "pod", *gang, "-n", self.ns, *notes, check=False).returncode == 0:
                self.finished.add(f"{name}/{attempt}")
        return jobs

    def delete_a_rank(self, jobs: dict[str, dict[str, Any]]) -> bool:
        """One rank pod of a running gang not yet told to end (one per job, so each such job owes exactly
        one restart); False when there was none to delete."""
        running = {n: int(j["status"].get("attempt", 0)) for n, j in jobs.items()
                   if (j.get("status") or {}).get("phase") == "Running"}  # fmt: skip
        candidates = [n for n, a in running.items() if f"{n}/{a}" not in self.finished and n not in self.deleted_from]
        if not candidates:
            return False
        victim = self.rng.choice(sorted(candidates))
        pod = f"{victim}-{running[victim]}-{self.rng.randrange(int(jobs[victim]['spec']['nodes']))}"
        if self.kube.run("delete", "pod", pod, "-n", self.ns, "--wait=false", check=False).returncode != 0:
            return False
        self.deleted_from.add(victim)
        self.faults["rank pods deleted"] += 1
        return True

    def run(self, seconds: float) -> None:
        kills = sorted(self.rng.uniform(5, seconds) for _ in range(LEADER_KILLS))
        deletions = sorted(self.rng.uniform(3, seconds * 0.75) for _ in range(POD_DELETIONS))  # gangs still run
        restart: float | None = self.rng.uniform(seconds / 3, seconds * 2 / 3)
        start = time.monotonic()
        while kills or deletions or restart is not None:
            jobs, now = self.tend(), time.monotonic() - start
            # one kill per lease at most: a leader must be there to be killed
            if kills and now >= kills[0] and self.replicas.kill_leader() is not None:
                self.faults["leader kills"] += 1
                kills = [max(t, now + LEASE_SECONDS + 2) for t in kills[1:]]
            if deletions and now >= deletions[0]:
                deletions.pop(0)
                self.delete_a_rank(jobs)
            if restart is not None and now >= restart:
                self.cluster.restart_apiserver(timeout=300)  # 2 busy cores, an etcd a whole session filled
                self.faults["apiserver restarts"] += 1
                restart = None
            time.sleep(0.5)
        self.seconds = time.monotonic() - start

    def all_done(self) -> dict[str, dict[str, Any]] | None:
        jobs = self.tend()
        phases = [(j.get("status") or {}).get("phase") for j in jobs.values()]
        return jobs if len(jobs) == JOBS and all(p == "Succeeded" for p in phases) else None


def test_nothing_lost_or_duplicated_through_leader_kills_an_apiserver_restart_and_deleted_ranks(
    dev_cluster: DevCluster, kube: Kube, chaos_namespace: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    ns, seed = chaos_namespace, random.randrange(1 << 30)
    report = pytestconfig.stash.setdefault(CHAOS_REPORT, [])  # printed in the run's summary, pass or fail
    report.append(f"chaos seed {seed}")
    dev_cluster.ensure_nodes(GPU_NODES, 8)
    log = WatchLog(dev_cluster.kubeconfig, ns)
    watcher = threading.Thread(target=log.run, daemon=True)
    watcher.start()
    replicas = Replicas(dev_cluster, kube, ns, tmp_path)
    chaos = Chaos(dev_cluster, kube, ns, random.Random(seed), replicas)
    chaos.hold = {f"chaos-{i:03d}": chaos.rng.uniform(10, 110) for i in range(JOBS)}  # through the faults
    try:
        replicas.start()
        replicas.start()
        docs = [trainingjob(name, nodes=1 + i % 2, backoffLimit=10) for i, name in enumerate(sorted(chaos.hold))]
        for i in range(0, JOBS, 50):  # submitted in waves
            wave = {"apiVersion": "v1", "kind": "List", "items": docs[i : i + 50]}
            kube.run("create", "-n", ns, "-f", "-", stdin=json.dumps(wave))
            time.sleep(2)
        chaos.run(seconds=120)
        report.append(
            f"faults injected in {chaos.seconds:.0f}s: {chaos.faults}; apiserver starts that failed "
            f"(started again, as a kubelet would): {dev_cluster.relaunches or 'none'}"
        )
        try:
            jobs = eventually(chaos.all_done, timeout=240, interval=1, what="every job Succeeded")
        except AssertionError:
            left = {
                n: (
                    st.get("phase"),
                    st.get("attempt"),
                    st.get("restarts"),
                    n in chaos.deleted_from,
                    sorted(k for k in chaos.finished if k.startswith(f"{n}/")),
                )
                for n, j in jobs_in(kube, ns).items()
                if (st := j.get("status") or {}).get("phase") != "Succeeded"
            }
            raise AssertionError(f"not Succeeded (phase, attempt, restarts, a rank deleted, told to end): {left}"
                                 ) from None  # fmt: skip
    finally:
        replicas.stop_all()
        log.stop.set()
    watcher.join(timeout=70)

    duplicates, overlaps, highest = replay(log.events)
    restarts = {n: int((j.get("status") or {}).get("restarts", 0)) for n, j in jobs.items()}
    unaccounted = {n: (restarts[n], highest.get(n, 0)) for n in jobs if restarts[n] != highest.get(n, 0)}
    spurious = {n: r for n, r in restarts.items() if r and n not in chaos.deleted_from}
    pods_seen = len({e.uid for e in log.events if e.uid})
    report.append(f"watch log: {len(log.events)} events, {pods_seen} pods seen, {log.relists - 1} relists; "
          f"duplicates found: {duplicates}; two gangs of one job alive at once: {overlaps}; restarts in "
          f"status: {sum(restarts.values())} (jobs with a deleted rank: {len(chaos.deleted_from)}); "
          f"unaccounted: {len(unaccounted)}")  # fmt: skip
    assert (chaos.faults["leader kills"], chaos.faults["apiserver restarts"]) == (LEADER_KILLS, 1)
    assert chaos.faults["rank pods deleted"] >= POD_DELETIONS * 3 // 4, "most deletions found a running gang"
    assert len(jobs) == JOBS, "no job lost"
    assert duplicates == 0 and overlaps == 0
    assert not unaccounted, f"status.restarts differs from the attempts the watch saw: {unaccounted}"
    assert not spurious, f"restarts without a deleted rank: {spurious}"
    assert all(restarts[n] == 1 for n in chaos.deleted_from), {n: restarts[n] for n in chaos.deleted_from}
