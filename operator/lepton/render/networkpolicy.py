"""A TrainingJob's NetworkPolicy (pure): who may reach the gang's pods.

- The gang's own pods reach each other on every port: torchrun's rendezvous (RENDEZVOUS_PORT) and
  the ephemeral ports NCCL and gloo open between ranks, which no policy can list in advance.
- The operator's namespace (it reads rank 0's /progress) and, when configured, Prometheus's
  namespace (it scrapes /metrics) reach the metrics ports: METRICS_PORT for local rank 0, one more
  per further process on the node.
- Nothing else reaches them. Ingress only: egress to model hubs, object stores and DNS is untouched.
  Kubelet probes are not subject to NetworkPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lepton.api import TrainingJob
from lepton.api.contract import METRICS_PORT
from lepton.render.common import child_labels, owner_reference, selector
from lepton.render.trainingjob import procs_per_node

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the apiserver on every namespace


@dataclass(frozen=True)
class NetworkSettings:
    """Where the readers of a job's metrics port live."""

    operator_namespace: str
    prometheus_namespace: str | None = None


def namespace_peer(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def render_network_policy(job: TrainingJob, settings: NetworkSettings) -> dict[str, Any]:
    readers = dict.fromkeys(n for n in (settings.operator_namespace, settings.prometheus_namespace) if n)
    metrics_port: dict[str, Any] = {"protocol": "TCP", "port": METRICS_PORT}
    if (procs := procs_per_node(job.spec)) > 1:  # each local rank serves on METRICS_PORT + LOCAL_RANK
        metrics_port["endPort"] = METRICS_PORT + procs - 1
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": job.metadata.name,
            "namespace": job.metadata.namespace,
            "labels": child_labels(job, "trainer"),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "podSelector": {"matchLabels": selector(job)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": selector(job)}}]},  # the gang: all ports
                {"from": [namespace_peer(n) for n in readers], "ports": [metrics_port]},
            ],
        },
    }
