"""The Helm chart with the real helm binary: lint, golden `helm template` output, install into the
real control plane, and RBAC proven by running the operator AS the chart's ServiceAccount."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton.api.constants import Label
from lepton.api.trainingjob import pod_name
from lepton.cli.devcluster import DevCluster
from lepton.local.backend import free_port
from tests.cluster.conftest import FAST, start_operator, stop_operator
from tests.cluster.kube import Kube, KubectlError, eventually
from tests.cluster.test_trainingjob import finish, live_pods, phase_is, status, trainingjob
from tests.conftest import EXAMPLES, ROOT

CHART = ROOT / "helm" / "lepton"
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LEPTON_UPDATE_GOLDEN") == "1"
# The chart generates the progress key at random (helm lookup keeps it afterwards): masked in goldens.
RANDOM_KEY = re.compile(r"^(  LEPTON_PROGRESS_KEY: )[A-Za-z0-9+/=]+$", re.MULTILINE)


def helm(cluster: DevCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [cluster.bins["helm"], "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_helm_lint(dev_cluster: DevCluster) -> None:
    out = helm(dev_cluster, "lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    ("golden", "values"),
    [
        ("default", []),
        ("namespaced", ["--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a,team-b}"]),
        ("single-replica", ["--set", "replicas=1", "--set", "leaderElection.enabled=false"]),
        ("servicemonitor", ["--set", "metrics.serviceMonitor.enabled=true", "--set", "workloadImages.trainer=t:1",
                            "--set", "networkPolicy.prometheusNamespace=monitoring",
                            "--set", "metrics.prometheusRule.enabled=true",
                            "--set", "metrics.grafanaDashboard.enabled=true"]),
    ],
)  # fmt: skip
def test_helm_template_matches_golden(dev_cluster: DevCluster, golden: str, values: list[str]) -> None:
    rendered = helm(
        dev_cluster, "template", "lepton", str(CHART), "-n", "lepton-system", "--kube-version", "1.37.2", *values
    ).stdout
    rendered, masked = RANDOM_KEY.subn(r"\1<random, 64 characters>", rendered)
    assert masked == 1
    path = GOLDEN / f"helm-{golden}.yaml"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text(), f"rerun with LEPTON_UPDATE_GOLDEN=1 and review the diff of {path.name}"


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (["--set", "rbac.scope=namespaced"], "rbac.scope=namespaced needs watchNamespaces"),
        (["--set", "metrics.port=80"], "minimum: got 80"),
        (["--set", "logLevel=LOUD"], "logLevel"),
        (["--set", "watchNamespaces={Bad_NS}"], "watchNamespaces"),
        (["--set", "networkPolicy.prometheusNamespace=Mon_itoring"], "prometheusNamespace"),
        (["--set", "networkPolicy.enabled=yes"], "/networkPolicy/enabled"),
        (["--set", "leaderElection.enabled=false"], "replicas > 1 needs leaderElection.enabled"),
        (["--set", "leaderElection.leaseSeconds=1"], "/leaderElection/leaseSeconds"),
        (["--set", "activator.port=80"], "/activator/port"),
        (["--set", "activator.replicas=0"], "/activator/replicas"),
        (["--set", "activator.enabled=yes"], "/activator/enabled"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(dev_cluster: DevCluster, values: list[str], error: str) -> None:
    proc = helm(dev_cluster, "template", "x", str(CHART), "--kube-version", "1.37.2", *values, check=False)
    assert proc.returncode != 0 and error in proc.stderr


def _template(cluster: DevCluster, *values: str) -> list[dict[str, Any]]:
    out = helm(cluster, "template", "x", str(CHART), "-n", "ops", "--kube-version", "1.37.2", *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str = "x-lepton") -> dict[str, Any]:
    """The document of this kind and name (release x: the operator's are x-lepton, the activator's
    x-lepton-activator)."""
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_progress_key_reaches_the_operator_only_through_a_secret_key_ref(dev_cluster: DevCluster) -> None:
    for values, secret in (([], "x-lepton-progress-key"), (["--set", "progressKey.existingSecret=mine"], "mine")):
        docs = _template(dev_cluster, *values)
        deploy = _one(docs, "Deployment")
        env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LEPTON_PROGRESS_KEY"] == {
            "name": "LEPTON_PROGRESS_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "LEPTON_PROGRESS_KEY"}}
        }  # fmt: skip
        assert env["LEPTON_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
        assert secrets == ([] if values else [secret]), "an existing Secret is used, not replaced"


def test_network_policies_can_be_turned_off_with_their_rbac(dev_cluster: DevCluster) -> None:
    docs = _template(dev_cluster, "--set", "networkPolicy.enabled=false")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    for role in [d for d in docs if d["kind"] == "ClusterRole"]:
        assert not [r for r in role["rules"] if "networkpolicies" in r["resources"]]
    deploy = _one(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEPTON_NETWORK_POLICIES"] == "false"


def test_the_operators_own_policy_admits_only_prometheus(dev_cluster: DevCluster) -> None:
    for values, sources in (([], []), (["--set", "networkPolicy.prometheusNamespace=monitoring"], ["monitoring"])):
        policy = _one(_template(dev_cluster, *values), "NetworkPolicy")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        admitted = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    for rule in policy["spec"]["ingress"] for p in rule["from"]]  # fmt: skip
        assert admitted == sources
        assert all(rule["ports"] == [{"protocol": "TCP", "port": 8080}] for rule in policy["spec"]["ingress"])


# What the activator does with the API (controller/activator.py), and nothing more.
ACTIVATOR_RULES = [
    {"apiGroups": ["lepton.ai"], "resources": ["inferenceservices"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
]
ENDPOINTSLICES = {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                  "verbs": ["get", "list", "create", "patch", "delete"]}  # fmt: skip


def test_the_activator_is_on_and_the_operator_is_told_its_service(dev_cluster: DevCluster) -> None:
    docs = _template(dev_cluster)
    name = "x-lepton-activator"
    operator = _one(docs, "Deployment")
    env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "LEPTON_ACTIVATOR_SERVICE", "value": name} in env
    assert ENDPOINTSLICES in _one(docs, "ClusterRole")["rules"], "the operator owns NAME-activator slices"
    # The operator takes the port named http off this Service's slices.
    service = _one(docs, "Service", name)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8012, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    deploy = _one(docs, "Deployment", name)
    pod = deploy["spec"]["template"]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    operator_selector = operator["spec"]["selector"]["matchLabels"]
    assert not operator_selector.items() <= pod["metadata"]["labels"].items(), "not one of the operator's pods"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"] == ["activator", "--host", "0.0.0.0", "--port", "8012"]
    assert container["ports"] == [{"name": "http", "containerPort": 8012, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    # Pod Security "restricted", as the operator's pod.
    assert pod["spec"]["securityContext"] == operator["spec"]["template"]["spec"]["securityContext"]
    assert container["securityContext"] == operator["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its own ServiceAccount, with only what it uses.
    assert pod["spec"]["serviceAccountName"] == name and _one(docs, "ServiceAccount", name)
    assert _one(docs, "ClusterRole", name)["rules"] == ACTIVATOR_RULES
    assert _one(docs, "ClusterRoleBinding", name)["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": "ops"}
    ]
    # It stands in for services called from anywhere: its port admits every source, and only its port.
    policy = _one(docs, "NetworkPolicy", name)
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8012}]}]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == name]


def test_activator_values(dev_cluster: DevCluster) -> None:
    name = "x-lepton-activator"
    docs = _template(dev_cluster, "--set", "activator.replicas=2", "--set", "activator.port=9000")
    deploy = _one(docs, "Deployment", name)
    assert deploy["spec"]["replicas"] == 2
    assert _one(docs, "PodDisruptionBudget", name)["spec"]["minAvailable"] == 1
    assert deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "9000"
    assert _one(docs, "Service", name)["spec"]["ports"][0]["port"] == 9000
    assert _one(docs, "NetworkPolicy", name)["spec"]["ingress"][0]["ports"][0]["port"] == 9000

    docs = _template(dev_cluster, "--set", "serviceAccount.create=false", "--set", "activator.serviceAccount.name=mine")
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert _one(docs, "Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    assert _one(docs, "ClusterRoleBinding", name)["subjects"][0]["name"] == "mine"

    for scope in ([], ["--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a}"]):
        docs = _template(dev_cluster, "--set", "activator.enabled=false", *scope)
        assert not [d for d in docs if "activator" in d["metadata"]["name"]], "nothing of the activator"
        env = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        assert "LEPTON_ACTIVATOR_SERVICE" not in {e["name"] for e in env}, "minReplicas 0 keeps one replica"


def test_namespaced_mode_confines_the_activator(dev_cluster: DevCluster) -> None:
    docs = _template(dev_cluster, "--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a,team-b}")
    name = "x-lepton-activator"
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
    for ns in ("team-a", "team-b"):
        assert roles[(ns, name)]["rules"] == ACTIVATOR_RULES
        assert ENDPOINTSLICES in roles[(ns, "x-lepton")]["rules"]
    # The operator reads the activator's slices in the release's namespace, watched or not: list only.
    assert roles[("ops", "x-lepton-activator-endpoints")]["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}
    ]
    bindings = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "RoleBinding"}
    assert bindings[("ops", "x-lepton-activator-endpoints")]["subjects"][0]["name"] == "x-lepton"
    assert bindings[("team-a", name)]["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "ops"}]


def test_chart_crds_are_the_generated_ones() -> None:
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sorted(p.name for p in (ROOT / "crds").glob("*"))
    for path in (CHART / "crds").glob("*.yaml"):
        assert path.read_text() == (ROOT / "crds" / path.name).read_text()


def _restricted_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.apply({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    })  # fmt: skip
    return name


@pytest.fixture(scope="module")
def release(dev_cluster: DevCluster, kube: Kube) -> Iterator[dict[str, str]]:
    """The chart installed into a restricted namespace; its pod runs on a kwok node."""
    ns = _restricted_namespace(kube, "lepton-system")
    name = f"lepton-{uuid.uuid4().hex[:4]}"
    helm(dev_cluster, "install", name, str(CHART), "-n", ns, "--wait", "--timeout", "120s")
    # fullname = release name when it contains "lepton"; the activator's Service and ServiceAccount
    yield {"namespace": ns, "release": name, "sa": name, "activator": f"{name}-activator"}
    helm(dev_cluster, "uninstall", name, "-n", ns, "--wait", check=False)
    kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_the_progress_key_survives_an_upgrade(dev_cluster: DevCluster, kube: Kube, release: dict[str, str]) -> None:
    secret = f"{release['release']}-progress-key"
    before = kube.get("secret", secret, release["namespace"])["data"]["LEPTON_PROGRESS_KEY"]
    assert len(before) >= 64  # base64 of 64 random characters
    ns = release["namespace"]
    helm(dev_cluster, "upgrade", release["release"], str(CHART), "-n", ns, "--wait", "--timeout", "120s")
    after = kube.get("secret", secret, release["namespace"])["data"]["LEPTON_PROGRESS_KEY"]
    assert after == before, "an upgrade must not change the key: running jobs' tokens would stop working"


def test_helm_install_makes_the_operator_available(kube: Kube, release: dict[str, str]) -> None:
    deploy = kube.get("deployment", release["release"], release["namespace"])
    assert deploy["status"].get("availableReplicas") == 2, "a leader and a standby"
    pods = kube.get("pods", namespace=release["namespace"])["items"]
    operators = [p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/name"] == "lepton-operator"]
    assert len(operators) == 2 and {p["status"]["phase"] for p in pods} == {"Running"}
    # Admitted by Pod Security "restricted" (the namespace enforces it).
    assert all(p["spec"]["securityContext"]["runAsNonRoot"] is True for p in pods)
    pdb = kube.get("poddisruptionbudget", release["release"], release["namespace"])
    assert pdb["spec"]["minAvailable"] == 1


def test_helm_install_makes_the_activator_available_where_the_operator_looks(
    kube: Kube, release: dict[str, str]
) -> None:
    ns = release["namespace"]
    assert kube.get("deployment", release["activator"], ns)["status"].get("availableReplicas") == 1
    (pod,) = [p for p in kube.get("pods", namespace=ns)["items"]
              if p["metadata"]["labels"]["app.kubernetes.io/name"] == "lepton-activator"]  # fmt: skip
    assert pod["spec"]["serviceAccountName"] == release["activator"]

    # What the operator reads (activator_endpoints): the Service's slices, their port named http.
    def sliced() -> list[dict[str, Any]] | None:
        label = f"kubernetes.io/service-name={release['activator']}"
        found = json.loads(kube.run("get", "endpointslices", "-n", ns, "-l", label, "-o", "json").stdout)
        ready = [a for s in found["items"] for e in s.get("endpoints") or []
                 if (e.get("conditions") or {}).get("ready") for a in e["addresses"]]  # fmt: skip
        return found["items"] if ready == [pod["status"]["podIP"]] else None

    slices = eventually(sliced, timeout=30, what="the activator's address in its Service's EndpointSlice")
    assert [p for s in slices for p in s["ports"]] == [
        {"name": "http", "port": 8012, "protocol": "TCP", "appProtocol": "http"}
    ]


def _sa_kubeconfig(dev_cluster: DevCluster, kube: Kube, release: dict[str, str], path: Path) -> Path:
    """A kubeconfig that authenticates AS the chart's ServiceAccount (a real token, no admin rights)."""
    token = kube.run("create", "token", release["sa"], "-n", release["namespace"], "--duration=1h").stdout.strip()
    admin = yaml.safe_load(dev_cluster.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "lepton-sa", "user": {"token": token}}],
        "contexts": [{"name": "lepton-sa", "context": {"cluster": cluster["name"], "user": "lepton-sa"}}],
        "current-context": "lepton-sa",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def gang(kube: Kube, namespace: str, job: str = "rbac-job") -> set[str]:
    """The job's live pods (the examples run beside it: a Dataset's preparation, the custom example's gang)."""
    return {p["metadata"]["name"] for p in live_pods(kube, namespace)
            if p["metadata"]["labels"].get(Label.KIND) == "TrainingJob"
            and p["metadata"]["labels"].get(Label.NAME) == job}  # fmt: skip


