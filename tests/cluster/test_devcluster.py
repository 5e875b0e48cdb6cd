"""The simulated GPU nodes and pod lifecycles the later tiers rely on: GPU pods land on GPU nodes, a
pod asking for too many GPUs stays Pending with the scheduler's words, the fake-outcome stage ends
pods as asked, and native gang scheduling's API is served."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.kube import Kube, eventually

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, gpus: int = 0, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "fake.invalid/trainer:1",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    spec: dict[str, Any] = {"containers": [container], "securityContext": RESTRICTED, "restartPolicy": "Never"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def phase(kube: Kube, namespace: str, name: str) -> str:
    return str(kube.get("pod", name, namespace).get("status", {}).get("phase", ""))


def test_gpu_pod_runs_on_a_gpu_node(kube: Kube, namespace: str) -> None:
    kube.apply(pod("gpu", gpus=8), namespace)
    eventually(lambda: phase(kube, namespace, "gpu") == "Running", what="GPU pod Running")
    node = kube.get("node", kube.get("pod", "gpu", namespace)["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_too_many_gpus_stay_pending_with_the_schedulers_reason(kube: Kube, namespace: str) -> None:
    kube.apply(pod("greedy", gpus=9), namespace)

    def unschedulable() -> str | None:
        for cond in kube.get("pod", "greedy", namespace).get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond["message"])
        return None

    message = eventually(unschedulable, what="Unschedulable condition")
    assert "Insufficient nvidia.com/gpu" in message


@pytest.mark.parametrize(
    ("annotations", "phase_", "exit_code", "reason"),
    [
        ({"lepton.ai/fake-outcome": "Succeeded", "lepton.ai/fake-after": "1s"}, "Succeeded", 0, "Completed"),
        ({"lepton.ai/fake-outcome": "Failed", "lepton.ai/fake-after": "1s"}, "Failed", 1, "Error"),
        (
            {
                "lepton.ai/fake-outcome": "Failed",
                "lepton.ai/fake-after": "1s",
                "lepton.ai/fake-exit-code": "137",
                "lepton.ai/fake-reason": "OOMKilled",
            },
            "Failed",
            137,
            "OOMKilled",
        ),
    ],
    ids=["succeeded", "failed", "oom-killed"],
)
def test_fake_outcome_stage_ends_pods_as_asked(
    kube: Kube, namespace: str, annotations: dict[str, str], phase_: str, exit_code: int, reason: str
) -> None:
    kube.apply(pod("job", gpus=1, annotations=annotations), namespace)
    eventually(lambda: phase(kube, namespace, "job") == phase_, timeout=45, what=f"pod {phase_}")
    (status,) = kube.get("pod", "job", namespace)["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == exit_code
    assert status["state"]["terminated"]["reason"] == reason


def test_pod_without_outcome_keeps_running(kube: Kube, namespace: str) -> None:
    kube.apply(pod("steady", gpus=1), namespace)
    eventually(lambda: phase(kube, namespace, "steady") == "Running", what="Running")


def test_restricted_namespace_rejects_a_privileged_pod(kube: Kube, namespace: str) -> None:
    bad = pod("root")
    bad["spec"]["securityContext"] = {}
    proc = kube.run("create", "-n", namespace, "-f", "-", stdin=json.dumps(bad), check=False)
    assert proc.returncode != 0 and 'violates PodSecurity "restricted:latest"' in proc.stderr


def test_native_gang_scheduling_api_is_served(kube: Kube) -> None:
    resources = kube.run("api-resources", "--api-group=scheduling.k8s.io", "-o", "name").stdout.split()
    assert "workloads.scheduling.k8s.io" in resources and "podgroups.scheduling.k8s.io" in resources
