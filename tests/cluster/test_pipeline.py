"""The pipeline folder (examples/pipeline/) on a real control plane, applied at once in a shuffled order,
as a GitOps sync applies a folder: each resource waits with a condition until what it names is ready,
then proceeds, and the lineage reaches the served model's metadata.

Every workload is a real process behind a kwok pod (tests/cluster/loopback.py): the Dataset's
preparation, the tuner and the trials' torchrun trainers, the final job's trainer, and the server of
the InferenceService, answering at its pod's IP. Only the paths (local directories instead of PVCs),
the placement (the loopback node), the study's storage (an SQLite URL) and its size (2 trials) differ
from the example.

A real Prometheus scrapes the operator and every workload pod during the run; at the end every query of
every panel of the Grafana dashboard and every alert expression (without its threshold) returned at
least one series. A TrainingJob holding a (fake) GPU on kwok's GPU nodes runs beside the pipeline, so
the GPU-seconds panels have what they count."""

from __future__ import annotations

import json
import random
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node
from tests.cluster.prometheus import Prometheus, alert_expressions, dashboard_queries, explain, missing_series
from tests.cluster.test_tuningstudy import db_secret

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "pipeline"
# What each resource waits for until its reference is ready (ReferencesResolved=False, ReferenceNotReady).
WAITS = {
    ("TuningStudy", "pipeline-search"): "Dataset 'pipeline-tickets'",
    ("TrainingJob", "pipeline-final"): "TuningStudy 'pipeline-search'",
    ("InferenceService", "pipeline-chat"): "TrainingJob 'pipeline-final'",
}