def take_a_job_through_its_life(kube: Kube, namespace: str) -> None:
    """A TrainingJob with plain URIs (nothing to wait for): its pods and Service are created, a failed
    rank restarts the gang (pods deleted and created again), and its TTL deletes it when done."""
    kube.apply(trainingjob("rbac-job", nodes=2, gpusPerNode=1, backoffLimit=2, ttlSecondsAfterFinished=2), namespace)
    eventually(lambda: phase_is(kube, namespace, "rbac-job", "Running"), timeout=90, what="Running")
    assert kube.get("service", "rbac-job", namespace)["spec"]["clusterIP"] == "None"
    policy = kube.get("networkpolicy", "rbac-job", namespace)  # the operator knows its namespace here
    assert policy["spec"]["podSelector"]["matchLabels"] == {Label.KIND: "TrainingJob", Label.NAME: "rbac-job"}
    first = gang(kube, namespace)
    assert first == {pod_name("rbac-job", 0, i) for i in range(2)}
    finish(kube, namespace, pod_name("rbac-job", 0, 1), "Failed")

    def restarted() -> dict[str, Any] | None:
        st = status(kube, namespace, "rbac-job")
        names = gang(kube, namespace)
        again = st.get("restarts") == 1 and st.get("phase") == "Running"
        return st if again and names == {pod_name("rbac-job", 1, i) for i in range(2)} else None

    eventually(restarted, timeout=150, what="the gang restarted: old pods deleted, new ones Running")
    for i in range(2):
        finish(kube, namespace, pod_name("rbac-job", 1, i), "Succeeded")
    eventually(lambda: phase_is(kube, namespace, "rbac-job", "Succeeded"), timeout=90, what="Succeeded")

    def deleted() -> bool:
        try:
            kube.get("trainingjob", "rbac-job", namespace)
        except KubectlError as err:
            return "NotFound" in err.stderr
        return False

    eventually(deleted, timeout=60, what="the finished job deleted by its TTL")


