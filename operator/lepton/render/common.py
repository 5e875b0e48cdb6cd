"""What every rendered child shares: labels, owner references, the restricted security context."""

from __future__ import annotations

from typing import Any

from lepton.api.kinds import API_VERSION, TrainingJob

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
MANAGER = "lepton-operator"

# Pod Security Standards "restricted", for every pod the operator creates.
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def child_labels(owner: TrainingJob, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"lepton-{component}",
        "app.kubernetes.io/instance": owner.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGER,
        "lepton.ai/kind": owner.kind,
        "lepton.ai/name": owner.metadata.name,
    }


def owner_reference(owner: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }
