"""Dataset on the real control plane: the real Job controller runs the preparation Job, kwok stands in
for the container runtime (a test ends the pod, with the summary the workload would have written as
its termination message, by annotating it). Ready from the job's summary, a failure naming file and
line, a TrainingJob that waits for the Dataset and records the version it trains on, no second Job for
an unchanged spec, a new one for a changed spec."""

from __future__ import annotations

import json
from typing import Any

from lepton.api.contract import DATA_CONFIG_ENV, TRAINER_CONFIG_ENV
from lepton.api.dataset import PreparationError, PreparationSummary, SplitRows, StepCount
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_inferenceservice import claim
from tests.cluster.test_trainingjob import finish, trainingjob
from tests.cluster.test_trainingjob import status as job_status

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
SUMMARY = PreparationSummary(
    version="0f1e2d3c4b5a6978", rows=SplitRows(train=360, validation=40), bytes=52311, columns=["text", "label"],
    steps=[StepCount(step="0:dedupe", rows_in=412, rows_out=400, details={"removed": 12})],
    versions=["0f1e2d3c4b5a6978"],
)  # fmt: skip


def dataset(name: str, **spec: Any) -> dict[str, Any]:
    body = {"sources": [{"pvc": {"claimName": "raw", "path": "tickets.jsonl"}}],
            "pipeline": [{"dedupe": {"method": "exact"}}], "split": {"train": 0.9, "validation": 0.1},
            "output": {"pvc": {"claimName": "datasets", "path": name}}} | spec  # fmt: skip
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "Dataset", "metadata": {"name": name}, "spec": body}


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("dataset", name, ns).get("status", {}))


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions", [])}


def jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return list(kube.get("jobs", namespace=ns)["items"])


def job_pod(kube: Kube, ns: str, job: str) -> dict[str, Any] | None:
    items = kube.get("pods", namespace=ns)["items"]
    return next((p for p in items if p["metadata"].get("labels", {}).get(JOB_NAME_LABEL) == job), None)


def end_preparation(kube: Kube, ns: str, job: str, outcome: str, summary: PreparationSummary) -> None:
    """What the data workload and the kubelet would do: write the summary, end the container."""
    pod = eventually(lambda: job_pod(kube, ns, job), timeout=60, what=f"the pod of Job {job}")
    message = json.dumps(summary.to_wire(), separators=(",", ":"))
    finish(kube, ns, pod["metadata"]["name"], outcome, **{"lepton.ai/fake-message": message})


def setup_claims(kube: Kube, ns: str) -> None:
    for name in ("raw", "datasets"):
        claim(kube, ns, name)