def assert_operator_does_its_job_as(kubeconfig: Path, watch: str, namespace: str, kube: Kube, tmp: Path,
                                    operator_namespace: str, lease_name: str, activator: str) -> None:  # fmt: skip
    """Run the operator with the chart's configuration and credentials (only its timings shortened): it
    takes the chart's Lease, every kind gets status, it finds the chart's activator, and a TrainingJob
    lives its whole life."""
    env = {**FAST, "LEPTON_OPERATOR_NAMESPACE": operator_namespace, "LEPTON_NETWORK_POLICIES": "true",
           "LEPTON_LEADER_ELECTION": "true", "LEPTON_LEASE_NAME": lease_name,
           "LEPTON_ACTIVATOR_SERVICE": activator}  # fmt: skip
    op = start_operator(kubeconfig, tmp / "operator.log", watch, env)
    get = ("get", "lease", lease_name, "-n", operator_namespace, "-o", "json")
    lease = eventually(lambda: kube.run(*get, check=False).stdout or None, timeout=30, what="the Lease, as the SA")
    assert json.loads(lease)["spec"]["holderIdentity"], "it leads, by the chart's grants"
    try:
        examples = sorted(EXAMPLES.glob("*.yaml"))
        for path in examples:
            kube.run("create", "-n", namespace, "-f", str(path))

        def all_observed() -> bool:
            items = kube.get("lepton", namespace=namespace)["items"]
            kinds = {i["kind"] for i in items}
            return (
                len(items) == len(examples)
                and kinds == {"Dataset", "TrainingJob", "TuningStudy", "InferenceService"}
                and all(i.get("status", {}).get("observedGeneration") == 1 for i in items)
            )

        eventually(all_observed, timeout=60, what="status on all four kinds, written as the ServiceAccount")
        at_zero = yaml.safe_load((EXAMPLES / "inferenceservice-scale-to-zero.yaml").read_text())["metadata"]["name"]

        def activator_found() -> str | None:
            st = kube.get("inferenceservice", at_zero, namespace).get("status") or {}
            reason = next((c["reason"] for c in st.get("conditions") or [] if c["type"] == "ScaledToZero"), None)
            return reason if reason not in (None, "ActivatorUnavailable") else None

        # minReplicas 0 needs the activator's addresses, read off its Service's EndpointSlices as the SA
        eventually(activator_found, timeout=30, what="the chart's activator found (not ActivatorUnavailable)")
        assert 'outcome="ok"' in op.metrics()
        take_a_job_through_its_life(kube, namespace)
    finally:
        stop_operator(op)
    log = (tmp / "operator.log").read_text()
    # 403 as a status code, not as the milliseconds of a log line's time stamp (",403").
    assert "Forbidden" not in log and not re.search(r"(?<![\d,.])403(?!\d)", log), log[-3000:]