def localized(value: Any, tmp: Path) -> Any:
    """The example's relative paths made absolute: the shipped model and data, outputs under `tmp`."""
    if isinstance(value, dict):
        return {k: localized(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [localized(v, tmp) for v in value]
    if isinstance(value, str) and value.startswith("examples/"):
        return str(ROOT / value)
    if isinstance(value, str) and value.startswith(".lepton/"):
        return str(tmp / value)
    return value


def pipeline_docs(tmp: Path) -> list[dict[str, Any]]:
    docs = [localized(yaml.safe_load(p.read_text()), tmp) for p in sorted(PIPELINE.glob("*.yaml"))]
    for doc in docs:
        doc["spec"]["scheduling"] = PLACEMENT
        if doc["kind"] == "TuningStudy":
            doc["spec"] |= {"maxTrials": 2, "storage": {"urlSecretRef": {"name": "optuna-db", "key": "url"}}}
            doc["spec"]["trialTemplate"]["trainingJob"]["scheduling"] = PLACEMENT
    return docs


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def waiting(kube: Kube, ns: str) -> dict[tuple[str, str], str]:
    """The reference each resource waits for, from its ReferencesResolved condition."""
    out = {}
    for kind, name in WAITS:
        c = condition(kube.get(kind.lower(), name, ns), "ReferencesResolved")
        if c.get("status") == "False" and c.get("reason") == "ReferenceNotReady":
            out[(kind, name)] = str(c.get("message"))
    return out


def http(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as rsp:
        return dict(json.loads(rsp.read()))


GPU_JOB = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "gpu-holder"},
           "spec": {"model": {"uri": "/models/m"}, "data": {"uri": "/data/d"}, "hyperparameters": {"maxSteps": 10},
                    "nodes": 1, "gpusPerNode": 1, "output": {"uri": "/out"}}}  # fmt: skip


def test_the_pipeline_folder_applied_at_once_in_any_order_converges(
    dev_cluster: DevCluster, kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    ensure_node(kube)
    ns, db = namespace, tmp_path / "study.db"
    db_secret(kube, ns, f"sqlite:///{db}")
    target = urllib.parse.urlsplit(operator.metrics_url).netloc
    prom = Prometheus(dev_cluster.bins["prometheus"], tmp_path / "prometheus", [target], kube, [ns]).__enter__()
    try:
        _converges(kube, ns, db, tmp_path, prom)
    finally:
        prom.__exit__()


def _converges(kube: Kube, ns: str, db: Path, tmp_path: Path, prom: Prometheus) -> None:
    docs = pipeline_docs(tmp_path)
    seed = random.randrange(1 << 16)
    random.Random(seed).shuffle(docs)
    order = [f"{d['kind']} {d['metadata']['name']}" for d in docs]
    print(f"applied in this order (seed {seed}): {order}")
    kube.run("apply", "-n", ns, "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))
    kube.apply(GPU_JOB, ns)

    # No workload runs yet: the Dataset's preparation pod is there but nothing prepares, and every
    # other resource says, in a condition, what it waits for.
    seen = eventually(lambda: _all(waiting(kube, ns)), timeout=60,
                      what=f"each resource waiting for its reference (order {order})")  # fmt: skip
    for key, what in WAITS.items():
        assert what in seen[key], (key, seen[key])
    jobs = {j["metadata"]["name"] for j in kube.get("trainingjobs", namespace=ns)["items"]}
    assert jobs == {"pipeline-final", "gpu-holder"}, f"a trial started before the Dataset was ready: {jobs}"

    work = tmp_path / "run"
    work.mkdir()
    with LoopbackRuntime(kube, ns, work, storage_url=f"sqlite:///{db}") as runtime:
        svc = eventually(lambda: _if_ready(kube.get("lis", "pipeline-chat", ns)), timeout=600, interval=1,
                         what=f"the service Ready (order {order})")  # fmt: skip
        pod = next(p for p in kube.get("pods", namespace=ns)["items"]
                   if p["metadata"]["name"].startswith("pipeline-chat-primary-"))  # fmt: skip
        base = f"http://{pod['status']['podIP']}:8080"
        eventually(lambda: runtime.started and _ready(base), timeout=120, what="the real server answering")
        answer = http(f"{base}/v1/completions", {"model": "pipeline-chat", "prompt": "My order", "max_tokens": 4})
        metadata = http(f"{base}/v2/models/pipeline-chat")["metadata"]
        for _ in range(20):  # traffic for the serving panels, over more than one scrape
            http(f"{base}/v1/completions", {"model": "pipeline-chat", "prompt": "Where is", "max_tokens": 2})
        queries = dashboard_queries(namespace=ns) + alert_expressions()
        missing = eventually(lambda: _none_missing(prom, queries), timeout=30, interval=3,
                             what="every dashboard query and alert expression with a series")  # fmt: skip
        assert missing is True, missing
        assert not runtime.errors, runtime.errors
    assert answer["choices"][0]["text"] is not None

    dataset = kube.get("dataset", "pipeline-tickets", ns)["status"]
    study = kube.get("tuningstudy", "pipeline-search", ns)["status"]
    final = kube.get("trainingjob", "pipeline-final", ns)["status"]
    version, best = dataset["version"], study["bestTrial"]
    assert study["phase"] == "Succeeded" and final["phase"] == "Succeeded"
    assert study["lineage"] == {"dataset": "pipeline-tickets", "datasetVersion": version,
                                "baseModel": str(ROOT / "examples/models/tiny-gpt2")}  # fmt: skip
    lineage = {"dataset": "pipeline-tickets", "datasetVersion": version, "tuningStudy": "pipeline-search",
               "trial": best["number"], "trainingJob": "pipeline-final", "baseModel": best["model"]}  # fmt: skip
    assert final["lineage"] == lineage and svc["status"]["lineage"] == lineage
    # What the issue asks a user to type, and the served model's own metadata: the same data version.
    shown = kube.run("get", "lis", "pipeline-chat", "-n", ns, "-o", "jsonpath={.status.lineage.datasetVersion}")
    assert shown.stdout == version
    assert {k: metadata.get(k) for k in lineage} == {k: str(v) for k, v in lineage.items()}
    trained = json.loads((Path(final["outputModel"]) / "lepton-training.json").read_text())
    assert trained["lineage"] == lineage and trained["data"]["datasetVersion"] == version


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def _all(seen: dict[tuple[str, str], str]) -> dict[tuple[str, str], str] | None:
    return seen if len(seen) == len(WAITS) else None


def _if_ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return obj if condition(obj, "Ready").get("status") == "True" else None


def _none_missing(prom: Prometheus, queries: list[str]) -> bool | None:
    missing = missing_series(prom, queries)
    if missing:
        print(explain(prom, missing))
    return True if not missing else None
