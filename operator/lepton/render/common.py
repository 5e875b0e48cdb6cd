"""The render toolkit every kind's renderer builds on (pure): labels and owner references typed on any
resource, the restricted pod security block, env merging, resources, and PVC mounts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lepton.api.common import EnvVar, Resources, Scheduling
from lepton.api.constants import MANAGER, Label
from lepton.api.kinds import API_VERSION, Resource

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
MOUNT_ROOT = "/mnt/pvc"

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


def selector(owner: Resource) -> dict[str, str]:
    """The labels that select every child of one resource (Services, NetworkPolicies, the operator's index)."""
    return {Label.KIND: owner.kind, Label.NAME: owner.metadata.name}


def child_labels(owner: Resource, component: str) -> dict[str, str]:
    return {
        Label.APP_NAME: f"lepton-{component}",
        Label.APP_INSTANCE: owner.metadata.name,
        Label.APP_COMPONENT: component,
        Label.APP_MANAGED_BY: MANAGER,
        **selector(owner),
    }


def owner_reference(owner: Resource) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(owner: Resource, name: str, component: str, **labels: str) -> dict[str, Any]:
    """metadata of a child: in the owner's namespace, labelled, and controlled by the owner (its UID)."""
    return {
        "name": name,
        "namespace": owner.metadata.namespace,
        "labels": child_labels(owner, component) | labels,
        "ownerReferences": [owner_reference(owner)],
    }


def merge_env(defaults: Mapping[str, str], *layers: Iterable[dict[str, Any]], user: Iterable[EnvVar] = ()) -> list[
    dict[str, Any]
]:  # fmt: skip
    """Container env: defaults, then each layer of ready-made entries, then the user's (the user wins).
    Secrets only ever arrive as valueFrom.secretKeyRef entries."""
    merged: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in defaults.items()}
    for layer in layers:
        merged |= {e["name"]: e for e in layer}
    merged |= {var.name: var.to_wire() for var in user}
    return list(merged.values())


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def resources(spec: Resources, gpus: int = 0) -> dict[str, Any]:
    """corev1.ResourceRequirements from the spec, with the GPU count as request and limit."""
    requests: dict[str, Any] = dict(spec.requests)
    limits: dict[str, Any] = dict(spec.limits)
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def placement(scheduling: Scheduling, gpus: int) -> dict[str, Any]:
    """Pod-spec fields that place the pods: tolerations (the GPU taint's first when GPUs are asked
    for), node selector and priority class; only those the spec sets."""
    out: dict[str, Any] = {}
    tolerations = [t.to_wire() for t in scheduling.tolerations]
    if gpus:
        tolerations.insert(0, GPU_TOLERATION)
    if tolerations:
        out["tolerations"] = tolerations
    if scheduling.node_selector:
        out["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.priority_class_name:
        out["priorityClassName"] = scheduling.priority_class_name
    return out


def model_location(uri: str, mounts: Mounts) -> str:
    """The path a pod reads a resolved model location from: pvc://claim/sub is mounted read-only,
    file:// is a local path."""
    if uri.startswith("pvc://"):
        claim, _, sub = uri.removeprefix("pvc://").partition("/")
        return mounts.path(claim, sub, read_only=True)
    return uri.removeprefix("file://")


class Mounts:
    """PersistentVolumeClaims used by a pod, each mounted once under /mnt/pvc/<claim>."""

    def __init__(self) -> None:
        self.claims: dict[str, bool] = {}  # claim -> read-only

    def path(self, claim: str, sub: str, read_only: bool) -> str:
        self.claims[claim] = self.claims.get(claim, True) and read_only
        return f"{MOUNT_ROOT}/{claim}/{sub}".rstrip("/")

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": ro}}
            for i, (c, ro) in enumerate(sorted(self.claims.items()))
        ]

    def volume_mounts(self) -> list[dict[str, Any]]:
        return [
            {"name": f"pvc-{i}", "mountPath": f"{MOUNT_ROOT}/{c}", "readOnly": ro}
            for i, (c, ro) in enumerate(sorted(self.claims.items()))
        ]