def test_operator_does_its_whole_job_as_the_charts_service_account(
    dev_cluster: DevCluster, kube: Kube, release: dict[str, str], tmp_path: Path
) -> None:
    kubeconfig = _sa_kubeconfig(dev_cluster, kube, release, tmp_path / "sa.kubeconfig")
    ns = _restricted_namespace(kube, "lepton-rbac")
    try:
        # cluster-wide, as the chart sets it
        assert_operator_does_its_job_as(kubeconfig, "", ns, kube, tmp_path, release["namespace"], release["release"],
                                        release["activator"])  # fmt: skip
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("list", "trainingjobs.lepton.ai", True),
        ("patch", "trainingjobs.lepton.ai/status", True),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", True),
        ("create", "events", True),
        ("update", "trainingjobs.lepton.ai", False),  # patch only: it never replaces a user's object
        ("delete", "trainingjobs.lepton.ai", True),  # ttlSecondsAfterFinished
        ("delete", "datasets.lepton.ai", False),
        ("create", "trainingjobs.lepton.ai", True),  # a TuningStudy's trials
        ("create", "tuningstudies.lepton.ai", False),
        ("create", "persistentvolumeclaims", True),  # a TuningStudy's journal
        ("delete", "persistentvolumeclaims", False),  # garbage collection deletes it with the study
        ("list", "persistentvolumeclaims", False),
        ("create", "pods", True),
        ("delete", "pods", True),
        ("create", "podgroups.scheduling.k8s.io", True),
        ("create", "networkpolicies.networking.k8s.io", True),  # one per TrainingJob
        ("patch", "networkpolicies.networking.k8s.io", True),
        ("delete", "networkpolicies.networking.k8s.io", True),
        ("update", "networkpolicies.networking.k8s.io", False),
        ("list", "networkpolicies.networking.k8s.io", False),  # created and read back by name, never listed
        ("delete", "services", True),  # an InferenceService's role Services go with its canary
        ("patch", "services", True),  # at zero, Service NAME's selector removed by a merge patch
        ("create", "endpointslices.discovery.k8s.io", True),  # NAME-activator, while a service is at zero
        ("delete", "endpointslices.discovery.k8s.io", True),  # handed back to the Service's selector
        ("watch", "endpointslices.discovery.k8s.io", False),  # its own slice is read by name, never watched
        ("update", "endpointslices.discovery.k8s.io", False),
        ("get", "secrets", False),
        ("list", "configmaps", False),
        ("create", "deployments.apps", True),  # one per InferenceService role
        ("update", "deployments.apps", False),
        ("create", "jobs.batch", True),  # a Dataset's preparation Job
        ("delete", "jobs.batch", True),  # the Job of a Dataset's earlier spec
        ("update", "jobs.batch", False),
        ("create", "horizontalpodautoscalers.autoscaling", True),
        ("delete", "poddisruptionbudgets.policy", True),
        # HTTPRoutes (get/create/patch/delete, never list) are pinned by the chart's goldens: can-i answers
        # "no" for a kind the cluster does not serve yet.
        ("patch", "nodes", False),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
        ("impersonate", "serviceaccounts", False),
    ],
)
def test_service_account_has_least_privilege(
    kube: Kube, release: dict[str, str], verb: str, resource: str, allowed: bool
) -> None:
    sa = f"system:serviceaccount:{release['namespace']}:{release['sa']}"
    proc = kube.run(
        "auth", "can-i", verb, resource, "--as", sa, "-A" if verb != "impersonate" else "-n=default", check=False
    )
    assert proc.stdout.strip() == ("yes" if allowed else "no"), f"{sa} {verb} {resource}: {proc.stdout}"


