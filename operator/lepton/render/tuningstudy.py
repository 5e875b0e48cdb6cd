"""A TuningStudy's own children (pure): the tuner pod, the PVC holding its journal (unless the spec
names a storage), and the tuner's NetworkPolicy. Its trials are rendered by `render/trials.py`.

The tuner is a bare pod with a fixed name, NAME-tuner: the apiserver lets at most one pod hold a name,
so at most one process ever asks and tells (a Deployment would run two during a rollout). A crash
restarts the container in place (restartPolicy Always); a lost pod is created again by the operator;
either way the study continues from its storage. The pod has no API access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lepton.api import TuningStudy
from lepton.api.common import Resources
from lepton.api.tokens import PROGRESS_TOKEN_ENV
from lepton.api.tuner import STORAGE_URL_ENV, TUNER_CONFIG_ENV, TUNER_PORT, TunerConfig, WarmTrial
from lepton.render.common import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    child_metadata,
    placement,
    resources,
    secret_env,
    selector,
)
from lepton.render.networkpolicy import NetworkSettings, namespace_peer

COMPONENT = "tuner"
JOURNAL_MOUNT = "/var/lib/lepton/study"
DEFAULT_STORAGE_SIZE = "1Gi"
# Sampling is light (TPE, random, QMC) to moderate (GP, CMA-ES at thousands of trials): one core at most.
TUNER_RESOURCES = Resources(requests={"cpu": "250m", "memory": "512Mi"}, limits={"cpu": "1", "memory": "2Gi"})


@dataclass(frozen=True)
class TunerSettings:
    tuner_image: str = "lepton/tuner:0.1.0"


def tuner_pod_name(study: TuningStudy) -> str:
    return f"{study.metadata.name}-{COMPONENT}"


def storage_claim(study: TuningStudy) -> tuple[str, str]:
    """(claim, path inside it) of the journal: the spec's PVC, or the one the operator makes."""
    storage = study.spec.storage
    if storage is not None and storage.pvc is not None:
        return storage.pvc.claim_name, storage.pvc.path
    return tuner_pod_name(study), ""


def tuner_config(study: TuningStudy, warm_start: list[WarmTrial] | None = None) -> TunerConfig:
    spec = study.spec
    rdb = spec.storage is not None and spec.storage.url_secret_ref is not None
    _, path = storage_claim(study)
    return TunerConfig(
        study=f"{study.metadata.namespace or 'default'}/{study.metadata.name}",
        uid=study.metadata.uid or "",
        storage="rdb" if rdb else "journal",
        journal_dir=None if rdb else f"{JOURNAL_MOUNT}/{path}".rstrip("/"),
        objectives=spec.objective_list(),
        search_space=spec.search_space,
        sampler=spec.sampler,
        pruner=spec.pruner,
        enqueue=spec.enqueue,
        warm_start=warm_start or [],
    )


def render_claim(study: TuningStudy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_metadata(study, tuner_pod_name(study), COMPONENT),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": DEFAULT_STORAGE_SIZE}}},
    }


def render_tuner(study: TuningStudy, settings: TunerSettings, token: str,
                 warm_start: list[WarmTrial] | None = None) -> dict[str, Any]:  # fmt: skip
    spec = study.spec
    config = tuner_config(study, warm_start)
    env: list[dict[str, Any]] = [
        {"name": TUNER_CONFIG_ENV, "value": json.dumps(config.to_wire(), sort_keys=True)},
        {"name": PROGRESS_TOKEN_ENV, "value": token},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.storage is not None and spec.storage.url_secret_ref is not None:
        ref = spec.storage.url_secret_ref
        env.append(secret_env(STORAGE_URL_ENV, ref.name, ref.key))
    else:
        claim, _ = storage_claim(study)
        volumes.append({"name": "study", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "study", "mountPath": JOURNAL_MOUNT})
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": settings.tuner_image,
        "command": ["python", "-m", "lepton.workloads.tuner"],
        "env": env,
        "ports": [{"name": "http", "containerPort": TUNER_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "resources": resources(TUNER_RESOURCES),
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": child_metadata(study, tuner_pod_name(study), COMPONENT),
        "spec": {
            "restartPolicy": "Always",
            "automountServiceAccountToken": False,  # the operator alone writes to the API
            "enableServiceLinks": False,
            "securityContext": RESTRICTED_POD,
            "containers": [container],
            "volumes": volumes,
            **placement(spec.scheduling, 0),
        },
    }


def render_network_policy(study: TuningStudy, settings: NetworkSettings) -> dict[str, Any]:
    """The tuner's port is reachable from the operator's (and Prometheus's) namespace only."""
    readers = dict.fromkeys(n for n in (settings.operator_namespace, settings.prometheus_namespace) if n)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(study, tuner_pod_name(study), COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector(study)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [namespace_peer(n) for n in readers], "ports": [{"protocol": "TCP", "port": TUNER_PORT}]}
            ],
        },
    }


__all__ = ["COMPONENT", "TunerSettings", "render_claim", "render_network_policy", "render_tuner", "tuner_config",
           "tuner_pod_name"]  # fmt: skip
