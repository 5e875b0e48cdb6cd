"""What GitOps tools read of each kind in each phase, from objects the operator itself produced on the
real control plane: Argo CD's health checks (helm/lepton/argocd, generated from operator/lepton/cli/health)
under gopher-lua, set up as Argo CD sets up a check from argocd-cm, and kstatus (sigs.k8s.io/cli-utils)
as Flux computes it, both in hack/health's `lepton-health`.

`LEPTON_UPDATE_GOLDEN=1` writes each captured object as the checks' testdata, with a health_test.yaml in
Argo CD's own layout; `test_committed_health_tests_hold` replays them (status and message) without a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.api.dataset import PreparationError, PreparationSummary
from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import LoopbackRuntime, ensure_node
from tests.cluster.test_dataset import SUMMARY, dataset, end_preparation, setup_claims
from tests.cluster.test_inferenceservice import service
from tests.cluster.test_trainingjob import finish, live_pods, trainingjob
from tests.cluster.test_tuningstudy import db_secret, study

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "helm" / "lepton" / "argocd" / "lepton.ai"
UPDATE = os.environ.get("LEPTON_UPDATE_GOLDEN") == "1"
FIXED_TIME = "2026-01-01T00:00:00Z"
FIXED_UID = "00000000-0000-0000-0000-000000000000"
TUNER_WAITS = ("TunerStarting", "TunerUnreachable", "Unschedulable")

# (kind, phase) -> (Argo CD health, kstatus): what each tool must read. A job-like kind is Healthy and
# Current once it succeeded; a running TrainingJob or TuningStudy is Ready (kstatus Current: it does what
# it is for) but Progressing for Argo CD, as a running Job is; Failed and stuck read Degraded / Failed.
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    ("TrainingJob", "pending"): ("Progressing", "InProgress"),
    ("TrainingJob", "running"): ("Progressing", "Current"),
    ("TrainingJob", "suspended"): ("Suspended", "InProgress"),
    ("TrainingJob", "succeeded"): ("Healthy", "Current"),
    ("TrainingJob", "failed"): ("Degraded", "Failed"),
    ("TrainingJob", "stalled"): ("Degraded", "Failed"),
    ("Dataset", "preparing"): ("Progressing", "InProgress"),
    ("Dataset", "ready"): ("Healthy", "Current"),
    ("Dataset", "suspended"): ("Suspended", "InProgress"),
    ("Dataset", "failed"): ("Degraded", "Failed"),
    ("InferenceService", "waiting"): ("Progressing", "InProgress"),
    ("InferenceService", "serving"): ("Healthy", "Current"),
    ("InferenceService", "suspended"): ("Suspended", "InProgress"),
    ("InferenceService", "stalled"): ("Degraded", "Failed"),
    ("TuningStudy", "pending"): ("Progressing", "InProgress"),
    ("TuningStudy", "suspended"): ("Suspended", "InProgress"),
    ("TuningStudy", "running"): ("Progressing", "Current"),
    ("TuningStudy", "succeeded"): ("Healthy", "Current"),
    ("TuningStudy", "failed"): ("Degraded", "Failed"),
}


@dataclass(frozen=True)
class Health:
    argocd: str
    argocd_message: str
    kstatus: str
    kstatus_message: str


def read_health(binary: Path, objects: list[dict[str, Any]]) -> list[Health]:
    """Both tools' reading of each object, in one `lepton-health` process."""
    lines = [json.dumps({"object": o, "script": str(CHECKS / o["kind"] / "health.lua")}) for o in objects]
    proc = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        assert "error" not in r["argocd"] and "error" not in r["kstatus"], r
        out.append(Health(r["argocd"]["status"], r["argocd"].get("message", ""), r["kstatus"]["status"],
                          r["kstatus"].get("message", "")))  # fmt: skip
    return out


def sanitized(obj: dict[str, Any], namespace: str, paths: dict[str, str]) -> dict[str, Any]:
    """The object as testdata: what a health check reads, with no namespace, UID, clock or path of this
    run and machine (`paths`: a local path -> what stands for it)."""
    text = json.dumps(obj).replace(namespace, "default")
    for local, neutral in paths.items():
        text = text.replace(local, neutral)
    job = obj.get("status", {}).get("job")  # a Dataset's preparation Job: named by a hash of this run
    if isinstance(job, str):
        text = text.replace(job, f"{obj['metadata']['name']}-0123abcd")
    o = json.loads(text)
    md = o["metadata"]
    o["metadata"] = {k: md[k] for k in ("name", "namespace", "generation") if k in md}

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: FIXED_TIME if k.endswith(("Time", "Timestamp", "time")) and isinstance(v, str)
                    else FIXED_UID if k.endswith(("UID", "Uid", "uid")) and isinstance(v, str) else fix(v)
                    for k, v in value.items()}  # fmt: skip
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": o["metadata"], "spec": o.get("spec", {}),
            "status": fix(o.get("status", {}))}  # fmt: skip


class Captures:
    """Objects captured in named phases; `check` reads them with both tools and compares with EXPECTED."""

    def __init__(self, kube: Kube, namespace: str, binary: Path, tmp: Path) -> None:
        self.kube, self.namespace, self.binary = kube, namespace, binary
        self.paths = {str(tmp): "/data", str(ROOT): "/opt/lepton"}
        self.taken: dict[tuple[str, str], dict[str, Any]] = {}

    def take(self, kind: str, name: str, phase: str) -> None:
        obj = self.kube.get(kind.lower(), name, self.namespace)
        self.taken[(kind, phase)] = sanitized(obj, self.namespace, self.paths)

    def check(self) -> None:
        keys = list(self.taken)
        read = read_health(self.binary, [self.taken[k] for k in keys])
        got = {k: (h.argocd, h.kstatus) for k, h in zip(keys, read, strict=True)}
        wrong = {k: (h, self.taken[k]["status"].get("conditions")) for k, h in zip(keys, read, strict=True)
                 if got[k] != EXPECTED[k]}  # fmt: skip
        assert not wrong, wrong
        if UPDATE:
            write_testdata({k: (self.taken[k], h) for k, h in zip(keys, read, strict=True)})


def write_testdata(cases: dict[tuple[str, str], tuple[dict[str, Any], Health]]) -> None:
    for kind in sorted({k for k, _ in cases}):
        tests = []
        for (k, phase), (obj, health) in sorted(cases.items()):
            if k != kind:
                continue
            path = CHECKS / kind / "testdata" / f"{phase}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
            tests.append({"healthStatus": {"status": health.argocd, "message": health.argocd_message},
                          "inputPath": f"testdata/{phase}.yaml"})  # fmt: skip
        (CHECKS / kind / "health_test.yaml").write_text(yaml.safe_dump({"tests": tests}, sort_keys=False))


@pytest.fixture
def captures(kube: Kube, namespace: str, dev_cluster: DevCluster, tmp_path: Path) -> Iterator[Captures]:
    c = Captures(kube, namespace, dev_cluster.bins["lepton-health"], tmp_path)
    yield c
    c.check()


def phase_of(kube: Kube, ns: str, kind: str, name: str, phase: str) -> bool:
    return bool(kube.get(kind.lower(), name, ns).get("status", {}).get("phase") == phase)


def reason_of(kube: Kube, ns: str, kind: str, name: str, condition: str) -> str | None:
    conds = kube.get(kind.lower(), name, ns).get("status", {}).get("conditions", [])
    return next((c["reason"] for c in conds if c["type"] == condition and c["status"] == "True"), None)


def metric(operator: OperatorProcess, line: str) -> float:
    rows = [row for row in operator.metrics().splitlines() if row.startswith(line + " ")]
    assert rows, f"no sample {line}"
    return float(rows[0].rsplit(" ", 1)[1])


# --- the committed testdata, offline ------------------------------------------------------------
def committed() -> list[tuple[str, dict[str, Any]]]:
    return [(kind.name, case) for kind in sorted(CHECKS.iterdir()) if (kind / "health_test.yaml").exists()
            for case in yaml.safe_load((kind / "health_test.yaml").read_text())["tests"]]  # fmt: skip


def test_committed_health_tests_hold(dev_cluster: DevCluster) -> None:
    """Argo CD's health_test.yaml of each kind, replayed: every phase EXPECTED names has its testdata."""
    cases = committed()
    phases = {(kind, Path(case["inputPath"]).stem) for kind, case in cases}
    assert phases == set(EXPECTED), "run the cluster tests with LEPTON_UPDATE_GOLDEN=1 and commit the result"
    objects = [yaml.safe_load((CHECKS / kind / case["inputPath"]).read_text()) for kind, case in cases]
    for (kind, case), health in zip(cases, read_health(dev_cluster.bins["lepton-health"], objects), strict=True):
        phase = Path(case["inputPath"]).stem
        assert (health.argocd, health.argocd_message) == (case["healthStatus"]["status"],
                                                          case["healthStatus"]["message"]), (kind, phase)  # fmt: skip
        assert (health.argocd, health.kstatus) == EXPECTED[(kind, phase)], (kind, phase)