@pytest.mark.parametrize(
    ("verb", "resource", "subresource", "allowed"),
    [
        ("get", "inferenceservices.lepton.ai", "", True),  # the service a request names (NAME.NAMESPACE)
        ("list", "inferenceservices.lepton.ai", "", True),  # a bare NAME: listed by metadata.name
        ("watch", "inferenceservices.lepton.ai", "", False),
        ("patch", "inferenceservices.lepton.ai", "", False),
        ("patch", "inferenceservices.lepton.ai", "status", False),
        ("list", "pods", "", True),  # its primary's pods, by label, to probe each one's readiness
        ("get", "pods", "", False),
        ("watch", "pods", "", False),
        ("delete", "pods", "", False),
        ("create", "pods", "exec", False),
        ("get", "deployments.apps", "scale", True),
        ("patch", "deployments.apps", "scale", True),  # from 0 to 1
        ("update", "deployments.apps", "scale", False),
        ("get", "deployments.apps", "", False),
        ("patch", "deployments.apps", "", False),  # the replica count only, never the pod template
        ("list", "endpointslices.discovery.k8s.io", "", False),
        ("patch", "services", "", False),
        ("get", "secrets", "", False),
        ("list", "trainingjobs.lepton.ai", "", False),
        ("create", "events", "", False),
        ("impersonate", "serviceaccounts", "", False),
    ],
)
def test_activator_service_account_has_least_privilege(
    kube: Kube, release: dict[str, str], verb: str, resource: str, subresource: str, allowed: bool
) -> None:
    sa = f"system:serviceaccount:{release['namespace']}:{release['activator']}"
    args = ["auth", "can-i", verb, resource, "--as", sa, "-A" if verb != "impersonate" else "-n=default"]
    proc = kube.run(*args, *([f"--subresource={subresource}"] if subresource else []), check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), f"{sa} {verb} {resource} {subresource}: {proc.stdout}"