def test_ready_from_the_jobs_summary_and_a_training_job_waits_for_it(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    setup_claims(kube, namespace)
    # The TrainingJob comes first: it waits for a Dataset that has no version yet.
    kube.apply(trainingjob("on-tickets", nodes=1, data={"datasetRef": {"name": "tickets"}}), namespace)
    kube.apply(dataset("tickets"), namespace)
    uid = kube.get("dataset", "tickets", namespace)["metadata"]["uid"]

    def preparing() -> dict[str, Any] | None:
        st = status(kube, namespace, "tickets")
        return st if st.get("phase") == "Preparing" and st.get("job") else None

    st = eventually(preparing, timeout=60, what="Preparing with a Job")
    (job,) = jobs(kube, namespace)
    assert job["metadata"]["name"] == st["job"] and [r["uid"] for r in job["metadata"]["ownerReferences"]] == [uid]
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert json.loads(env[DATA_CONFIG_ENV])["outputDir"] == "/mnt/pvc/datasets/tickets"
    conds = conditions(st)
    assert (conds["Ready"]["status"], conds["Reconciling"]["status"]) == ("False", "True")
    # A job on its way up has its status written at most a few seconds late (the kernel's settle window).
    waiting = eventually(lambda: (w := job_status(kube, namespace, "on-tickets")).get("phase") and w, timeout=30,
                         what="the TrainingJob's first status")  # fmt: skip
    assert waiting["phase"] == "Pending" and "Dataset 'tickets'" in conditions(waiting)["Ready"]["message"]
    assert not [p for p in kube.get("pods", namespace=namespace)["items"]
                if p["metadata"]["labels"].get("lepton.ai/kind") == "TrainingJob"]  # fmt: skip

    end_preparation(kube, namespace, st["job"], "Succeeded", SUMMARY)
    kube.run("wait", "--for=condition=Ready", "dataset/tickets", "-n", namespace, "--timeout=90s")
    st = status(kube, namespace, "tickets")
    assert st["phase"] == "Ready" and st["version"] == SUMMARY.version
    assert st["location"] == f"pvc://datasets/tickets/versions/{SUMMARY.version}"
    assert st["rows"] == {"train": 360, "validation": 40, "test": 0} and st["totalRows"] == 400
    assert st["steps"][0]["details"] == {"removed": 12} and st["lastPreparedTime"]
    printed = kube.run("get", "dataset", "tickets", "-n", namespace).stdout
    assert SUMMARY.version in printed and "400" in printed and "Ready" in printed

    # The TrainingJob starts, reads that exact version from the mounted PVC and records it.
    def training() -> dict[str, Any] | None:
        st = job_status(kube, namespace, "on-tickets")
        return st if st.get("datasetVersion") else None

    assert eventually(training, timeout=60, what="datasetVersion recorded")["datasetVersion"] == SUMMARY.version
    pod = next(p for p in kube.get("pods", namespace=namespace)["items"]
               if p["metadata"]["labels"].get("lepton.ai/kind") == "TrainingJob")  # fmt: skip
    container = pod["spec"]["containers"][0]
    config = json.loads(next(e["value"] for e in container["env"] if e["name"] == TRAINER_CONFIG_ENV))
    assert config["data"]["path"] == f"/mnt/pvc/datasets/tickets/versions/{SUMMARY.version}/train"
    assert config["data"]["datasetVersion"] == SUMMARY.version and config["data"]["dataset"] == "tickets"
    assert {"mountPath": "/mnt/pvc/datasets", "name": "pvc-0", "readOnly": True} in container["volumeMounts"]

    # Unchanged spec: no second preparation, whatever happens to the Job.
    kube.run("label", "dataset", "tickets", "-n", namespace, "team=ml")
    assert [j["metadata"]["name"] for j in jobs(kube, namespace)] == [st["job"]]
    # A changed step is a new preparation with a Job of its own; the published version stays Ready.
    kube.patch("dataset", "tickets", namespace, {"spec": {"pipeline": [{"dedupe": {"method": "minhash"}}]}})

    def reprepared() -> dict[str, Any] | None:
        new = status(kube, namespace, "tickets")
        return new if new.get("job") not in (None, st["job"]) and new.get("phase") == "Preparing" else None

    new = eventually(reprepared, timeout=60, what="a new preparation Job")
    assert conditions(new)["Ready"]["status"] == "True" and new["version"] == SUMMARY.version
    # The Job of the earlier spec goes (a running one would be stopped): its outcome is in status.
    eventually(lambda: st["job"] not in [j["metadata"]["name"] for j in jobs(kube, namespace)], timeout=30,
               what="the earlier spec's Job deleted")  # fmt: skip


def test_a_failed_preparation_names_file_and_line(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    setup_claims(kube, namespace)
    kube.apply(dataset("broken", backoffLimit=0), namespace)
    job = eventually(lambda: status(kube, namespace, "broken").get("job"), timeout=60, what="a Job")
    error = PreparationError(reason="BadFormat", message="line is not a JSON object", file="tickets.jsonl", line=17)
    end_preparation(kube, namespace, job, "Failed", PreparationSummary(error=error))

    def failed() -> dict[str, Any] | None:
        st = status(kube, namespace, "broken")
        return st if st.get("phase") == "Failed" else None

    st = eventually(failed, timeout=90, what="Failed")
    stalled = conditions(st)["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "BadFormat"
    assert stalled["message"].startswith("tickets.jsonl:17: line is not a JSON object")
    assert conditions(st)["Ready"]["status"] == "False"
    events = kube.run("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=broken").stdout
    assert "PreparationFailed" in events