def test_a_resource_the_operator_has_not_seen_reads_in_progress(kube: Kube, dev_cluster: DevCluster,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """Before the operator writes status, the apiserver shows observedGeneration 0 (the CRDs' default):
    kstatus reads InProgress, not Current for want of any status, and Argo CD reads Progressing. So is a
    spec changed since the operator last wrote status."""
    ns = f"unwatched-{uuid.uuid4().hex[:8]}"  # outside the operator's namespaces: nobody writes status
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for manifest in (trainingjob("new", nodes=1), dataset("new"), service("new"), study("new", tmp_path)):
            kube.apply(manifest, ns)
        objects = [kube.get(kind, "new", ns) for kind in ("trainingjob", "dataset", "inferenceservice", "tuningstudy")]
    finally:
        kube.run("delete", "namespace", ns, "--wait=false")
    assert all(o["status"]["observedGeneration"] == 0 for o in objects), [o.get("status") for o in objects]
    ready = {"type": "Ready", "status": "True", "reason": "Running", "message": "1 of 1 nodes running"}
    changed = {**objects[0], "metadata": {**objects[0]["metadata"], "generation": 3},
               "status": {"observedGeneration": 2, "phase": "Running", "conditions": [ready]}}  # fmt: skip
    for health in read_health(dev_cluster.bins["lepton-health"], [*objects, changed]):
        assert (health.argocd, health.kstatus) == ("Progressing", "InProgress"), health


# --- each kind driven through its phases by the operator -----------------------------------------
def test_trainingjob_in_each_phase(kube: Kube, namespace: str, operator: OperatorProcess, captures: Captures) -> None:
    ns, kind = namespace, "TrainingJob"
    kube.apply(trainingjob("huge", nodes=5, gpusPerNode=8), ns)
    eventually(lambda: reason_of(kube, ns, kind, "huge", "Reconciling") == "Unschedulable", timeout=60,
               what="Unschedulable")  # fmt: skip
    captures.take(kind, "huge", "pending")
    kube.apply(trainingjob("job", nodes=1), ns)
    eventually(lambda: phase_of(kube, ns, kind, "job", "Running"), timeout=60, what="Running")
    captures.take(kind, "job", "running")
    # The lifecycle metrics of the same transitions (the operator is shared: counts only grow).
    assert metric(operator, "lepton_trainingjob_startup_seconds_count") >= 1
    assert metric(operator, f'lepton_gpus_allocated{{namespace="{ns}"}}') == 1
    kube.patch("trainingjob", "job", ns, {"spec": {"suspend": True}})
    eventually(lambda: phase_of(kube, ns, kind, "job", "Suspended"), timeout=60, what="Suspended")
    captures.take(kind, "job", "suspended")
    kube.patch("trainingjob", "job", ns, {"spec": {"suspend": False}})
    eventually(lambda: phase_of(kube, ns, kind, "job", "Running"), timeout=60, what="Running again")
    for p in live_pods(kube, ns):
        if p["metadata"]["labels"].get("lepton.ai/name") == "job":
            finish(kube, ns, p["metadata"]["name"], "Succeeded")
    eventually(lambda: phase_of(kube, ns, kind, "job", "Succeeded"), timeout=60, what="Succeeded")
    captures.take(kind, "job", "succeeded")
    kube.apply(trainingjob("doomed", nodes=1, backoffLimit=0), ns)
    eventually(lambda: phase_of(kube, ns, kind, "doomed", "Running"), timeout=60, what="doomed Running")
    for p in live_pods(kube, ns):
        if p["metadata"]["labels"].get("lepton.ai/name") == "doomed":
            finish(kube, ns, p["metadata"]["name"], "Failed")
    eventually(lambda: phase_of(kube, ns, kind, "doomed", "Failed"), timeout=60, what="Failed")
    captures.take(kind, "doomed", "failed")
    assert metric(operator, 'lepton_trainingjob_restarts_total{reason="Error"}') >= 1
    assert metric(operator, f'lepton_gpus_allocated{{namespace="{ns}"}}') == 0
    assert metric(operator, f'lepton_gpu_seconds_total{{namespace="{ns}"}}') > 0
    assert metric(operator, 'lepton_resources{kind="TrainingJob",phase="Failed"}') >= 1
    kube.apply(trainingjob("rejected", nodes=1, scheduling={"priorityClassName": "no-such-class"}), ns)
    eventually(lambda: reason_of(kube, ns, kind, "rejected", "Stalled") == "ChildRejected", timeout=60,
               what="ChildRejected")  # fmt: skip
    captures.take(kind, "rejected", "stalled")


def test_dataset_in_each_phase(kube: Kube, namespace: str, operator: OperatorProcess, captures: Captures) -> None:
    ns, kind = namespace, "Dataset"
    setup_claims(kube, ns)
    kube.apply(dataset("held", suspend=True), ns)
    eventually(lambda: phase_of(kube, ns, kind, "held", "Suspended"), timeout=60, what="Suspended")
    captures.take(kind, "held", "suspended")
    kube.apply(dataset("tickets"), ns)
    eventually(lambda: phase_of(kube, ns, kind, "tickets", "Preparing"), timeout=60, what="Preparing")
    captures.take(kind, "tickets", "preparing")
    end_preparation(kube, ns, kube.get("dataset", "tickets", ns)["status"]["job"], "Succeeded", SUMMARY)
    eventually(lambda: phase_of(kube, ns, kind, "tickets", "Ready"), timeout=90, what="Ready")
    captures.take(kind, "tickets", "ready")
    kube.apply(dataset("broken", backoffLimit=0), ns)
    job = eventually(lambda: kube.get("dataset", "broken", ns).get("status", {}).get("job"), timeout=60, what="Job")
    error = PreparationError(reason="BadFormat", message="line is not a JSON object", file="tickets.jsonl", line=17)
    end_preparation(kube, ns, job, "Failed", PreparationSummary(error=error))
    eventually(lambda: phase_of(kube, ns, kind, "broken", "Failed"), timeout=90, what="Failed")
    captures.take(kind, "broken", "failed")


def test_inferenceservice_in_each_phase(
    kube: Kube, namespace: str, operator: OperatorProcess, captures: Captures
) -> None:
    ns, kind = namespace, "InferenceService"
    kube.apply(trainingjob("trainer", nodes=1), ns)  # runs on: the service waits for its model
    kube.apply(service("later", model={"trainingJob": {"name": "trainer"}}), ns)
    eventually(lambda: reason_of(kube, ns, kind, "later", "Reconciling") == "ReferenceNotReady", timeout=60,
               what="waiting for its model")  # fmt: skip
    captures.take(kind, "later", "waiting")
    kube.apply(service("web"), ns)
    eventually(lambda: reason_of(kube, ns, kind, "web", "Ready") == "Serving", timeout=90, what="Serving")
    captures.take(kind, "web", "serving")
    kube.patch("inferenceservice", "web", ns, {"spec": {"suspend": True}})
    eventually(lambda: phase_of(kube, ns, kind, "web", "Suspended"), timeout=60, what="Suspended")
    captures.take(kind, "web", "suspended")
    users = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
             "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}  # fmt: skip
    kube.apply(users, ns)
    kube.apply(service("taken"), ns)
    eventually(lambda: reason_of(kube, ns, kind, "taken", "Stalled") == "NameConflict", timeout=60,
               what="NameConflict")  # fmt: skip
    captures.take(kind, "taken", "stalled")


def test_tuningstudy_in_each_phase(
    kube: Kube, namespace: str, operator: OperatorProcess, captures: Captures, tmp_path: Path
) -> None:
    ns, kind = namespace, "TuningStudy"
    db = tmp_path / "study.db"
    db_secret(kube, ns, f"sqlite:///{db}")
    kube.apply(study("held", tmp_path / "out", maxTrials=1, suspend=True), ns)
    eventually(lambda: phase_of(kube, ns, kind, "held", "Suspended"), timeout=60, what="Suspended")
    captures.take(kind, "held", "suspended")
    # No runtime yet: the tuner pod never answers (or has no node yet), so the study waits for it.
    kube.apply(study("first", tmp_path / "out", maxTrials=1), ns)
    eventually(lambda: reason_of(kube, ns, kind, "first", "Reconciling") in TUNER_WAITS, timeout=60,
               what="waiting for the tuner")  # fmt: skip
    captures.take(kind, "first", "pending")
    ensure_node(kube)
    with LoopbackRuntime(kube, ns, tmp_path, storage_url=f"sqlite:///{db}") as runtime:
        # Running with its trials (not a passing TunerUnreachable while the tuner pod starts over).
        eventually(lambda: reason_of(kube, ns, kind, "first", "Ready") == "TrialsRunning", timeout=120,
                   what="TrialsRunning")  # fmt: skip
        captures.take(kind, "first", "running")
        eventually(lambda: phase_of(kube, ns, kind, "first", "Succeeded"), timeout=300, interval=1, what="Succeeded")
        captures.take(kind, "first", "succeeded")
        bad = study("bad", tmp_path / "out", maxTrials=2, maxFailedTrials=0)
        bad["spec"]["trialTemplate"]["trainingJob"]["data"]["uri"] = str(tmp_path / f"missing-{uuid.uuid4().hex}")
        kube.apply(bad, ns)
        eventually(lambda: phase_of(kube, ns, kind, "bad", "Failed"), timeout=300, interval=1, what="Failed")
        captures.take(kind, "bad", "failed")
        assert not runtime.errors, runtime.errors