def test_activator_does_its_job_as_its_service_account(
    dev_cluster: DevCluster, kube: Kube, release: dict[str, str], tmp_path: Path
) -> None:
    """`leptonctl activator` with the chart's activator credentials: for a request naming a service at
    zero (as NAME.NAMESPACE, then as a bare NAME) it reads the InferenceService, scales its primary from
    0 to 1 through the scale subresource and lists its pods. No replica ever runs here (its pods fit no
    node), so each request gets 503 past its 1 s deadline: the answer for "no replica yet", not the one
    for "cannot ask the apiserver"."""
    kubeconfig = _sa_kubeconfig(dev_cluster, kube, {**release, "sa": release["activator"]}, tmp_path / "sa.kubeconfig")
    ns = _restricted_namespace(kube, "lepton-activator-rbac")
    name = f"wake-{uuid.uuid4().hex[:6]}"  # unique cluster-wide: a bare NAME is looked up in every namespace
    labels = {Label.KIND: "InferenceService", Label.NAME: name, Label.ROLE: "primary"}
    container = {
        "name": "server", "image": "lepton/server:0.1.0",
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65532,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }  # fmt: skip
    nowhere = {"nodeSelector": {"lepton.ai/no-such-node": "true"}, "containers": [container]}
    objects = [
        {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
         "spec": {"model": {"uri": "examples/models/tiny-gpt2"},
                  "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "activationTimeoutSeconds": 1}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{name}-primary"},
         "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": nowhere}}},
    ]  # fmt: skip
    port = free_port()
    log = tmp_path / "activator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    argv = [sys.executable, "-m", "lepton.cli.main", "activator", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        for obj in objects:
            kube.run("create", "-n", ns, "-f", "-", stdin=json.dumps(obj))
        eventually(lambda: _status(f"http://127.0.0.1:{port}/healthz", name)[0] == 200, timeout=30, what="listening")
        for host in (f"{name}.{ns}", name):
            code, body = _status(f"http://127.0.0.1:{port}/v1/completions", host)
            assert code == 503 and "has loaded its model" in body, (host, code, body, log.read_text()[-2000:])
            scaled = lambda: kube.get("deployment", f"{name}-primary", ns)["spec"]["replicas"] == 1  # noqa: E731
            eventually(scaled, timeout=10, what=f"{host}: the primary scaled from 0 to 1")
            kube.run("scale", "deployment", f"{name}-primary", "-n", ns, "--replicas=0")
            time.sleep(1)  # the activation loop ends a poll after its last held request: the next one starts anew
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
    text = log.read_text()
    assert "activation failed" not in text and "Forbidden" not in text and " 403" not in text, text[-3000:]


