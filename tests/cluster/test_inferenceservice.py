"""InferenceService on the real control plane: the real Deployment, ReplicaSet, HPA and garbage-collector
controllers, kwok nodes standing in for the container runtime (a kwok pod turns Ready as a server
would once its model is loaded). Children and owner references, Ready with a URL, `kubectl wait`,
`kubectl scale`, spec rollouts, a canary split in status, suspend, deletion, and a model from a
TrainingJob that has not succeeded yet."""

from __future__ import annotations

import json
from typing import Any

from lepton.api.constants import Label
from lepton.api.contract import SERVER_CONFIG_ENV
from lepton.cli.devcluster import DevCluster
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_trainingjob import finish, trainingjob


def service(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"uri": "/models/tiny-gpt2"}, "resources": {"requests": {"cpu": "1"}}} | spec
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": body}


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("inferenceservice", name, ns).get("status", {}))


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions", [])}


def ready(kube: Kube, ns: str, name: str, generation: int | None = None) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    ok = conditions(st).get("Ready", {}).get("status") == "True"
    return st if ok and (generation is None or st.get("observedGeneration") == generation) else None


def server_pods(kube: Kube, ns: str, role: str = "primary") -> list[dict[str, Any]]:
    items = kube.get("pods", namespace=ns)["items"]
    return [p for p in items if p["metadata"]["labels"].get(Label.ROLE) == role
            and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def config_of(deployment: dict[str, Any]) -> dict[str, Any]:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return dict(json.loads(next(e["value"] for e in env if e["name"] == SERVER_CONFIG_ENV)))


def test_serves_with_owned_children_and_ready_with_a_url(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(service("chat", replicas=2), namespace)
    uid = kube.get("inferenceservice", "chat", namespace)["metadata"]["uid"]
    # kubectl wait reads the Ready condition, as Flux and Argo CD do.
    kube.run("wait", "--for=condition=Ready", "inferenceservice/chat", "-n", namespace, "--timeout=90s")
    st = status(kube, namespace, "chat")
    assert st["url"] == f"http://chat.{namespace}.svc" and st["phase"] == "Running"
    assert (st["readyReplicas"], st["replicas"], st["ready"]) == (2, 2, "2/2")
    conds = conditions(st)
    assert conds["ModelLoaded"]["status"] == "True" and conds["Stalled"]["status"] == "False"
    for kind, name in (("deployment", "chat-primary"), ("service", "chat"), ("poddisruptionbudget", "chat")):
        refs = kube.get(kind, name, namespace)["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs if r.get("controller")] == [uid], (kind, name)
    svc = kube.get("service", "chat", namespace)
    assert svc["spec"]["selector"] == {Label.KIND: "InferenceService", Label.NAME: "chat"}
    # The replicas run in a namespace enforcing "restricted": admitted at all means they pass it.
    assert len(server_pods(kube, namespace)) == 2
    printed = kube.run("get", "inferenceservice", "chat", "-n", namespace).stdout
    assert "2/2" in printed and "Running" in printed


def test_kubectl_scale_and_spec_changes_roll_out(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(service("scaled", replicas=1), namespace)
    eventually(lambda: ready(kube, namespace, "scaled"), timeout=90, what="Ready")
    kube.run("scale", "inferenceservice", "scaled", "-n", namespace, "--replicas=3")
    eventually(lambda: (st := ready(kube, namespace, "scaled")) and st["readyReplicas"] == 3, timeout=90,
               what="3 ready replicas")  # fmt: skip
    assert kube.get("deployment", "scaled-primary", namespace)["spec"]["replicas"] == 3
    selector = status(kube, namespace, "scaled")["selector"]
    assert len(kube.get("pods", namespace=namespace)["items"]) >= 3
    assert len(json.loads(kube.run("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]) >= 3

    kube.patch("inferenceservice", "scaled", namespace, {"spec": {"runtime": {"maxBatchSize": 3}}})
    generation = kube.get("inferenceservice", "scaled", namespace)["metadata"]["generation"]

    def rolled_out() -> dict[str, Any] | None:
        st = ready(kube, namespace, "scaled", generation)
        pods = server_pods(kube, namespace)
        configs = [json.loads(next(e["value"] for e in p["spec"]["containers"][0]["env"]
                                   if e["name"] == SERVER_CONFIG_ENV)) for p in pods]  # fmt: skip
        return st if st and len(pods) == 3 and all(c["maxBatchSize"] == 3 for c in configs) else None

    eventually(rolled_out, timeout=120, what="every replica on the new spec, Ready again")
    assert config_of(kube.get("deployment", "scaled-primary", namespace))["maxBatchSize"] == 3


def test_canary_split_by_replicas_is_reported(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    canary = {"model": {"uri": "/models/candidate"}, "trafficPercent": 25}
    kube.apply(service("split", replicas=3, canary=canary), namespace)

    def split() -> dict[str, Any] | None:
        st = ready(kube, namespace, "split")
        return st if st and (st.get("traffic") or {}).get("canaryPercent") == 25 else None

    st = eventually(split, timeout=90, what="a 75/25 split in force")
    assert st["traffic"] == {"mode": "replicas", "primaryPercent": 75, "canaryPercent": 25}
    assert conditions(st)["CanaryReady"]["status"] == "True" and st["canaryModel"] == "/models/candidate"
    assert kube.get("deployment", "split-canary", namespace)["spec"]["replicas"] == 1
    assert config_of(kube.get("deployment", "split-canary", namespace))["role"] == "canary"
    # Promotion is a spec edit: the candidate becomes the model, the canary goes away with its Deployment.
    kube.run("patch", "inferenceservice", "split", "-n", namespace, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/model", "value": canary["model"]},
        {"op": "remove", "path": "/spec/canary"},
    ]))  # fmt: skip

    def promoted() -> dict[str, Any] | None:
        st = ready(kube, namespace, "split", 2)
        names = {d["metadata"]["name"] for d in kube.get("deployments", namespace=namespace)["items"]}
        return st if st and names == {"split-primary"} and "traffic" not in st else None

    eventually(promoted, timeout=120, what="the canary promoted and removed")
    assert config_of(kube.get("deployment", "split-primary", namespace))["modelPath"] == "/models/candidate"


def test_suspend_scales_to_zero_and_back(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(service("nap", autoscaling={"minReplicas": 2, "maxReplicas": 4, "metric": "cpu", "target": 80}),
               namespace)  # fmt: skip
    eventually(lambda: ready(kube, namespace, "nap"), timeout=90, what="Ready")
    hpa = kube.get("horizontalpodautoscaler", "nap", namespace)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "nap-primary" and hpa["spec"]["minReplicas"] == 2
    kube.patch("inferenceservice", "nap", namespace, {"spec": {"suspend": True}})

    def asleep() -> dict[str, Any] | None:
        st = status(kube, namespace, "nap")
        hpas = kube.get("horizontalpodautoscalers", namespace=namespace)["items"]
        return st if st.get("phase") == "Suspended" and not server_pods(kube, namespace) and not hpas else None

    st = eventually(asleep, timeout=90, what="suspended: no replicas, no autoscaler")
    assert conditions(st)["Ready"]["reason"] == "Suspended"
    assert kube.get("service", "nap", namespace)  # the Service stays: clients keep their address
    kube.patch("inferenceservice", "nap", namespace, {"spec": {"suspend": False}})
    st = eventually(lambda: ready(kube, namespace, "nap", 3), timeout=90, what="Ready again")
    assert st["readyReplicas"] == 2 and conditions(st)["Suspended"]["status"] == "False"


def test_deleting_the_service_removes_every_child(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(service("gone", replicas=1, canary={"model": {"uri": "/m"}, "trafficPercent": 50},
                       autoscaling={"maxReplicas": 2}), namespace)  # fmt: skip
    eventually(lambda: ready(kube, namespace, "gone"), timeout=90, what="Ready")
    kube.run("delete", "inferenceservice", "gone", "-n", namespace, "--wait=true")

    def empty() -> bool:
        left = [kube.get(kind, namespace=namespace)["items"] for kind in
                ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets")]  # fmt: skip
        return not any(left) and not server_pods(kube, namespace) and not server_pods(kube, namespace, "canary")

    eventually(empty, timeout=90, what="garbage collection of every child")


def claim(kube: Kube, namespace: str, name: str) -> None:
    """A PersistentVolumeClaim bound to a PersistentVolume made for it (no provisioner here; kwok
    mounts nothing, the scheduler only needs the claim bound)."""
    volume = f"{namespace}-{name}"
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
        "hostPath": {"path": f"/tmp/{volume}"}, "claimRef": {"namespace": namespace, "name": name}}})  # fmt: skip
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
        "resources": {"requests": {"storage": "1Gi"}}}}, namespace)  # fmt: skip


def test_a_model_from_a_training_job_waits_until_it_succeeds(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    claim(kube, namespace, "models")
    kube.apply(trainingjob("trainer", nodes=1, output={"pvc": {"claimName": "models", "path": "trainer/v1"}}),
               namespace)  # fmt: skip
    kube.apply(service("from-job", model={"trainingJob": {"name": "trainer"}}), namespace)

    def waiting() -> dict[str, Any] | None:
        st = status(kube, namespace, "from-job")
        resolved = conditions(st).get("ReferencesResolved", {})
        return st if resolved.get("status") == "False" and "trainer" in resolved.get("message", "") else None

    st = eventually(waiting, timeout=60, what="waiting on the TrainingJob")
    assert st["phase"] == "Pending" and conditions(st)["Ready"]["reason"] == "ReferenceNotReady"
    assert not kube.get("deployments", namespace=namespace)["items"]
    eventually(lambda: server_pods(kube, namespace, "") or kube.get("pods", namespace=namespace)["items"],
               timeout=60, what="the training pod")  # fmt: skip
    (pod,) = kube.get("pods", namespace=namespace)["items"]
    finish(kube, namespace, pod["metadata"]["name"], "Succeeded")
    st = eventually(lambda: ready(kube, namespace, "from-job"), timeout=120, what="Ready on the trained model")
    assert st["model"] == "pvc://models/trainer/v1"
    deployment = kube.get("deployment", "from-job-primary", namespace)
    assert config_of(deployment)["modelPath"] == "/mnt/pvc/models/trainer/v1"
    claims = [v["persistentVolumeClaim"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == [{"claimName": "models", "readOnly": True}]


def test_canary_split_by_httproute_weights_once_a_mesh_accepts_it(
    kube: Kube, namespace: str, operator: OperatorProcess, dev_cluster: DevCluster
) -> None:
    """Runs last in this file: it installs the Gateway API's HTTPRoute CRD (the real one, from the
    module) into the session's cluster."""
    crds = dev_cluster.bins.gateway_crds
    assert crds is not None, "hack/build-binaries.sh provides the Gateway API CRDs"
    kube.run("apply", "--server-side", "-f", str(crds / "gateway.networking.k8s.io_httproutes.yaml"))
    listed = ("api-resources", "--api-group=gateway.networking.k8s.io", "-o", "name")
    eventually(lambda: "httproutes" in kube.run(*listed, check=False).stdout, what="the HTTPRoute API")
    kube.apply(service("mesh", replicas=3, canary={"model": {"uri": "/m"}, "trafficPercent": 30}), namespace)

    def route() -> dict[str, Any] | None:
        found = kube.run("get", "httproute", "mesh", "-n", namespace, "-o", "json", check=False)
        return dict(json.loads(found.stdout)) if found.returncode == 0 else None

    spec = eventually(route, timeout=60, what="the HTTPRoute")["spec"]
    assert spec["parentRefs"] == [{"group": "", "kind": "Service", "name": "mesh", "port": 80}]
    assert [(b["name"], b["weight"]) for b in spec["rules"][0]["backendRefs"]] == [("mesh-primary", 70),
                                                                                   ("mesh-canary", 30)]  # fmt: skip
    assert kube.get("service", "mesh-canary", namespace)["spec"]["selector"][Label.ROLE] == "canary"

    def split(mode: str) -> dict[str, Any] | None:
        st = ready(kube, namespace, "mesh")
        return st if st and (st.get("traffic") or {}).get("mode") == mode else None

    # No mesh has accepted the route: Service `mesh` still selects both roles, so the replicas split.
    st = eventually(lambda: split("replicas"), timeout=90, what="Ready, split by replicas")
    assert "not accepted by a mesh yet" in conditions(st)["CanaryReady"]["message"]
    # A stand-in for a mesh (none can run here): accept the route as a GAMMA implementation would.
    parent = {"parentRef": spec["parentRefs"][0], "controllerName": "example.com/stand-in-mesh", "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted by the stand-in",
         "lastTransitionTime": "2026-11-24T00:00:00Z"}]}  # fmt: skip
    kube.run("patch", "httproute", "mesh", "-n", namespace, "--subresource=status", "--type=merge",
             "-p", json.dumps({"status": {"parents": [parent]}}))  # fmt: skip
    st = eventually(lambda: split("gateway-api"), timeout=90, what="the route's weights in force")
    assert st["traffic"] == {"mode": "gateway-api", "primaryPercent": 70, "canaryPercent": 30}

    kube.run("patch", "inferenceservice", "mesh", "-n", namespace, "--type=json",
             "-p", json.dumps([{"op": "remove", "path": "/spec/canary"}]))  # fmt: skip

    def pruned() -> bool:
        names = {s["metadata"]["name"] for s in kube.get("services", namespace=namespace)["items"]}
        return route() is None and names == {"mesh"}

    eventually(pruned, timeout=90, what="the route and the role Services removed with the canary")


def test_a_service_monitor_once_the_prometheus_operator_api_is_served(
    kube: Kube, namespace: str, operator: OperatorProcess, dev_cluster: DevCluster
) -> None:
    """Installs the Prometheus Operator's ServiceMonitor CRD (the real one, from its module) into the
    session's cluster, after serving without it."""
    crds = dev_cluster.bins.monitoring_crds
    assert crds is not None, "hack/build-binaries.sh provides the Prometheus Operator's CRDs"
    listed = ("api-resources", "--api-group=monitoring.coreos.com", "-o", "name")
    kube.apply(service("watched", replicas=1, serviceMonitor=True), namespace)

    def monitored(status: str, reason: str) -> dict[str, Any] | None:
        st = ready(kube, namespace, "watched")
        cond = conditions(st or {}).get("Monitored", {})
        return st if st and (cond.get("status"), cond.get("reason")) == (status, reason) else None

    if "servicemonitors" not in kube.run(*listed, check=False).stdout:  # a reused cluster may have it
        st = eventually(lambda: monitored("False", "APINotServed"), timeout=90, what="Monitored=False, served")
        assert "install the Prometheus Operator's CRDs" in conditions(st)["Monitored"]["message"]
        kube.run("apply", "--server-side", "-f", str(crds / "monitoring.coreos.com_servicemonitors.yaml"))
    try:
        eventually(lambda: monitored("True", "ServiceMonitorCreated"), timeout=90, what="the ServiceMonitor")
    except AssertionError as exc:  # say what was seen instead: Ready, Monitored, the API's discovery
        seen = conditions(status(kube, namespace, "watched"))
        served = kube.run(*listed, check=False).stdout.strip()
        raise AssertionError(f"{exc}; conditions {seen}; api-resources {served!r}") from exc
    monitor = kube.get("servicemonitor", "watched", namespace)
    uid = kube.get("inferenceservice", "watched", namespace)["metadata"]["uid"]
    assert [r["uid"] for r in monitor["metadata"]["ownerReferences"] if r.get("controller")] == [uid]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]

    kube.patch("inferenceservice", "watched", namespace, {"spec": {"serviceMonitor": False}})

    def removed() -> bool:
        gone = kube.run("get", "servicemonitor", "watched", "-n", namespace, check=False).returncode != 0
        return gone and "Monitored" not in conditions(status(kube, namespace, "watched"))

    eventually(removed, timeout=90, what="the ServiceMonitor removed with serviceMonitor: false")