def _status(url: str, host: str) -> tuple[int, str]:
    """(status, body) of a POST (a GET for /healthz) with the Host a client of the Service sends."""
    post = not url.endswith("/healthz")
    request = urllib.request.Request(url, data=b"{}" if post else None, method="POST" if post else "GET",
                                     headers={"Host": host, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.parametrize(
    ("verb", "lease", "where", "allowed"),
    [
        ("get", "leases/{release}", "own", True),
        ("update", "leases/{release}", "own", True),
        ("create", "leases", "own", True),  # RBAC cannot limit create to a name
        ("update", "leases/kube-scheduler", "own", False),  # nobody else's Lease
        ("delete", "leases/{release}", "own", False),
        ("list", "leases", "own", False),
        ("get", "leases/{release}", "default", False),  # its own namespace only
        ("update", "leases/kube-controller-manager", "kube-system", False),
    ],
)
def test_leader_election_rights_reach_only_its_own_lease(
    kube: Kube, release: dict[str, str], verb: str, lease: str, where: str, allowed: bool
) -> None:
    sa = f"system:serviceaccount:{release['namespace']}:{release['sa']}"
    ns = release["namespace"] if where == "own" else where
    resource = lease.format(release=release["release"]).replace("leases", "leases.coordination.k8s.io", 1)
    proc = kube.run("auth", "can-i", verb, resource, "--as", sa, "-n", ns, check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), f"{sa} {verb} {resource} in {ns}: {proc.stdout}"


@pytest.mark.parametrize("subresource", ["exec", "attach", "portforward", "eviction"])
def test_service_account_cannot_get_into_pods(kube: Kube, release: dict[str, str], subresource: str) -> None:
    sa = f"system:serviceaccount:{release['namespace']}:{release['sa']}"
    proc = kube.run("auth", "can-i", "create", "pods", f"--subresource={subresource}", "--as", sa, "-A", check=False)
    assert proc.stdout.strip() == "no"


def test_namespaced_mode_confines_the_operator(dev_cluster: DevCluster, kube: Kube, tmp_path: Path) -> None:
    ns = _restricted_namespace(kube, "lepton-ns-system")
    team_a, team_b = _restricted_namespace(kube, "team-a"), _restricted_namespace(kube, "team-b")
    name = f"lepton-{uuid.uuid4().hex[:4]}"
    try:
        helm(
            dev_cluster,
            "install",
            name,
            str(CHART),
            "-n",
            ns,
            "--set",
            "rbac.scope=namespaced",
            "--set",
            f"watchNamespaces={{{team_a}}}",
            "--wait",
            "--timeout",
            "120s",
        )
        sa = f"system:serviceaccount:{ns}:{name}"
        can = lambda *a: kube.run("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
        assert can("patch", "trainingjobs.lepton.ai", "-n", team_a) == "yes"
        assert can("patch", "trainingjobs.lepton.ai", "-n", team_b) == "no"
        assert can("list", "trainingjobs.lepton.ai", "-A") == "no"
        assert can("list", "namespaces") == "no" and can("list", "customresourcedefinitions") == "no"
        env = kube.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "LEPTON_WATCH_NAMESPACES", "value": team_a} in env
        release = {"namespace": ns, "release": name, "sa": name}
        kubeconfig = _sa_kubeconfig(dev_cluster, kube, release, tmp_path / "sa.kubeconfig")
        assert_operator_does_its_job_as(kubeconfig, team_a, team_a, kube, tmp_path, ns, name, f"{name}-activator")
    finally:
        helm(dev_cluster, "uninstall", name, "-n", ns, "--wait", check=False)
        for n in (ns, team_a, team_b):
            kube.run("delete", "namespace", n, "--wait=false", check=False)
